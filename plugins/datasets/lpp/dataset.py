"""The ``lpp-en``, ``lpp-fr``, ``lpp-cn`` (and ``lpp-en-sim``) datasets read from a ds003643-layout root.

The stimulus comes from the real word annotation; BOLD, mask, parcels and reliability from
the prepared folder ``root/derivatives/mtbench-4mm`` (written by ``mtbench data prepare`` or
``mtbench data simulate``, see :func:`write_prepared`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.api import Parcellation, Stimulus, StimulusRun
from mtbench.ceiling import ceiling_from_split_half
from mtbench.errors import MtbenchError, first_line
from mtbench.paths import atomic_write_bytes

from ..atlas import ATLAS_NAME, CORTICAL_NAMES
from .subjects import subject_bold
from .layout import (
    PREPARED_DIR,
    TR,
    Annotation,
    Language,
    default_root,
    language,
    read_annotation,
    runs_by_subject,
)

PREPARED_VERSION = 1
OPTIONS = ("root",)


# --------------------------------------------------------------------------- writing
def _npy_bytes(array: np.ndarray) -> bytes:

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_bold(prepared: Path, subject: str, runs: list[np.ndarray]) -> None:
    """Write one subject's runs as ``bold/sub-<subject>_run-<k>.npy`` (float32, atomic)."""
    folder = prepared / "bold"
    folder.mkdir(parents=True, exist_ok=True)
    for k, y in enumerate(runs, start=1):
        atomic_write_bytes(folder / f"sub-{subject}_run-{k}.npy", _npy_bytes(np.asarray(y, dtype=np.float32)))


def write_prepared(prepared: Path, mask: np.ndarray, affine: np.ndarray, parcels: np.ndarray,
                   reliability: np.ndarray | None, info: dict, ceiling: np.ndarray | None = None,
                   truth: dict | None = None) -> None:
    """Write everything but the BOLD of a prepared folder; ``prepared.json`` last (it marks completion).

    Parameters
    ----------
    prepared : Path
        ``root/derivatives/mtbench-4mm``.
    mask : ndarray of bool, shape (x, y, z)
    affine : ndarray, shape (4, 4)
    parcels : ndarray of int, shape (n_voxels,)
        Harvard-Oxford cortical id per mask voxel (0 = none).
    reliability : ndarray, shape (n_splits, n_voxels), optional
        Split-half correlations (as the reference ``isc_10trials`` files).
    info : dict
        ``subjects`` (list, ``average`` included when present), ``n_scans`` (9 ints), anything else.
    ceiling : ndarray, shape (n_voxels,), optional
        An exact noise ceiling (simulations); overrides the one derived from ``reliability``.
    truth : dict, optional
        Planted truth of a simulated dataset.
    """
    import nibabel as nib

    prepared.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    atomic_write_bytes(prepared / "mask.nii.gz", gzip.compress(img.to_bytes()))
    atomic_write_bytes(prepared / "parcels.npy", _npy_bytes(np.asarray(parcels, dtype=np.int32)))
    if reliability is not None:
        atomic_write_bytes(prepared / "reliability.npy", _npy_bytes(np.asarray(reliability, dtype=np.float32)))
    if ceiling is not None:
        atomic_write_bytes(prepared / "ceiling.npy", _npy_bytes(np.asarray(ceiling, dtype=np.float32)))
    if truth is not None:
        atomic_write_bytes(prepared / "truth.json", json.dumps(truth, indent=1, default=str).encode())
    info = {"prepared_version": PREPARED_VERSION, "n_voxels": int(mask.sum()), **info}
    atomic_write_bytes(prepared / "prepared.json", json.dumps(info, indent=1, default=str).encode())


# --------------------------------------------------------------------------- stimulus
def make_stimulus(lang: Language, annotation: Annotation) -> Stimulus:
    """Runs 1..9 = sections 1..9, with the real scan counts of each run."""
    runs = []
    for r, (words, n_scans) in enumerate(zip(annotation.sections, lang.n_scans), start=1):
        onsets = np.array([w[1] for w in words])
        offsets = np.array([w[2] for w in words])
        if offsets.max() > n_scans * TR:
            raise MtbenchError(f"lpp-{lang.key}: run {r} has words until {offsets.max():.1f} s but only {n_scans} "
                               f"scans ({n_scans * TR:.0f} s): wrong annotation file for this language?")
        runs.append(StimulusRun(words=[w[0] for w in words], onsets=onsets, offsets=offsets, n_scans=n_scans))
    return Stimulus(language=lang.iso, tr=TR, runs=runs)


