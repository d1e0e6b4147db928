"""The pipeline of ``mtbench run``: extract -> align -> fit -> score -> write.

Each step is a call into a plugin or a core module; this file only orders them and
checks what flows between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .settings import RunSettings
from .settings import resolve_protocol
from .errors import MtbenchError
from .paths import writable_folder
from .registry import get_registry, load_dataset, load_model, split_spec

# Null voxels fitted with every (layer, state) to measure its cross-fitting dependence
# (mtbench.significance.fold_dependence): relative standard error of the estimate ~4.5%.
CALIBRATION_VOXELS = 1000
SIGNIFICANCE_METHOD = ("circular shifts, null widened by the fit's fold dependence "
                       "(shared alpha: null columns refitted with the fit's alphas), "
                       "Gaussian tail under 10 exceedances")

@dataclass
class RunOutput:
    """What a finished run hands back to the CLI."""

    run_dir: Path
    summary: list[dict]
    truth_check: list[dict]
    seconds: float


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
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True, default=str).encode()).hexdigest()[:6]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    name, argument = split_spec(settings.model)
    if argument:  # hf:/path/to/folder -> hf-folder
        name = f"{name}-{Path(argument).name or argument}"
    model = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
    return f"{stamp}-{model}-{settings.dataset}-{settings.subject}-{digest}"


# --------------------------------------------------------------------------- truth
def check_truth(truth: dict | None, summary: list[dict]) -> list[dict]:
    """Compare each planted (parcel, layer, state) with the winner found in that parcel."""
    if not truth:
        return []
    by_parcel = {row["parcel"]: row for row in summary}
    checks = []
    for plant in truth.get("planted", []):
        row = by_parcel.get(plant["parcel"])
        if row is None:
            continue
        checks.append({
            "parcel": plant["parcel"],
            "planted": f"L{plant['layer']} {plant['state']}",
            "found": f"L{row['layer']} {row['state']}",
            "test": row["test"],
            "recovered": row["layer"] == plant["layer"] and row["state"] == plant["state"],
        })
    return checks


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


def run(settings: RunSettings, results_dir: Path, progress=None, run_id: str | None = None,
        adapter=None, folds: bool = True, sweep_cell: bool = False) -> RunOutput:
    """Run the whole pipeline and write the results.

    Parameters
    ----------
    settings : RunSettings
    results_dir : Path
        Shared results folder; this run goes to ``results_dir/runs/<run_id>/``.
    progress : rich.progress.Progress, optional
        Receives an extraction task and a fitting task.
    run_id : str, optional
        Folder name under ``runs/`` (``mtbench sweep`` names each cell); default :func:`run_id_for`.
    folds : bool
        Write ``folds.parquet`` (Mode 1: per outer fold and voxel the scores and alpha, what
        ``mtbench rescore`` reads; ~3 MB per fit at LPP scale). An output choice, not a setting:
        it changes no number, so it is not part of the run id or the checkpoint.
    adapter : ModelAdapter, optional
        Already loaded ``settings.model`` (a sweep worker reuses it across cells).
    sweep_cell : bool
        The run is one cell of ``mtbench sweep`` (recorded in the manifest): the leaderboard
        shows it through the run that combines its sweep's cells (:mod:`mtbench.combine`).

    ``settings.protocol`` is resolved first (:func:`mtbench.api.resolve_protocol`): the run,
    its id and its manifest use the effective settings.
    """
    clock = _Clock()
    settings = resolve_protocol(settings)
    if settings.mode is None:  # TEMPORARY until analyses are registered
        settings = replace(settings, mode=1)
    metric = _check_settings(settings)
    made = not Path(results_dir).exists()
    writable_folder(Path(results_dir))  # before hours of fitting, not after
    try:
        return _run(settings, metric, Path(results_dir), progress, run_id, adapter, folds, clock, sweep_cell)
    except BaseException:
        if made:  # a run that failed early (a layer out of range, no data) leaves no empty --out behind
            with contextlib.suppress(OSError):  # not empty (kept fits, another run's files): kept
                Path(results_dir).rmdir()
        raise


def _run(settings: RunSettings, metric, results_dir: Path, progress, run_id: str | None, adapter, folds: bool,
         clock: _Clock, sweep_cell: bool) -> RunOutput:
    """:func:`run` once the settings are checked and the results folder is writable."""
    from .results import ScoreTable, provenance, summarize, write_run

    with progress if progress is not None else nullcontext():
        inputs = prepare_inputs(settings, adapter, progress, clock)
        adapter, dataset, states, layers, scans = (inputs.adapter, inputs.dataset, inputs.states, inputs.layers,
                                                   inputs.scans)
        n_voxels = inputs.y_runs[0].shape[1]
        targets, n_calibration = _fit_targets(inputs.y_runs, settings)
        y_runs = [t[:, n_calibration:] for t in targets]
        del inputs
        keys = [(layer, state) for layer in layers for state in states]
        checkpoint = None
        if settings.mode == 2:
            from .mode2 import fit_mode2

            table = fit_mode2(scans.__getitem__, y_runs, layers, settings, dataset.parcels, metric, progress)
        else:  # finished fits are checkpointed: the same command resumes an interrupted run
            checkpoint = _checkpoint(results_dir, settings, adapter, dataset, y_runs)
            with checkpoint:  # in use while fitting: no other run of this command removes it meanwhile
                table = ScoreTable(keys=keys, **_fit_all(keys, scans, targets, n_calibration, settings, metric,
                                                         progress, checkpoint))
        clock.lap("fit")

    ceiling = dataset.noise_ceiling(settings.subject)
    labels, names = dataset.parcels.labels, dataset.parcels.names
    summary = (table.summarize(labels, names, ceiling) if settings.mode == 2
               else summarize(table, labels, names, ceiling, fdr=settings.fdr))
    meta = provenance(
        settings=asdict(settings) | {"states": states, "layers": layers},
        model={"name": adapter.name, "spec": settings.model, "family": adapter.family,
               "revision": adapter.revision, "n_layers": adapter.n_layers, "extraction": adapter.settings(),
               # e.g. the share of words a static embedding has no vector for (when it extracted)
               "coverage": getattr(adapter, "coverage", None),
               "n_params": getattr(adapter, "n_params", None)},  # model size (leaderboard)
        dataset={"name": dataset.name, "version": dataset.version, "n_voxels": n_voxels,
                 "n_runs": len(dataset.stimulus.runs), "stimulus": dataset.stimulus.fingerprint(),
                 "atlas": dataset.parcels.atlas},
    )
    from .encoding import effective_precision, on_gpu

    meta["settings"]["precision_used"] = ("float32" if settings.backend.startswith("himalaya") else
                                          effective_precision(settings.precision, "cuda" if on_gpu(settings.backend)
                                                              else "cpu"))
    inflation = getattr(table, "null_inflation", None)
    if inflation is not None:  # per fit: how much cross-fitting widened its null (mtbench.significance)
        meta["significance"] = {"null_inflation": {f"L{layer}-{state}": round(float(value), 4)
                                                   for (layer, state), value in zip(table.keys, inflation)}}
    meta["run_id"] = run_id or run_id_for(settings)
    meta["seconds"] = round(clock.total, 1)
    meta["timings"] = clock.stages  # seconds per stage, writing excluded
    if settings.mode == 1:
        meta["folds_file"] = bool(folds)  # write_run reads it
    if sweep_cell:
        meta["sweep_cell"] = True
    try:
        run_dir = write_run(Path(results_dir), meta["run_id"], meta, table, dataset.mask_img, labels, names,
                            ceiling, dataset.truth, unique=run_id is None)  # a generated id taken: <id>-2
    except OSError as exc:  # a full disk, a quota: write_run has removed its half-written folder
        if isinstance(exc, FileExistsError):  # a given id that is taken: its own message says so
            raise
        again = ("run the same command again: it reuses the finished fits kept in checkpoints/" if checkpoint
                 is not None else "run the same command again")
        raise MtbenchError(f"could not write the results under {Path(results_dir) / 'runs'} "
                           f"({exc.strerror or exc}); free space there (or give --out another folder), then "
                           f"{again}") from None
    if checkpoint is not None:
        checkpoint.remove()  # the results are written: the fits are no longer needed (unless another run uses them)
    truth_check = table.check_truth(dataset.truth) if settings.mode == 2 else check_truth(dataset.truth, summary)
    return RunOutput(run_dir=run_dir, summary=summary, truth_check=truth_check, seconds=clock.total)


def _check_settings(settings: RunSettings):
    """Resolve every name and check every value before any heavy work, so a typo fails in a second.

    Returns the metric.
    """
    from .encoding import check_device
    from .mode2 import check_mode2_settings

    settings.check()
    check_device(settings.backend)  # a _cuda backend without a GPU: now, not after the extraction
    check_mode2_settings(settings)
    registry = get_registry()
    registry.model(split_spec(settings.model)[0])
    registry.dataset(settings.dataset)
    if settings.states != ["all"]:
        for name in settings.states:
            registry.state(name)
    return registry.metric(settings.metric)


@dataclass
class RunInputs:
    """What the fits of a run read: the loaded model and dataset, TR-level features, BOLD.

    Attributes
    ----------
    adapter : ModelAdapter
    dataset : Dataset
    states : list of str
        Canonical order.
    layers : list of int
        1-based blocks.
    scans : mtbench.features.ScanFeatures
        ``scans[(layer, state)]``: list of arrays, each shape (n_scans_r, n_features),
        HRF-aligned, trimmed and z-scored per run (aligned on first use, cached on disk).
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
        BOLD of ``settings.subject``, trimmed and z-scored per run.
    """

    adapter: object
    dataset: object
    states: list[str]
    layers: list[int]
    scans: object
    y_runs: list[np.ndarray]


def prepare_inputs(settings: RunSettings, adapter=None, progress=None, clock: _Clock | None = None) -> RunInputs:
    """Load the model and dataset, extract (or read cached) word features, align them, read the BOLD.

    ``settings`` are effective (:func:`mtbench.protocols.resolve_protocol` applied). Used by
    :func:`run` and by :func:`mtbench.rescore.rescore` (which only refits).
    """
    from .alignment import alignment_fingerprint, stimulus_operators, zscore
    from .features import ScanFeatures, word_features

    clock = clock if clock is not None else _Clock()
    adapter = adapter if adapter is not None else load_model(settings.model, **settings.model_options)
    if settings.mode == 2:  # Mode 2 extracts its inputs and pivot (mtbench.mode2)
        from .mode2 import mode2_states

        states = [parse_states([s], adapter.available_states())[0] for s in mode2_states(settings)]
    else:
        states = parse_states(settings.states, adapter.available_states())
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
    scans = ScanFeatures(feats, lambda words: _scan_features(words, operators, settings),
                         alignment_fingerprint(operators, settings.trim_scans),
                         [op.shape[-2] - 2 * max(settings.trim_scans, 0) for op in operators])
    bold = _check_bold(dataset.load_bold(settings.subject), dataset.stimulus, n_voxels, dataset.name)
    y_runs = [zscore(_trim(y, settings.trim_scans)) for y in bold]
    clock.lap("align_and_bold")
    return RunInputs(adapter=adapter, dataset=dataset, states=states, layers=layers, scans=scans, y_runs=y_runs)


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


def _checkpoint(results_dir, settings: RunSettings, adapter, dataset, y_runs):
    """The :class:`~mtbench.checkpoint.FitCheckpoint` of this run's fits (same inputs, same folder)."""
    from .checkpoint import FitCheckpoint, fingerprint

    parts = {"settings": asdict(settings), "model": [adapter.name, adapter.revision, adapter.settings()],
             "dataset": [dataset.name, dataset.version, dataset.stimulus.fingerprint()],
             # how the p-values are made: fits tested another way are not mixed into one run
             "significance": [SIGNIFICANCE_METHOD, CALIBRATION_VOXELS]}
    return FitCheckpoint(Path(results_dir), fingerprint(parts, y_runs))


