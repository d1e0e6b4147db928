"""The pipeline of ``mtbench run``: check -> extract -> align -> fit -> write.

Each step is a call into a plugin or a core module; this file orders them and checks what
flows between them. What is fitted, and what is written, is the run's analysis
(``settings.mode``: an :class:`mtbench.api.AnalysisEntry` of the registry).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .checkpoint import FitCheckpoint, fingerprint
from .encoding import check_device, effective_precision, on_gpu
from .errors import MtbenchError
from .features import ScanFeatures, word_features
from .paths import writable_folder
from .registry import get_registry, load_dataset, load_model, model_slug, slug
from .settings import RunSettings, resolve_protocol


@dataclass
class RunOutput:
    """What a finished run hands back (to the CLI, a sweep, a script).

    Attributes
    ----------
    run_dir : Path
    summary : list of dict
        The analysis's summary rows (:attr:`mtbench.api.AnalysisResult.summary`).
    truth_check : list of dict
        Planted truth against what was found (simulated datasets; else empty).
    seconds : float
    mode : str
        The analysis that made it (``settings.mode``): it prints the summary.
    """

    run_dir: Path
    summary: list[dict]
    truth_check: list[dict]
    seconds: float
    mode: str = ""


# --------------------------------------------------------------------------- parsing
def parse_states(spec: str | list[str], available: list[str]) -> list[str]:
    """``"all"`` or a comma list -> state names in canonical order.

    Parameters
    ----------
    spec : str or list of str
    available : list of str
        States the model can produce.
    """
    registry = get_registry()
    names = spec if isinstance(spec, list) else [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return [s for s in registry.names("state") if s in available]
    for name in names:
        registry.state(name)  # unknown name -> error with the closest ones
        if name not in available:
            raise MtbenchError(f"state {name!r} does not exist in this model (not applicable to its family); "
                               f"available: {', '.join(available)}")
    order = registry.names("state")
    return sorted(dict.fromkeys(names), key=order.index)


def parse_layers(spec: str | list[int], n_layers: int) -> list[int]:
    """``"all"``, ``"4"``, ``"1-5,8"`` (or a list of ints) -> sorted 1-based block numbers."""
    if not isinstance(spec, str):
        spec = ",".join(map(str, spec))
    if spec.strip() == "all":
        return list(range(1, n_layers + 1))
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise MtbenchError(f"cannot read layers {spec!r}: use 'all', '4' or '1-5,8' (1-based block numbers)")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise MtbenchError(f"layer range {part.strip()!r} runs backwards: write {hi}-{lo}")
        layers.update(range(lo, hi + 1))
    bad = [layer for layer in layers if not 1 <= layer <= n_layers]
    if bad:
        raise MtbenchError(f"layer {bad[0]} is out of range: this model has blocks 1..{n_layers}")
    return sorted(layers)


def _check_bold(bold: list[np.ndarray], stimulus, n_voxels: int, dataset: str) -> list[np.ndarray]:
    if len(bold) != len(stimulus.runs):
        raise MtbenchError(f"dataset {dataset}: {len(bold)} BOLD runs but {len(stimulus.runs)} stimulus runs")
    for r, (y, run) in enumerate(zip(bold, stimulus.runs), start=1):
        if y.shape != (run.n_scans, n_voxels):
            raise MtbenchError(f"dataset {dataset}: run {r} BOLD has shape {y.shape}, expected "
                               f"({run.n_scans}, {n_voxels}) scans x mask voxels; re-prepare the dataset")
        if not np.isfinite(y).all():
            raise MtbenchError(f"dataset {dataset}: run {r} BOLD contains NaN/inf; re-prepare the dataset "
                               f"or mask out those voxels")
    return bold


def run_id_for(settings: RunSettings) -> str:
    """Unique, sortable, readable id: time, model, dataset, subject, settings hash."""
    digest = hashlib.sha256(json.dumps(settings.record(), sort_keys=True, default=str).encode()).hexdigest()[:6]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{model_slug(settings.model)}-{slug(settings.dataset)}-{slug(settings.subject)}-{digest}"



# --------------------------------------------------------------------------- run
class _Clock:
    """Seconds spent per stage (recorded in the manifest)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 2)
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start



def resolve(settings: RunSettings) -> RunSettings:
    """The effective settings of a run: its protocol applied, its analysis named (the default one when None)."""
    return get_registry().mode_of(resolve_protocol(settings))


