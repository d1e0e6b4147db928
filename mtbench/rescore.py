"""``mtbench rescore``: a finished Mode 1 run scored with another metric or on other parcels.

Neither changes what the ridge fits chose, so neither repeats the alpha search:

- **other parcels**: every parcel statistic is recomputed from the run's per-fold,
  per-voxel scores (``folds.parquet``) on the new labels; nothing is fitted, no model or
  feature is read;
- **another metric**: the held-out predictions are not stored (2,816 scans x 25,870
  voxels, 290 MB per fit at LPP scale), so each outer fold is refitted once with the
  alphas the run chose there (``fit_nested_loro(alpha_per_run=...)``: no inner fold is
  decomposed) on the cached TR-level features, and its test run scored with the new
  metric. The validation scores, the alphas, the best-state choices (made on validation
  Pearson r) and the p-values (of Pearson r) are the run's own.

The result is a new run folder next to the original, whose manifest names its origin
(``rescored_from``); the original is never touched.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from .settings import RunSettings
from .errors import MtbenchError, first_line
from .paths import results_folder_of


def settings_of(manifest: dict) -> RunSettings:
    """The effective :class:`RunSettings` a run recorded in its manifest."""
    recorded = manifest.get("settings", {})
    known = {f.name for f in fields(RunSettings)}
    return RunSettings(**{k: v for k, v in recorded.items() if k in known})


def read_parcels(path: Path, mask_img, names_path: Path | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Integer labels of a parcellation image at the mask's voxels (nearest-neighbour resampled).

    Parameters
    ----------
    path : Path
        3-D NIfTI of integer labels (0: no parcel), any grid.
    mask_img : nibabel.Nifti1Image
        The run's mask (``maps/mask.nii.gz``).
    names_path : Path, optional
        Text file with one ``<label><tab or comma><name>`` per line (a header line is
        skipped); default names are ``parcel <label>``.

    Returns
    -------
    labels : ndarray of int, shape (n_voxels,)
    names : dict
        Label -> name, for every label found inside the mask.
    """
    import nibabel as nib
    from nilearn.image import resample_to_img

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for a missing or corrupt file
        raise MtbenchError(f"cannot read parcels {path}: {first_line(exc)}; give a 3-D NIfTI of "
                           "integer labels") from None
    if data.ndim != 3 or not np.allclose(data, np.round(data)):
        raise MtbenchError(f"parcels {path}: expected a 3-D image of integer labels, got shape {data.shape} "
                           f"of {data.dtype}; give a label image (e.g. an atlas's maxprob file)")
    if img.shape != mask_img.shape or not np.allclose(img.affine, mask_img.affine):
        img = resample_to_img(img, mask_img, interpolation="nearest", force_resample=True, copy_header=True)
    mask = np.asarray(mask_img.dataobj) > 0
    labels = np.round(np.asarray(img.dataobj)[mask]).astype(np.int64)
    found = sorted(int(v) for v in np.unique(labels) if v != 0)
    if not found:
        raise MtbenchError(f"parcels {path}: no labelled voxel inside the run's mask; is it in the same "
                           "space (MNI) as the data?")
    given = _read_names(names_path) if names_path is not None else {}
    return labels, {label: given.get(label, f"parcel {label}") for label in found}


def _read_names(path: Path) -> dict[int, str]:
    names = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MtbenchError(f"cannot read parcel names {path}: {exc}; give a text file of '<label>\\t<name>' "
                           "lines") from None
    for number, line in enumerate(lines, start=1):
        parts = [p.strip() for p in line.replace("\t", ",", 1).split(",", 1)]
        if len(parts) == 2 and parts[0].lstrip("-").isdigit() and parts[1]:
            names[int(parts[0])] = parts[1]
        elif line.strip() and number > 1:
            raise MtbenchError(f"parcel names {path}, line {number}: {line!r} is not '<label>\\t<name>'")
    return names