def _fit_targets(y_runs: list[np.ndarray], settings: RunSettings) -> tuple[list[np.ndarray], int]:
    """What the ridge fits of a run regress on: its BOLD runs, after ``n_calibration`` null columns.

    Per-voxel significance needs the null variance inflation of each fit
    (:func:`mtbench.significance.fold_dependence`); when every voxel has its own alpha the
    voxels are fitted independently, so ``CALIBRATION_VOXELS`` null columns
    (:func:`mtbench.significance.calibration_columns`) ride along in the same fit and share
    its decompositions. They come first: the significance of the real voxels waits for them.

    Returns
    -------
    targets : list of ndarray, each shape (n_scans_r, n_calibration + n_voxels)
        Row views of one C-contiguous buffer (the ridge fit then reads it without a copy).
    n_calibration : int
    """
    from .significance import calibration_columns

    n_calibration = 0
    if settings.permutations > 0 and settings.mode != 2 and not settings.shared_alpha:
        n_calibration = min(CALIBRATION_VOXELS, y_runs[0].shape[1])
    bounds = np.cumsum([0, *[len(y) for y in y_runs]])
    buffer = np.empty((bounds[-1], n_calibration + y_runs[0].shape[1]), dtype=np.float32)  # filled in place
    null = calibration_columns(y_runs, n_calibration, settings.seed) if n_calibration else [None] * len(y_runs)
    for lo, hi, y, columns in zip(bounds[:-1], bounds[1:], y_runs, null):
        buffer[lo:hi, n_calibration:] = y
        if n_calibration:
            buffer[lo:hi, :n_calibration] = columns
    return [buffer[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])], n_calibration