def run(settings: RunSettings, results_dir: Path, progress=None, run_id: str | None = None,
        adapter=None, folds: bool = True, sweep_cell: bool = False) -> RunOutput:
    """Run the whole pipeline and write the results.

    Parameters
    ----------
    settings : RunSettings
    results_dir : Path
        Shared results folder; this run goes to ``results_dir/runs/<run_id>/``.
    progress : rich.progress.Progress, optional
        Receives an extraction task and the analysis's fitting tasks.
    run_id : str, optional
        Folder name under ``runs/`` (``mtbench sweep`` names each cell); default :func:`run_id_for`.
    adapter : ModelAdapter, optional
        Already loaded ``settings.model`` (a sweep worker reuses it across cells).
    folds : bool
        Write the analysis's per-fold table where it is an output choice
        (:attr:`mtbench.api.Analysis.folds_optional`): it changes no number, so it is not part of
        the run id or the checkpoint.
    sweep_cell : bool
        The run is one cell of ``mtbench sweep`` (recorded in the manifest): the leaderboard
        shows it through the run that combines its sweep's cells.

    The run, its id and its manifest use the effective settings (:func:`resolve`).
    """
    clock = _Clock()
    settings = resolve(settings)
    analysis, metric = check_settings(settings)
    made = not Path(results_dir).exists()
    writable_folder(Path(results_dir))  # before hours of fitting, not after
    opened: list = []  # the checkpoints the analysis opened: removed once the run is written
    try:
        return _run(settings, analysis, metric, Path(results_dir), progress, run_id, adapter, folds, clock, sweep_cell,
                    opened)
    except BaseException as exc:
        if made:  # a run that failed early (a layer out of range, no data) leaves no empty --out behind
            with contextlib.suppress(OSError):  # not empty (kept fits, another run's files): kept
                Path(results_dir).rmdir()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunStopped):
            raise RunStopped(_stage(clock), opened) from exc
        raise


#: The stages of a run, in order (each one's seconds go to the manifest's ``timings``), then the writing.
STAGES = ("load_model", "load_dataset", "extract", "align_and_bold", "fit", "write")


def _stage(clock: _Clock) -> str:
    """The stage a run was in: the first of :data:`STAGES` the clock has not finished."""
    return next(stage for stage in STAGES if stage not in clock.stages)


