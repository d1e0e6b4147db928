"""``mtbench rescore``: a finished run scored with another metric or on other parcels, into a new run.

Neither changes what the fits chose, so neither repeats the alpha search: the run's analysis
says how (:attr:`mtbench.api.Analysis.rescore`; Mode 1 recomputes every parcel statistic from
its per-fold, per-voxel scores for other parcels, and refits each outer fold once with the run's
own alphas for another metric). The result is a new run folder next to the original, whose
manifest names its origin (``rescored_from``); the original is never touched.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import numpy as np

from mtbench.api import Parcellation
from mtbench.errors import MtbenchError, first_line
from mtbench.paths import check_run_id, results_folder_of
from mtbench.registry import get_registry, load_dataset
from mtbench.results import write_run
from mtbench.runner import RunOutput
from mtbench.schema import read_map, validate_run
from mtbench.settings import RunSettings


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
    from nilearn.image import resample_to_img  # nilearn: seconds to import

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
    """Score a finished run with another metric and/or on other parcels; write a new run.

    Parameters
    ----------
    run_dir : Path
        ``RESULTS/runs/<run_id>`` of a finished ``mtbench run`` whose analysis can be rescored.
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
    start = time.perf_counter()
    if run_id is not None:
        check_run_id(run_id)  # before reading the run
    run_dir = Path(run_dir)
    run = validate_run(run_dir)
    analysis = get_registry().analysis(run.mode).load()
    if analysis.rescore is None:
        rescorable = [name for name in get_registry().names("analysis")
                      if get_registry().analysis(name).load().rescore is not None]
        raise MtbenchError(f"{run_dir}: a Mode {run.mode} run; rescore reads Mode {', '.join(rescorable)} runs (re-run "
                           f"Mode {run.mode} with the other --metric)")
    settings = RunSettings.from_record(run.manifest.get("settings", {}))
    old_metric = settings.metric
    metric = metric or old_metric
    if metric == old_metric and parcels is None:
        raise MtbenchError(f"nothing to rescore: the run is already scored with {metric!r} on its dataset's parcels; "
                           "give --metric NAME and/or --parcels LABELS.nii.gz")
    entry = get_registry().guarded_metric(metric)  # unknown name: one line before any work
    results_dir = results_folder_of(run_dir, results_dir)
    suffix = "-".join(filter(None, [metric if metric != old_metric else None,
                                    Path(parcels).name.split(".")[0] if parcels is not None else None]))
    run_id = check_run_id(run_id or re.sub(r"[^A-Za-z0-9._-]+", "-", f"{run.manifest['run_id']}-{suffix}"))
    if (results_dir / "runs" / run_id).exists():
        raise MtbenchError(f"{results_dir / 'runs' / run_id} already exists; give another --run-id")

    mask_img = read_map(run_dir, "mask.nii.gz")
    other = None
    if parcels is not None:  # before any refit: a bad label file costs nothing
        labels, names = read_parcels(Path(parcels), mask_img, parcel_names)
        other = Parcellation(labels=labels, names=names, atlas=f"{Path(parcels).name} (rescore)")
    dataset = load_dataset(settings.dataset, **settings.dataset_options)
    result = analysis.rescore(run, settings, entry, dataset, other, progress)
    atlas = other.atlas if other is not None else dataset.parcels.atlas

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
    meta |= result.manifest
    out = write_run(results_dir, run_id, meta, result, mask_img, truth)
    return RunOutput(run_dir=out, summary=result.summary, truth_check=result.truth_check(truth),
                     seconds=time.perf_counter() - start, mode=run.mode)