def _fit_all(keys, scans, targets, n_calibration: int, settings: RunSettings, metric, progress,
             checkpoint=None) -> dict[str, np.ndarray]:
    """Nested leave-one-run-out ridge for every (layer, state); arrays for :class:`ScoreTable`.

    ``targets``: :func:`_fit_targets`. With a :class:`~mtbench.checkpoint.FitCheckpoint`, fits
    found there are read instead of computed, and every new fit is saved there as soon as it
    is done.
    """
    from .encoding import fit_nested_loro
    from .significance import ShiftTest

    n_voxels, n_runs = targets[0].shape[1] - n_calibration, len(targets)
    out = {name: np.zeros((len(keys), n_voxels), dtype=np.float32) for name in ("test", "validation", "alpha")}
    for name in ("test_per_run", "validation_per_run", "alpha_per_run"):  # per run: kept in folds.parquet
        out[name] = np.zeros((len(keys), n_runs, n_voxels), dtype=np.float32)
    if settings.permutations > 0:
        out["p_value"] = np.ones((len(keys), n_voxels), dtype=np.float32)
        out["null_inflation"] = np.ones(len(keys), dtype=np.float32)
    task = progress.add_task("fit ridge (nested LORO)", total=len(keys)) if progress is not None else None
    for f, key in enumerate(keys):
        name = f"L{key[0]}-{key[1]}"
        saved = checkpoint.load(name) if checkpoint is not None else None
        if saved is not None and set(saved) == set(out):  # fitted before the interruption
            for column in out:
                out[column][f] = saved[column]
            del scans[key]  # its features are not needed (a cached set does not even read them)
            if task is not None:
                progress.update(task, advance=1, description=f"fit ridge L{key[0]} {key[1]} (checkpoint)")
            continue
        x_runs = scans.pop(key)  # pop: free memory as we go

        def fit(y_runs, **kwargs):
            return fit_nested_loro(x_runs, y_runs, settings.alphas, backend=settings.backend, score=metric.score,
                                   precision=settings.precision, shared_alpha=settings.shared_alpha,
                                   inner=settings.inner, **kwargs)

        # circular shifts of the held-out predictions, block by block, the null widened by the
        # fit's own cross-fitting dependence (else the p-values are anti-conservative)
        test = None
        if settings.permutations > 0 and n_calibration:
            test = ShiftTest(targets, n_calibration, settings.permutations, settings.seed)
        shared_test = settings.permutations > 0 and not n_calibration
        result = fit(targets, on_predictions=test, return_predictions=shared_test)
        if shared_test:
            test = _shared_alpha_test(fit, result, targets, settings)
        for column in ("test", "validation", "alpha", "test_per_run", "validation_per_run", "alpha_per_run"):
            out[column][f] = getattr(result, column)[..., n_calibration:]
        if test is not None:
            out["p_value"][f], out["null_inflation"][f] = test.p_values, test.inflation
        if checkpoint is not None:
            checkpoint.save(name, {column: values[f] for column, values in out.items()})
        if task is not None:
            progress.update(task, advance=1, description=f"fit ridge L{key[0]} {key[1]}")
    return out