# --------------------------------------------------------------------------- dataset
class LppDataset:
    """A Le Petit Prince dataset (implements :class:`mtbench.api.Dataset`).

    Attributes
    ----------
    name, version : str
    root : Path
    language : Language
    stimulus : Stimulus
        9 runs, the real scan counts.
    annotation : Annotation
        ``dropped`` counts the annotation rows left out (empty words, NaN rows).
    mask_img : nibabel.Nifti1Image
    parcels : Parcellation
    subjects : list of str
        ``average`` first (when prepared), then subject ids (``EN057``...).
    truth : dict or None
        The planted truth of a simulated dataset.
    """

    def __init__(self, name: str, lang: Language, root: Path):
        self.name, self.language, self.root = name, lang, Path(root)
        simulated = name.endswith("-sim")
        fetch_hint = f"run `mtbench data simulate {name}`" if simulated else f"run `mtbench data fetch {name}`"
        # what rewrites the prepared folder
        self._redo = f"re-run `mtbench data simulate {name}`" if simulated else f"re-run `mtbench data prepare {name}`"
        if not self.root.is_dir():
            raise MtbenchError(f"dataset {name}: no data at {self.root}: {fetch_hint} (or pass --dataset-option "
                               f"root=DIR / set MTBENCH_LPP_ROOT)")
        annotation_path = self.root / lang.annotation
        if not annotation_path.exists():
            raise MtbenchError(f"dataset {name}: {annotation_path} is missing: {fetch_hint} (or pass "
                               "--dataset-option root=DIR)")
        self.annotation = read_annotation(annotation_path)
        self.stimulus = make_stimulus(lang, self.annotation)

        self.prepared = self.root / PREPARED_DIR
        info_path = self.prepared / "prepared.json"
        if not info_path.exists():
            raise MtbenchError(f"dataset {name}: {self.root} is not prepared ({info_path} missing): "
                               f"{self._redo.removeprefix('re-')}")
        self.info = self._read(info_path, lambda p: json.loads(p.read_text()))
        if not isinstance(self.info, dict) or list(self.info.get("n_scans", [])) != list(lang.n_scans):
            raise MtbenchError(f"dataset {name}: prepared data has scans "
                               f"{self.info.get('n_scans') if isinstance(self.info, dict) else None} per run, the "
                               f"real runs have {list(lang.n_scans)}: {self._redo}")
        self.mask_img, mask = self._read(self.prepared / "mask.nii.gz", _load_mask)
        n_voxels = int((mask > 0).sum())
        labels = self._read(self.prepared / "parcels.npy", np.load)
        if labels.shape != (n_voxels,):
            raise MtbenchError(f"dataset {name}: parcels.npy has shape {labels.shape} but the mask has {n_voxels} "
                               f"voxels: {self._redo}")
        present = sorted(int(i) for i in np.unique(labels) if i > 0)
        self.parcels = Parcellation(labels=labels.astype(np.int32),
                                    names={i: CORTICAL_NAMES[i - 1] for i in present},
                                    atlas=f"{ATLAS_NAME}, 4 mm nearest")
        self.n_voxels = n_voxels
        self.subjects = list(self.info.get("subjects", []))
        truth_path = self.prepared / "truth.json"
        self.truth = self._read(truth_path, lambda p: json.loads(p.read_text())) if truth_path.exists() else None
        key = hashlib.sha256(info_path.read_bytes() + annotation_path.read_bytes()).hexdigest()[:12]
        self.version = f"{PREPARED_VERSION}+{key}"

    # ----------------------------------------------------------------- subjects
    def expand_subjects(self, spec: str) -> list[str]:
        """``average``, ``all`` (every individual subject) or a comma list of ids -> subject ids."""
        if spec == "all":
            return [s for s in self.subjects if s != "average"]
        wanted = [s.strip().removeprefix("sub-") for s in spec.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in self.subjects]
        if unknown or not wanted:
            raise MtbenchError(f"dataset {self.name} has no subject {unknown[0] if unknown else spec!r}; it has "
                               f"{', '.join(self.subjects[:6])}{'...' if len(self.subjects) > 6 else ''}")
        return wanted

    # ----------------------------------------------------------------- protocol
    def load_bold(self, subject: str = "average") -> list[np.ndarray]:
        """Prepared BOLD of one subject, one array (n_scans_r, n_voxels) float32 per run.

        Scan counts are checked against the real ones and, when the raw BOLD files are
        present, against their headers.
        """
        subjects = self.expand_subjects(subject)
        if len(subjects) != 1 or subject == "all":
            raise MtbenchError(f"load_bold takes one subject, got {subject!r}; `mtbench run --subject all` runs "
                               "them one by one")
        subject = subjects[0]
        if subject in self._simulated_subjects():
            try:
                return subject_bold(self.prepared, self.info, subject, list(self.language.n_scans))
            except (OSError, ValueError) as exc:
                raise MtbenchError(f"dataset {self.name}: simulated subject {subject} cannot be composed ({exc}): "
                                   f"{self._redo}") from None
        runs = []
        for k, n_scans in enumerate(self.language.n_scans, start=1):
            path = self.prepared / "bold" / f"sub-{subject}_run-{k}.npy"
            if not path.exists():
                raise MtbenchError(f"dataset {self.name}: {path} is missing: {self._redo}")
            y = self._read(path, np.load)
            if y.shape != (n_scans, self.n_voxels):
                raise MtbenchError(f"dataset {self.name}: {path.name} has shape {y.shape}, expected ({n_scans}, "
                                   f"{self.n_voxels}) scans x voxels: {self._redo}")
            runs.append(y)
        if subject != "average":
            self._check_raw_scans(subject)
        return runs

    def _check_raw_scans(self, subject: str) -> None:
        """Compare the real scan counts with the raw BOLD headers, when the raw files are here."""
        import nibabel as nib

        files = runs_by_subject(self.language, self.root.glob(f"derivatives/sub-{subject}/func/*_bold.nii.gz"))
        for run, (raw, n_scans) in enumerate(zip(files.get(subject, []), self.language.n_scans), start=1):
            shape = nib.load(raw).shape
            if len(shape) != 4 or shape[3] != n_scans:
                raise MtbenchError(f"{raw.name} has {shape[3] if len(shape) == 4 else 'no'} scans, run {run} has "
                                   f"{n_scans}: the file is damaged or not from ds003643; fetch it again")

    def _simulated_subjects(self) -> list[str]:
        sim = self.info.get("simulated_subjects") if isinstance(self.info, dict) else None
        return [s for s in self.subjects if s.startswith("sim")] if sim else []

    def noise_ceiling(self, subject: str = "average") -> np.ndarray | None:
        """Per-voxel noise ceiling (n_voxels,) of the average subject; None for single real subjects.

        An exact ``ceiling.npy`` (simulations) wins; otherwise the Spearman-Brown corrected
        split-half reliability of the prepared data (:func:`mtbench.ceiling.ceiling_from_split_half`).
        A simulated subject's is exact too: its SNR is the average's over ``noise_scale²``.
        """
        if subject in self._simulated_subjects() and (self.prepared / "ceiling.npy").exists():
            c2 = np.clip(self._read(self.prepared / "ceiling.npy", np.load).astype(np.float64) ** 2, 0, 1 - 1e-9)
            snr = c2 / (1 - c2) / self.info["simulated_subjects"]["noise_scale"] ** 2
            return np.sqrt(snr / (1 + snr)).astype(np.float32)
        if subject != "average":
            return None
        exact = self.prepared / "ceiling.npy"
        if exact.exists():
            return self._read(exact, np.load).astype(np.float32)
        reliability = self.prepared / "reliability.npy"
        if not reliability.exists():
            return None
        return ceiling_from_split_half(self._read(reliability, np.load))

    def _read(self, path: Path, read: Callable[[Path], Any]) -> Any:
        """``read(path)``; a damaged file (truncated, overwritten) is one line naming it and the fix."""

        from nibabel.filebasedimages import ImageFileError

        try:
            return read(path)
        except (OSError, ValueError, EOFError, zlib.error, ImageFileError) as exc:
            raise MtbenchError(f"dataset {self.name}: {path} is damaged ({first_line(exc)}); {self._redo}") from None


def _load_mask(path: Path):
    """The mask image and its voxels, read in full (``nib.load`` alone reads only the header).

    Returns
    -------
    image : nibabel.Nifti1Image
    mask : ndarray, shape (x, y, z)
    """
    import nibabel as nib

    image = nib.load(path)
    return image, np.asarray(image.dataobj)


def load_lpp(key: str, name: str | None = None, **options) -> LppDataset:
    """Load ``lpp-<key>`` from ``root`` (option), ``$MTBENCH_LPP_ROOT`` or the cache."""
    lang = language(key)
    name = name or f"lpp-{key}"
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown option {unknown[0]!r} for dataset {name}: options are {', '.join(OPTIONS)}")
    root = Path(options["root"]).expanduser() if options.get("root") else default_root(name)
    return LppDataset(name, lang, root)