def rescore(run_dir: Path, metric: str | None = None, parcels: Path | None = None,
            parcel_names: Path | None = None, run_id: str | None = None, progress=None,
            results_dir: Path | None = None):
    """Score a finished Mode 1 run with another metric and/or on other parcels; write a new run.

    Parameters
    ----------
    run_dir : Path
        ``RESULTS/runs/<run_id>`` of a finished ``mtbench run`` (Mode 1).
    metric : str, optional
        A registered metric (``mtbench list metrics``); default the run's own.
    parcels, parcel_names : Path, optional
        Label image and names (:func:`read_parcels`); default the dataset's parcels.
    run_id : str, optional
        Name of the new run folder; default ``<run_id>-<metric>`` and/or ``-<parcels file stem>``.
    progress : rich.progress.Progress, optional
    results_dir : Path, optional
        Where the new run goes (``results_dir/runs/<run_id>``); default the results folder that
        ``run_dir`` is in. Required for a run folder that is not in a ``runs/`` folder (a copy).

    Returns
    -------
    mtbench.runner.RunOutput
    """
    from .registry import get_registry, load_dataset
    from .results import read_score_table, summarize, write_run
    from .runner import RunOutput, check_truth
    from .schema import read_map, validate_run

    start = time.perf_counter()
    run_dir = Path(run_dir)
    run = validate_run(run_dir)
    if run.mode != "1":
        raise MtbenchError(f"{run_dir}: a Mode {run.mode} run; rescore reads Mode 1 runs (re-run Mode 2 with "
                           "the other --metric)")
    settings = settings_of(run.manifest)
    old_metric = settings.metric
    metric = metric or old_metric
    if metric == old_metric and parcels is None:
        raise MtbenchError(f"nothing to rescore: the run is already scored with {metric!r} on its dataset's parcels; "
                           "give --metric NAME and/or --parcels LABELS.nii.gz")
    entry = get_registry().metric(metric)  # unknown name: one line before any work
    table = read_score_table(run_dir)
    results_dir = results_folder_of(run_dir, results_dir)
    suffix = "-".join(filter(None, [metric if metric != old_metric else None,
                                    Path(parcels).name.split(".")[0] if parcels is not None else None]))
    run_id = run_id or f"{run.manifest['run_id']}-{suffix}"
    if (results_dir / "runs" / run_id).exists():
        raise MtbenchError(f"{results_dir / 'runs' / run_id} already exists; give another --run-id")

    mask_img = read_map(run_dir, "mask.nii.gz")
    dataset = load_dataset(settings.dataset, **settings.dataset_options)
    if metric != old_metric:
        _refit_scores(table, settings, entry, dataset, run.manifest, progress)
    if parcels is not None:
        labels, names = read_parcels(Path(parcels), mask_img, parcel_names)
        atlas = f"{Path(parcels).name} (rescore)"
    else:
        labels, names, atlas = dataset.parcels.labels, dataset.parcels.names, dataset.parcels.atlas
    ceiling = dataset.noise_ceiling(settings.subject)
    summary = summarize(table, labels, names, ceiling, fdr=settings.fdr)

    meta = copy.deepcopy(run.manifest)
    meta["settings"]["metric"] = metric
    meta["dataset"]["atlas"] = atlas
    meta["run_id"] = run_id
    meta["rescored_from"] = {"run_id": run.manifest["run_id"], "metric": old_metric,
                             "parcels": str(parcels) if parcels is not None else None,
                             "refitted": metric != old_metric}
    meta["seconds"] = round(time.perf_counter() - start, 1)
    truth_path = run_dir / "truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.is_file() else None
    out = write_run(results_dir, run_id, meta, table, mask_img, labels, names, ceiling, truth)
    return RunOutput(run_dir=out, summary=summary, truth_check=check_truth(truth, summary),
                     seconds=time.perf_counter() - start)


def _refit_scores(table, settings: RunSettings, entry, dataset, manifest: dict, progress) -> None:
    """Replace ``table.test`` and ``table.test_per_run`` with ``entry``'s scores of refits that
    use the run's own alphas (one refit per outer fold, no alpha search)."""
    from contextlib import nullcontext

    from .encoding import fit_nested_loro
    from .runner import prepare_inputs

    recorded = manifest.get("dataset", {})
    if (recorded.get("version"), recorded.get("stimulus")) != (dataset.version, dataset.stimulus.fingerprint()):
        raise MtbenchError(f"dataset {dataset.name} has changed since run {manifest['run_id']} (version or "
                           "stimulus differ); its alphas do not apply: run `mtbench run` again")
    with progress if progress is not None else nullcontext():
        inputs = prepare_inputs(settings, progress=progress)
        if inputs.y_runs[0].shape[1] != table.test.shape[1]:
            raise MtbenchError(f"dataset {dataset.name} has {inputs.y_runs[0].shape[1]} voxels, the run "
                               f"{table.test.shape[1]}: run `mtbench run` again")
        task = progress.add_task(f"refit for {entry.name}", total=len(table.keys)) if progress else None
        for f, key in enumerate(table.keys):
            result = fit_nested_loro(inputs.scans.pop(key), inputs.y_runs, settings.alphas, backend=settings.backend,
                                     score=entry.score, precision=settings.precision,
                                     alpha_per_run=table.alpha_per_run[f])
            table.test[f], table.test_per_run[f] = result.test, result.test_per_run
            if task is not None:
                progress.update(task, advance=1, description=f"refit L{key[0]} {key[1]} for {entry.name}")