def _shared_alpha_test(fit, result, targets: list[np.ndarray], settings: RunSettings):
    """The per-voxel test of a fit whose voxels share one alpha per outer fold.

    Null columns cannot ride along in such a fit (they would vote for the alpha), so the
    fold dependence is measured on a refit of ``CALIBRATION_VOXELS`` null columns
    (:func:`mtbench.significance.fold_dependence`) with the alphas the real fit chose: a null
    voxel of this fit is fitted with them, and the refit needs no alpha search.

    Parameters
    ----------
    fit : callable
        ``fit(y_runs, **kwargs) -> EncodingResult`` with the real fit's features and settings.
    result : EncodingResult
        The real fit, with its held-out predictions.
    targets : list of ndarray, each shape (n_scans_r, n_voxels)

    Returns
    -------
    ShiftTest
        With ``p_values`` of every voxel and the measured ``inflation``.
    """
    from .significance import ShiftTest, fold_dependence

    def null_predictions(y_runs: list[np.ndarray]) -> list[np.ndarray]:
        alphas = np.repeat(result.alpha_per_run[:, :1], y_runs[0].shape[1], axis=1)
        return fit(y_runs, alpha_per_run=alphas, return_predictions=True).predictions

    inflation = fold_dependence(null_predictions, targets, CALIBRATION_VOXELS, settings.seed)
    test = ShiftTest(targets, 0, settings.permutations, settings.seed, inflation)
    n_voxels, block = targets[0].shape[1], 4096  # blocks bound the shift-null temporaries
    for c0 in range(0, n_voxels, block):
        c1 = min(c0 + block, n_voxels)
        test(c0, c1, [p[:, c0:c1] for p in result.predictions])
    result.predictions = None  # tested: no longer needed
    return test


def _scan_features(words: list[np.ndarray], operators, settings: RunSettings) -> list[np.ndarray]:
    """Word features -> scan features per run: HRF-aligned, trimmed, z-scored per run (Modes 1 and 2)."""
    from .alignment import align_runs, zscore

    scans = align_runs(words, operators, zscore_runs=False)
    return [zscore(_trim(x, settings.trim_scans)) for x in scans]


def _trim(x: np.ndarray, n: int) -> np.ndarray:
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