class RunStopped(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or SIGTERM, made the same by ``mtbench run``): the ``stage`` it was in
    (:data:`STAGES`), the ``checkpoints`` folders of its kept fits and their number, ``kept_fits``."""

    def __init__(self, stage: str, opened: list) -> None:
        super().__init__(stage)
        self.stage, self.checkpoints = stage, [kept.folder for kept in opened]
        self.kept_fits = sum(len(list(folder.glob("*.npz"))) for folder in self.checkpoints if folder.is_dir())

    def describe(self) -> str:
        """What was happening, what is kept and how to resume, in one line (after "interrupted ")."""
        untouched = "nothing of this run was written (earlier results are untouched)"
        if self.stage in ("load_model", "load_dataset"):
            return f"while loading the {self.stage[5:]}; {untouched}; rerun the same command"
        if self.stage == "extract":
            return (f"during the feature extraction; {untouched}; rerun the same command to resume the extraction "
                    "(what reached the feature cache is reused)")
        where = {"align_and_bold": "after the feature extraction", "fit": "while fitting"}.get(self.stage,
                                                                                              "while writing the results")
        if not self.kept_fits:
            return f"{where}, no fit kept; the features are cached; {untouched}; rerun the same command"
        folders = ", ".join(map(str, self.checkpoints))
        return (f"{where}; {self.kept_fits} finished fit{'s' * (self.kept_fits != 1)} kept in {folders} and the "
                f"features cached; rerun the same command to resume: it fits only the rest")


def check_settings(settings: RunSettings):
    """Resolve every name and check every value before any heavy work, so a typo fails in a second.

    ``settings`` are effective (:func:`resolve`). Returns the loaded analysis and the metric entry.
    """
    settings.check()
    entry, metric = get_registry().check_run(settings)
    analysis = entry.load()
    analysis.check(settings)
    check_device(settings.backend)  # a _cuda backend without a GPU: now, not after the extraction
    return analysis, metric


def _run(settings: RunSettings, analysis, metric, results_dir: Path, progress, run_id: str | None, adapter,
         folds: bool, clock: _Clock, sweep_cell: bool, opened: list) -> RunOutput:
    """:func:`run` once the settings are checked and the results folder is writable (``opened``: its checkpoints)."""
    from .results import provenance, write_run

    with progress if progress is not None else nullcontext():
        inputs = prepare_inputs(settings, analysis, adapter, progress, clock)
        adapter, dataset, states, layers = inputs.adapter, inputs.dataset, inputs.states, inputs.layers
        n_voxels = inputs.y_runs[0].shape[1]
        widened = getattr(inputs.scans, "widened", {})  # states cached wider than --feature-dtype (overflow)
        checkpoint = functools.partial(_open_checkpoint, results_dir, settings, inputs, opened)
        result = analysis.fit(inputs, settings, metric, progress=progress, checkpoint=checkpoint, folds=folds)
        del inputs, checkpoint
        clock.lap("fit")

    meta = provenance(
        settings=settings.record() | {"states": states, "layers": layers},
        model={"name": adapter.name, "spec": settings.model, "family": adapter.family,
               "revision": adapter.revision, "n_layers": adapter.n_layers, "extraction": adapter.settings(),
               # e.g. the share of words a static embedding has no vector for (when it extracted)
               "coverage": getattr(adapter, "coverage", None),
               "n_params": getattr(adapter, "n_params", None)},  # model size (leaderboard)
        dataset={"name": dataset.name, "version": dataset.version, "n_voxels": n_voxels,
                 "n_runs": len(dataset.stimulus.runs), "stimulus": dataset.stimulus.fingerprint(),
                 "atlas": dataset.parcels.atlas},
    )

    meta["settings"]["precision_used"] = ("float32" if settings.backend.startswith("himalaya") else
                                          effective_precision(settings.precision, "cuda" if on_gpu(settings.backend)
                                                              else "cpu"))
    meta |= result.manifest
    if widened:  # only then: the manifests of runs whose states all fit stay as they were
        meta["feature_cache"] = {"dtype": settings.feature_dtype, "widened": widened}
    meta["run_id"] = run_id or run_id_for(settings)
    meta["seconds"] = round(clock.total, 1)
    meta["timings"] = clock.stages  # seconds per stage, writing excluded
    if sweep_cell:
        meta["sweep_cell"] = True
    try:
        run_dir = write_run(Path(results_dir), meta["run_id"], meta, result, dataset.mask_img, dataset.truth,
                            unique=run_id is None)  # a generated id taken: <id>-2
    except OSError as exc:  # a full disk, a quota: write_run has removed its half-written folder
        if isinstance(exc, FileExistsError):  # a given id that is taken: its own message says so
            raise
        again = ("run the same command again: it reuses the finished fits kept in checkpoints/" if opened
                 else "run the same command again")
        raise MtbenchError(f"could not write the results under {Path(results_dir) / 'runs'} "
                           f"({exc.strerror or exc}); free space there (or give --out another folder), then "
                           f"{again}") from None
    for kept in opened:
        kept.remove()  # the results are written: the fits are no longer needed (unless another run uses them)
    return RunOutput(run_dir=run_dir, summary=result.summary, truth_check=result.truth_check(dataset.truth),
                     seconds=clock.total, mode=str(settings.mode))


@dataclass
class RunInputs:
    """What the fits of a run read: the loaded model and dataset, TR-level features, BOLD.

    Attributes
    ----------
    adapter : ModelAdapter
    dataset : Dataset
    states : list of str
        In the order the analysis records them (:meth:`mtbench.api.Analysis.states`).
    layers : list of int
        1-based blocks.
    scans : mtbench.features.ScanFeatures
        ``scans[(layer, state)]``: list of arrays, each shape (n_scans_r, n_features),
        HRF-aligned, trimmed and z-scored per run (aligned on first use, cached on disk);
        ``scans.pop(key)`` frees them as a fit goes.
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
        BOLD of ``settings.subject``, trimmed and z-scored per run. A fit that makes its own
        copy (e.g. with null columns) may set it to None, so one copy stays in memory.
    ceiling : ndarray, shape (n_voxels,), or None
        The dataset's noise ceiling of the subject (None without one).
    """

    adapter: object
    dataset: object
    states: list[str]
    layers: list[int]
    scans: object
    y_runs: list[np.ndarray] | None
    ceiling: np.ndarray | None = None


def prepare_inputs(settings: RunSettings, analysis, adapter=None, progress=None, clock: _Clock | None = None) -> RunInputs:
    """Load the model and dataset, extract (or read cached) word features, align them, read the BOLD.

    ``settings`` are effective (:func:`resolve`); ``analysis`` says which states it extracts.
    Used by :func:`run` and by the analyses' rescoring (which only refits).
    """
    from .alignment import alignment_fingerprint, stimulus_operators, zscore

    clock = clock if clock is not None else _Clock()
    adapter = adapter if adapter is not None else load_model(settings.model, **settings.model_options)
    states = analysis.states(settings, adapter.available_states())
    layers = parse_layers(settings.layers, adapter.n_layers)
    clock.lap("load_model")
    dataset = load_dataset(settings.dataset, **settings.dataset_options)
    n_voxels = _check_dataset(dataset, settings.subject)
    clock.lap("load_dataset")
    on_window, finish = _extract_bar(progress, adapter.name)
    feats = word_features(adapter, dataset.stimulus, states, layers, progress=on_window, dtype=settings.feature_dtype)
    finish()
    clock.lap("extract")
    operators = stimulus_operators(dataset.stimulus, settings.hrf, settings.delays)
    # TR-level features, aligned once per (layer, state) and alignment, cached next to the words
    scans = ScanFeatures(feats, lambda words: scan_features(words, operators, settings),
                         alignment_fingerprint(operators, settings.trim_scans),
                         [op.shape[-2] - 2 * max(settings.trim_scans, 0) for op in operators])
    bold = _check_bold(dataset.load_bold(settings.subject), dataset.stimulus, n_voxels, dataset.name)
    y_runs = [zscore(trim_run(y, settings.trim_scans)) for y in bold]
    clock.lap("align_and_bold")
    return RunInputs(adapter=adapter, dataset=dataset, states=states, layers=layers, scans=scans, y_runs=y_runs,
                     ceiling=dataset.noise_ceiling(settings.subject))


def _check_dataset(dataset, subject: str) -> int:
    """The number of mask voxels, after checking the dataset is consistent."""
    if subject not in dataset.subjects:
        more = "..." if len(dataset.subjects) > 5 else ""
        raise MtbenchError(f"subject {subject!r} is not in dataset {dataset.name} "
                           f"(it has {', '.join(dataset.subjects[:5])}{more}); use --subject")
    n_voxels = int((np.asarray(dataset.mask_img.dataobj) > 0).sum())
    if dataset.parcels.labels.shape != (n_voxels,):
        raise MtbenchError(f"dataset {dataset.name}: parcel labels have shape {dataset.parcels.labels.shape}, "
                           f"expected ({n_voxels},) mask voxels")
    return n_voxels


def _extract_bar(progress, model_name: str):
    """Progress callback for the extraction, and a function that closes the bar."""
    if progress is None:
        return None, lambda: None
    task = progress.add_task(f"extract {model_name}", total=None)
    calls = []

    def update(done: int, total: int) -> None:
        calls.append(done)
        progress.update(task, completed=done, total=total)

    def finish() -> None:
        if not calls:  # the model never ran: every feature came from the cache
            progress.update(task, total=1, completed=1, description=f"extract {model_name} (cached)")

    return update, finish



def _open_checkpoint(results_dir, settings: RunSettings, inputs: RunInputs, opened: list, parts: dict):
    """The :class:`~mtbench.checkpoint.FitCheckpoint` of this run's fits (same inputs, same folder).

    ``parts``: what else, beyond the settings, model, dataset and BOLD, decides the fits (the
    analysis says, e.g. how its p-values are made). Called by the analysis while ``inputs.y_runs``
    still holds the BOLD (it is part of the fingerprint); appended to ``opened``.
    """

    adapter, dataset = inputs.adapter, inputs.dataset
    key = {"settings": settings.record(), "model": [adapter.name, adapter.revision, adapter.settings()],
           "dataset": [dataset.name, dataset.version, dataset.stimulus.fingerprint()], **parts}
    opened.append(FitCheckpoint(Path(results_dir), fingerprint(key, inputs.y_runs)))
    return opened[-1]


def scan_features(words: list[np.ndarray], operators, settings: RunSettings) -> list[np.ndarray]:
    """Word features -> scan features per run: HRF-aligned, trimmed, z-scored per run ."""
    from .alignment import align_runs, zscore

    scans = align_runs(words, operators, zscore_runs=False)
    return [zscore(trim_run(x, settings.trim_scans)) for x in scans]


def trim_run(x: np.ndarray, n: int) -> np.ndarray:
    """Drop ``n`` scans at both ends of a run (edge effects of the HRF and of the scanner)."""
    if n <= 0:
        return x
    if x.shape[0] <= 2 * n + 2:
        raise MtbenchError(f"cannot trim {n} scans at both ends of a run of {x.shape[0]} scans; lower --trim")
    return x[n:-n]


def expand_subjects(settings: RunSettings) -> list[str]:
    """``--subject`` as a list: ``average``/one id as is; ``all`` or ``id1,id2`` through the dataset.

    A dataset that knows more than one subject offers ``expand_subjects(spec) -> list[str]``.
    """
    spec = settings.subject
    if spec != "all" and "," not in spec:
        return [spec]
    dataset = load_dataset(settings.dataset, **settings.dataset_options)
    if not hasattr(dataset, "expand_subjects"):
        raise MtbenchError(f"dataset {settings.dataset} has only the subjects {', '.join(dataset.subjects)}: "
                           "give one with --subject")
    return dataset.expand_subjects(spec)
