"""Several runs that fitted different (layer, state)s, as the one run that fitted them all.

A sweep fits each (layer, state) as its own run (a *cell*), so that cells run anywhere and
resume one by one. The question a sweep asks (which layer and state best explains each
parcel?) needs them side by side: :func:`combine_runs` reads the cells' per-fold, per-voxel
scores (``folds.parquet``) and writes the run that ``mtbench run --states ... --layers ...``
would have written with the same settings, nothing refitted: every fit is independent of
the others (the same data, alphas, seeds and null columns), so the combined run's files
are that run's files, and the best (layer, state) per parcel is chosen on validation
scores across all the cells (:func:`mtbench.results.summarize`).

Mode 2 runs of different layers (one layer per sweep cell) combine the same way: their
tables are concatenated (:class:`mtbench.mode2.Mode2Tables`) and the nested layer choice
per parcel is made across all of them from their per-fold scores (``mode2_folds.parquet``).
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import MtbenchError

# manifest settings that differ between the cells of one combination (everything else must agree)
_PER_CELL = ("states", "layers")


def combine_runs(run_dirs: list[Path], results_dir: Path, run_id: str):
    """Write ``results_dir/runs/<run_id>``: the runs ``run_dirs`` as one run.

    Parameters
    ----------
    run_dirs : list of Path
        Finished runs of one model, dataset, subject, mode and the same settings, each
        fitting (layer, state)s (Mode 2: layers) the others do not; Mode 1 runs with
        ``folds.parquet``.
    results_dir : Path
    run_id : str
        Name of the combined run; its manifest lists the runs in ``combined_from``.

    Returns
    -------
    mtbench.runner.RunOutput

    Raises
    ------
    MtbenchError
        The runs disagree (another model, dataset, subject or setting), fit the same
        (layer, state) twice, or one cannot be read.
    """
    from .registry import get_registry, load_dataset
    from .rescore import settings_of
    from .results import read_score_table, summarize, write_run
    from .runner import RunOutput, check_truth
    from .schema import read_map, validate_run

    start = time.perf_counter()
    if not run_dirs:
        raise MtbenchError("nothing to combine: give at least one run")
    runs = [validate_run(Path(d)) for d in run_dirs]
    first = runs[0].manifest
    for run in runs:
        problem = _disagreement(first, run.manifest)  # another mode is another setting
        if problem:
            raise MtbenchError(f"{run.path}: {problem} than {runs[0].path}; combine runs of one model, dataset, "
                               "subject, mode and settings")
    if runs[0].mode == "2":
        return _combine_mode2(runs, Path(results_dir), run_id, start)
    fitted = [[(layer, state) for layer in run.manifest["settings"]["layers"]
               for state in run.manifest["settings"]["states"]] for run in runs]  # each run's order of fits
    keys = [key for run_keys in fitted for key in run_keys]
    twice = sorted(key for key, n in Counter(keys).items() if n > 1)
    if twice:
        raise MtbenchError(f"layer {twice[0][0]} {twice[0][1]} is fitted by more than one of the runs; combine "
                           "runs that fit different (layer, state)s")
    # the order of `mtbench run`: layer by layer, states in their canonical order (ties go to the first)
    canonical = get_registry().names("state")
    keys.sort(key=lambda k: (k[0], canonical.index(k[1]) if k[1] in canonical else len(canonical), k[1]))
    row = {key: i for i, key in enumerate(keys)}
    table = None
    for run, run_keys in zip(runs, fitted):  # one run's scores in memory at a time, besides the result
        part = read_score_table(run.path)
        if part.keys != run_keys:
            raise MtbenchError(f"{run.path}: its scores are not those of the fits its manifest names; the run is "
                               "corrupt, re-run it with `mtbench run`")
        if table is None:
            table = _empty_like(part, keys)
        rows = [row[key] for key in run_keys]
        for name in _ARRAYS:
            value = getattr(part, name)
            if value is None:
                setattr(table, name, None)
            elif getattr(table, name) is not None:
                getattr(table, name)[rows] = value

    settings = settings_of(first)
    dataset = load_dataset(settings.dataset, **settings.dataset_options)
    labels, names = dataset.parcels.labels, dataset.parcels.names
    ceiling = dataset.noise_ceiling(settings.subject)
    summary = summarize(table, labels, names, ceiling, fdr=settings.fdr)

    meta = _combined_manifest(runs, run_id)
    meta["settings"]["layers"] = sorted({layer for layer, _ in table.keys})
    meta["settings"]["states"] = list(dict.fromkeys(state for _, state in table.keys))
    meta["folds_file"] = True
    inflation = {k: v for run in runs for k, v in (run.manifest.get("significance") or {})
                 .get("null_inflation", {}).items()}
    if inflation:
        meta["significance"] = {"null_inflation": inflation}
    truth = _truth(runs[0])
    out = write_run(Path(results_dir), run_id, meta, table, read_map(runs[0].path, "mask.nii.gz"), labels, names,
                    ceiling, truth)
    return RunOutput(run_dir=out, summary=summary, truth_check=check_truth(truth, summary),
                     seconds=time.perf_counter() - start)


def _combine_mode2(runs, results_dir: Path, run_id: str, start: float):
    """:func:`combine_runs` of Mode 2 runs (checked to agree): tables concatenated, layers chosen across them."""
    from .mode2 import Mode2Tables, read_mode2_tables
    from .results import write_run
    from .runner import RunOutput
    from .schema import read_map

    layers = [layer for run in runs for layer in run.manifest["settings"]["layers"]]
    twice = sorted(layer for layer, n in Counter(layers).items() if n > 1)
    if twice:
        raise MtbenchError(f"layer {twice[0]} is fitted by more than one of the Mode 2 runs; combine runs that fit "
                           "different layers")
    parts = []
    for run in runs:
        part = read_mode2_tables(run)
        if part.layers != run.manifest["settings"]["layers"] or {row["layer"] for row in part.folds} != set(part.layers):
            raise MtbenchError(f"{run.path}: its tables are not those of the layers its manifest names; the run is "
                               "corrupt, re-run it with `mtbench run`")
        parts.append(part)
    tables = Mode2Tables.concat(parts)
    meta = _combined_manifest(runs, run_id)
    meta["settings"]["layers"] = tables.layers
    truth = _truth(runs[0])
    out = write_run(results_dir, run_id, meta, tables, read_map(runs[0].path, "mask.nii.gz"), np.zeros(0), {}, None,
                    truth)
    return RunOutput(run_dir=out, summary=tables.summary, truth_check=tables.check_truth(truth),
                     seconds=time.perf_counter() - start)


def _combined_manifest(runs, run_id: str) -> dict:
    """The first run's manifest as the combined run's: its id, where it came from, the fits' seconds."""
    meta = copy.deepcopy(runs[0].manifest)
    meta["run_id"] = run_id
    meta["combined_from"] = [run.manifest["run_id"] for run in runs]
    meta.pop("sweep_cell", None)  # the combination is what the leaderboard shows
    meta["seconds"] = round(sum(float(run.manifest.get("seconds", 0)) for run in runs), 1)  # of the fits
    meta.pop("timings", None)  # per stage of one cell's run: not this run's
    return meta


