"""``mtbench data prepare lpp-XX``: from fetched BOLD to what runs read (the reference pipeline's steps).

1. Group mask on the 4 mm grid (affine diag(4, 4, 4), origin (-72, -106, -64), shape 37x46x38):
   per subject, nilearn's ``compute_epi_mask`` of the subject's mean EPI resampled to the grid;
   then ``intersect_masks(threshold=0.5, connected=True)`` over subjects (together exactly
   ``compute_multi_epi_mask`` of the subjects' mean EPIs); then symmetrised: a voxel is kept
   when its mirror across x = 0 is kept too (the grid is symmetric about x = 0).
2. Per subject and run: ``resample_img`` to the grid (continuous), mask, then
   ``nilearn.signal.clean(detrend=True, standardize="zscore_sample", high_pass=1/128, t_r=2)``;
   written as ``bold/sub-<id>_run-<k>.npy``.
3. The average subject: per run, the mean over subjects, standardized again.
4. Split-half reliability per voxel (:func:`mtbench.ceiling.split_half_reliability`, 10 splits).
5. Harvard-Oxford cortical parcels (maxprob-thr25, nearest) of the mask voxels.

Memory does not grow with the number of subjects: subjects are read one at a time (twice:
once for the mask, once for the data), and the average keeps one running sum per run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtbench.ceiling import split_half_reliability
from mtbench.errors import MtbenchError
from mtbench.paths import writable_folder

from ..atlas import MNI_4MM_AFFINE, MNI_4MM_SHAPE, harvard_oxford_cortical
from .dataset import write_bold, write_prepared
from .layout import (
    PREPARED_DIR,
    TR,
    default_root,
    language,
    read_annotation,
    runs_by_subject,
)

HIGH_PASS_HZ = 1 / 128
N_SPLITS = 10
OPTIONS = ("n_splits", "seed")


def _resample(img, interpolation: str = "continuous"):
    from nilearn.image import resample_img

    return resample_img(img, target_affine=MNI_4MM_AFFINE, target_shape=MNI_4MM_SHAPE, interpolation=interpolation,
                        force_resample=True, copy_header=True)


def clean_run(img, mask: np.ndarray) -> np.ndarray:
    """One run on the 4 mm grid, masked and cleaned.

    Parameters
    ----------
    img : 4-D Nifti image (any grid)
    mask : ndarray of bool, shape MNI_4MM_SHAPE

    Returns
    -------
    ndarray, shape (n_scans, n_voxels), float32
        Detrended, high-passed at 1/128 Hz (t_r 2 s), z-scored per voxel.
    """
    from nilearn.signal import clean

    data = np.asarray(_resample(img).dataobj, dtype=np.float32)[mask].T  # (n_scans, n_voxels)
    return clean(data, detrend=True, standardize="zscore_sample", high_pass=HIGH_PASS_HZ, t_r=TR).astype(np.float32)


def symmetrise(mask: np.ndarray) -> np.ndarray:
    """Keep voxels whose mirror across x = 0 is in the mask too (axis 0 of the symmetric 4 mm grid)."""
    return mask & mask[::-1]


def group_mask(mean_epis) -> np.ndarray:
    """Group mask on the 4 mm grid from each subject's mean EPI (any grid).

    ``compute_epi_mask`` per subject, ``intersect_masks(threshold=0.5, connected=True)``
    (together nilearn's ``compute_multi_epi_mask``), then :func:`symmetrise`.

    Returns
    -------
    ndarray of bool, shape MNI_4MM_SHAPE
    """
    from nilearn.masking import compute_epi_mask, intersect_masks

    masks = [compute_epi_mask(img, target_affine=MNI_4MM_AFFINE, target_shape=MNI_4MM_SHAPE) for img in mean_epis]
    return symmetrise(np.asarray(intersect_masks(masks, threshold=0.5, connected=True).dataobj) > 0)


def subject_mean_epi(files: list[Path]):
    """Mean EPI over all scans of a subject's runs, in its native grid."""
    import nibabel as nib

    total, count, affine = None, 0, None
    for path in files:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        total = data.sum(3, dtype=np.float64) if total is None else total + data.sum(3, dtype=np.float64)
        count += data.shape[3]
        affine = img.affine
    return nib.Nifti1Image((total / count).astype(np.float32), affine)


def prepare_lpp(key: str, root: Path | None = None, subjects: list[str] | None = None, progress=None,
                **options) -> str:
    """Prepare ``lpp-<key>`` in ``root/derivatives/mtbench-4mm``.

    Parameters
    ----------
    key : {"en", "fr", "cn"}
    root : Path, optional
        A fetched ds003643 root (default ``$MTBENCH_LPP_ROOT`` or the mtbench cache).
    subjects : list of str, optional
        Subject ids to use (default: every subject with 9 fetched runs).
    progress : rich.progress.Progress, optional
    **options
        ``n_splits`` (10) and ``seed`` (0) of the split-half reliability.

    Returns
    -------
    str
        One line: what was prepared where.
    """
    import nibabel as nib

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown option {unknown[0]!r} for `data prepare`: options are {', '.join(OPTIONS)}")
    lang = language(key)
    root = Path(root) if root is not None else default_root(f"lpp-{key}")
    annotation = read_annotation(root / lang.annotation)  # fails early, with the fix, when not fetched
    files = runs_by_subject(lang, sorted(root.glob("derivatives/sub-*/func/*_bold.nii.gz")))
    if subjects:
        wanted = [s.removeprefix("sub-") for s in subjects]
        missing = [s for s in wanted if s not in files]
        if missing:
            raise MtbenchError(f"sub-{missing[0]} has no BOLD under {root / 'derivatives'}: run "
                               f"`mtbench data fetch lpp-{key} --subjects {','.join(missing)}`")
        files = {s: files[s] for s in wanted}
    if len(files) < 2:
        raise MtbenchError(f"lpp-{key} needs the BOLD of at least 2 subjects under {root / 'derivatives'} (found "
                           f"{len(files)}): run `mtbench data fetch lpp-{key}`")
    for subject, paths in files.items():
        for run, (path, n_scans) in enumerate(zip(paths, lang.n_scans), start=1):
            shape = nib.load(path).shape
            if len(shape) != 4 or shape[3] != n_scans:
                raise MtbenchError(f"{Path(path).name} has {shape[3] if len(shape) == 4 else 'no'} scans but run "
                                   f"{run} has {n_scans}: the file is damaged or not from ds003643; fetch it again")
    names = list(files)
    prepared = writable_folder(root / PREPARED_DIR, "make the dataset root writable or copy it to a folder you "
                               "can write to")  # before minutes of resampling, not after
    (prepared / "prepared.json").unlink(missing_ok=True)  # incomplete until rewritten at the end

    task = progress.add_task(f"lpp-{key} mask", total=len(names)) if progress is not None else None

    def mean_epis():  # one subject in memory at a time
        for subject in names:
            yield subject_mean_epi(files[subject])
            if task is not None:
                progress.update(task, advance=1)

    mask = group_mask(mean_epis())
    if not mask.any():
        raise MtbenchError(f"lpp-{key}: the group mask is empty: the BOLD files are not brain images on MNI space")

    task = progress.add_task(f"lpp-{key} resample + clean", total=len(names)) if progress is not None else None
    sums = [np.zeros((n, int(mask.sum()))) for n in lang.n_scans]
    for subject in names:
        runs = [clean_run(nib.load(path), mask) for path in files[subject]]
        write_bold(prepared, subject, runs)
        for total, y in zip(sums, runs):
            total += y
        if task is not None:
            progress.update(task, advance=1)
    from nilearn.signal import clean

    average = [clean(total / len(names), detrend=False, standardize="zscore_sample", t_r=TR).astype(np.float32)
               for total in sums]
    write_bold(prepared, "average", average)
    del sums, average

    n_splits, seed = int(options.get("n_splits", N_SPLITS)), int(options.get("seed", 0))
    reliability = split_half_reliability(
        lambda s, k: np.load(prepared / "bold" / f"sub-{names[s]}_run-{k + 1}.npy", mmap_mode="r"),
        n_subjects=len(names), n_runs=len(lang.n_scans), n_splits=n_splits, seed=seed)
    labels, _ = harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)
    import nilearn

    info = {"subjects": ["average", *names], "n_scans": list(lang.n_scans),
            "runs": {s: [Path(p).name for p in files[s]] for s in names},
            "annotation_dropped": annotation.dropped,
            "pipeline": {"grid": "4 mm MNI, origin (-72, -106, -64), 37x46x38", "resample": "continuous",
                         "mask": "compute_epi_mask per subject mean EPI, intersect_masks(0.5), symmetrised",
                         "clean": {"detrend": True, "standardize": "zscore_sample", "high_pass": HIGH_PASS_HZ,
                                   "t_r": TR},
                         "average": "mean over subjects per run, standardized again",
                         "reliability": {"n_splits": n_splits, "seed": seed},
                         "nilearn": nilearn.__version__}}
    write_prepared(prepared, mask, MNI_4MM_AFFINE, labels[mask], reliability, info)
    return (f"prepared lpp-{key} in {prepared}: {len(names)} subjects + average, {int(mask.sum())} voxels, "
            f"mean split-half r {float(reliability.mean()):.3f}")