def _truth(run) -> dict | None:
    """The planted truth a run was scored against (synthetic datasets), or None."""
    path = run.path / "truth.json"
    return json.loads(path.read_text()) if path.is_file() else None


def default_run_id(run_dirs: list[Path]) -> str:
    """``<model>-<dataset>-<subject>-combined-[mode2-]<protocol>-<hash of the run ids>`` for ``mtbench
    combine`` (named like a sweep's combined runs)."""
    import hashlib

    from .schema import validate_run
    from .sweep import model_slug, slug

    manifests = [validate_run(Path(d)).manifest for d in run_dirs]
    digest = hashlib.sha256("\n".join(sorted(m["run_id"] for m in manifests)).encode()).hexdigest()[:10]
    first = manifests[0]
    return "-".join([model_slug(first["model"]["spec"]), slug(first["dataset"]["name"]),
                     slug(first["settings"]["subject"]), "combined",
                     *(["mode2"] if first["settings"].get("mode") == 2 else []),
                     slug(first["settings"].get("protocol") or "mtbench"), digest])


_ARRAYS = ("test", "validation", "alpha", "test_per_run", "validation_per_run", "p_value", "alpha_per_run")


def _empty_like(part, keys: list[tuple[int, str]]):
    """A :class:`~mtbench.results.ScoreTable` of ``len(keys)`` fits shaped like ``part``, to be filled."""
    from .results import ScoreTable

    arrays = {name: None if getattr(part, name) is None else
              np.empty((len(keys), *getattr(part, name).shape[1:]), dtype=getattr(part, name).dtype)
              for name in _ARRAYS}
    return ScoreTable(keys=list(keys), **arrays)


def _disagreement(a: dict, b: dict) -> str | None:
    """What makes two run manifests results of different experiments ("another model"...), or None."""
    if (a["model"].get("spec"), a["model"].get("revision")) != (b["model"].get("spec"), b["model"].get("revision")):
        return "another model"
    if ({k: a["dataset"].get(k) for k in ("name", "version", "stimulus", "n_voxels")}
            != {k: b["dataset"].get(k) for k in ("name", "version", "stimulus", "n_voxels")}):
        return "another dataset"
    if a["settings"].get("subject") != b["settings"].get("subject"):
        return "another subject"
    for key in sorted(set(a["settings"]) | set(b["settings"]), key=lambda k: (k != "mode", k)):  # the mode first
        if key not in _PER_CELL and a["settings"].get(key) != b["settings"].get(key):
            return f"another {key} ({b['settings'].get(key)!r})"
    if a.get("rescored_from") or b.get("rescored_from"):
        return "a rescored run (combine the runs it came from)"
    return None
