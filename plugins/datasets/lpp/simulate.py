"""``mtbench data simulate lpp-en``: average-subject BOLD on the real English timing and geometry.

What is real: the word annotation (timing of 9 runs), the scan counts per run, the group mask
(25,870 voxels) and the per-voxel split-half reliability (ISC). What is simulated: the BOLD,
``y_v = sqrt(w_p snr_v) s_v + e_v`` (:mod:`mtbench_plugins.datasets.planting`) in the planted
parcels, ``e_v`` alone elsewhere, with

- ``snr_v = 2 r_v / (1 - r_v)``: ``r_v`` the voxel's mean split-half correlation (clipped to
  [0.01, 0.9]); ``2 r / (1 + r)`` is the Spearman-Brown reliability ``rho`` of the full
  average, and ``snr = rho / (1 - rho)`` gives the simulated average that reliability;
- ``e_v`` AR(1) noise (``phi_v ~ uniform(0.3, 0.5)``), unit variance;
- ``w_p`` the weight of the planted parcel (default 1).

Without a reliability map, a documented synthetic one is used: ``r_v ~ uniform(0.15, 0.5)``
per voxel (seeded; mean 0.325 against the real English mean of 0.365). Without a mask, the
mask is the 48 Harvard-Oxford cortical parcels on the same grid.

The output is a ds003643-layout folder (annotation copied, ``derivatives/mtbench-4mm``
prepared, ``truth.json`` recording the planted spec) that ``lpp-en-sim`` (or ``lpp-en
--dataset-option root=DIR``) reads like the real dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.features import word_features
from mtbench.paths import writable_folder
from mtbench.registry import load_model

from ..atlas import MNI_4MM_AFFINE, MNI_4MM_SHAPE, harvard_oxford_cortical
from ..planting import (
    AR1_PHI,
    N_COMPONENTS,
    N_DIRECTIONS,
    ar1_noise,
    parse_truth,
    planted_signal,
)
from .dataset import make_stimulus, write_prepared
from .layout import LANGUAGES, PREPARED_DIR, default_root, read_annotation
from .subjects import MAX_SUBJECTS, REAL_SUBJECTS, SUBJECT_NOISE, subject_ids, write_subject_parts

SIMULATION_VERSION = 1
DEFAULT_TRUTH_MODEL = "smollm2-135m"
DEFAULT_TRUTH = (
    {"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 4, "state": "per_head_q_rope"},
    {"parcel": "Superior Temporal Gyrus, posterior division", "layer": 12, "state": "ffn_activated_state"},
    {"parcel": "Inferior Frontal Gyrus, pars triangularis", "layer": 20, "state": "per_head_k_rope"},
)
FALLBACK_RELIABILITY = (0.15, 0.5)  # uniform range of the synthetic split-half r map
R_CLIP = (0.01, 0.9)
TINY_NULL_PARCELS = 2
OPTIONS = ("truth_model", "scale", "snr_scale", "subjects")


@dataclass
class Source:
    """Where the real inputs come from (``None``: fallback)."""

    annotation: Path
    mask: Path | None
    reliability: Path | None


def find_source(source: Path | None) -> Source:
    """Annotation, mask and reliability from a folder laid out like ``../shared/data/lpp`` or a ds003643 root.

    ``source=None`` looks in the default ``lpp-en`` root (fetched or prepared).
    """
    folder = Path(source) if source is not None else default_root("lpp-en")
    shared_like = Source(folder / "en" / "annotation" / "lppEN_word_information.csv",
                         folder / "en" / "mask_lpp_en.nii.gz", folder / "en" / "isc_10trials_en.npy")
    ds_like = Source(folder / LANGUAGES["en"].annotation, folder / PREPARED_DIR / "mask.nii.gz",
                     folder / PREPARED_DIR / "reliability.npy")
    for candidate in (shared_like, ds_like):
        if candidate.annotation.exists():
            return Source(candidate.annotation,
                          candidate.mask if candidate.mask.exists() else None,
                          candidate.reliability if candidate.reliability.exists() else None)
    raise MtbenchError(f"no English word annotation under {folder}: run `mtbench data fetch lpp-en --annotations-only` "
                       "or pass --source DIR laid out like a ds003643 root or like en/annotation/lppEN_word_information.csv")


def _read_truth(truth: Any) -> Any:
    if truth is None:
        return list(DEFAULT_TRUTH)
    if isinstance(truth, (str, Path)) and not str(truth).lstrip().startswith(("[", "{")):
        path = Path(truth)
        if not path.exists():
            raise MtbenchError(f"--truth {str(truth)!r} is neither JSON nor an existing file: give a JSON list of "
                               '{"parcel", "layer", "state"[, "model", "weight"]}')
        return path.read_text()
    return truth


def _geometry(source: Source, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str], str]:
    """Mask (3-D bool), parcels per voxel, split-half r per voxel, parcel names, and a provenance note."""
    import nibabel as nib

    labels_volume, names = harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)
    if source.mask is not None:
        img = nib.load(source.mask)
        if img.shape != MNI_4MM_SHAPE or not np.allclose(img.affine, MNI_4MM_AFFINE):
            raise MtbenchError(f"{source.mask} is not on the 4 mm grid {MNI_4MM_SHAPE} of the reference pipeline: "
                               "prepare the dataset again")
        mask = np.asarray(img.dataobj) > 0
    else:
        mask = labels_volume > 0
    parcels = labels_volume[mask].astype(np.int32)
    if source.reliability is not None:
        r = np.load(source.reliability)
        r = r.mean(0) if r.ndim == 2 else r
        if r.shape != (int(mask.sum()),):
            raise MtbenchError(f"{source.reliability} has {r.shape[-1]} voxels but the mask has {int(mask.sum())}: "
                               "use the mask and reliability of the same language")
        note = f"mean split-half r of {source.reliability.name}"
    else:
        r = np.random.default_rng([seed, 6]).uniform(*FALLBACK_RELIABILITY, parcels.size)
        note = f"fallback: r ~ uniform{FALLBACK_RELIABILITY} per voxel (no reliability map given)"
    return mask, parcels, np.asarray(r, dtype=np.float64), names, note


def _resolve_adapter(spec: Any):
    if isinstance(spec, str):
        return load_model(spec)
    return spec  # an adapter object (tests)


def simulate_lpp(out: Path | None = None, truth: Any = None, source: Path | None = None, seed: int = 0,
                 progress=None, **options) -> str:
    """Write a simulated ``lpp-en`` dataset directory.

    Parameters
    ----------
    out : Path, optional
        Output root (default: the ``lpp-en-sim`` cache folder). Replaced when complete.
    truth : JSON str, path of a JSON file, or list of dict
        ``[{"parcel": NAME or id, "layer": N, "state": STATE, "model": SPEC, "weight": W}, ...]``
        (``model`` defaults to option ``truth_model``, ``weight`` to 1); default the three
        planted parcels of the synthetic dataset.
    source : Path, optional
        Folder with the annotation, mask and reliability (see :func:`find_source`).
    seed : int
    progress : rich.progress.Progress, optional
    **options
        ``truth_model`` (default ``smollm2-135m``; a spec or an adapter object),
        ``scale`` (``full``, or ``tiny``: planted parcels + 2 null parcels only),
        ``snr_scale`` (multiplies every voxel's SNR, default 1),
        ``subjects`` (simulated subjects ``sim01``.. besides ``average``, default 0: :data:`SUBJECT_NOISE`;
        only the planted signal and the noise colour are written, each subject is composed when read).

    Returns
    -------
    str
        One line saying what was written.
    """

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown option {unknown[0]!r} for `data simulate lpp-en`: options are {', '.join(OPTIONS)}")
    scale = str(options.get("scale", "full"))
    if scale not in ("full", "tiny"):
        raise MtbenchError(f"option scale must be 'full' or 'tiny', got {scale!r}")
    try:
        snr_scale = float(options.get("snr_scale", 1.0))
    except (TypeError, ValueError):
        snr_scale = float("nan")
    if not (np.isfinite(snr_scale) and snr_scale > 0):
        raise MtbenchError(f"option snr_scale must be a positive number, got {options.get('snr_scale')!r}")
    try:
        n_subjects = int(options.get("subjects", 0))
    except (TypeError, ValueError):
        n_subjects = -1
    if not 0 <= n_subjects <= MAX_SUBJECTS:
        raise MtbenchError(f"option subjects must be an integer between 0 and {MAX_SUBJECTS}, got "
                           f"{options.get('subjects')!r}")
    seed = int(seed)
    out = Path(out) if out is not None else default_root("lpp-en-sim")
    writable_folder(out.parent)  # written beside it, then renamed: fail before the model and the simulation
    lang = LANGUAGES["en"]
    src = find_source(source)
    annotation = read_annotation(src.annotation)
    stimulus = make_stimulus(lang, annotation)

    mask, parcels, split_half_r, names, reliability_note = _geometry(src, seed)
    planted = parse_truth(_read_truth(truth), names, optional=("model", "weight"))
    default_model = options.get("truth_model", DEFAULT_TRUTH_MODEL)
    for p in planted:
        if not np.any(parcels == p.parcel_id):
            raise MtbenchError(f"truth parcel {p.parcel!r} has no voxel in the mask: plant another parcel")
    if scale == "tiny":
        planted_ids = {p.parcel_id for p in planted}
        nulls = [i for i in sorted(set(np.unique(parcels)) - {0} - planted_ids)][:TINY_NULL_PARCELS]
        keep_voxels = np.isin(parcels, sorted(planted_ids | set(nulls)))
        volume_index = np.flatnonzero(mask.ravel())[keep_voxels]
        mask = np.zeros(mask.shape, dtype=bool)
        mask.ravel()[volume_index] = True
        parcels, split_half_r = parcels[keep_voxels], split_half_r[keep_voxels]

    # Features of every planted (model, layer, state); cached on disk, so a later run reuses them.
    adapters, features = {}, {}
    for p in planted:
        spec = p.model or default_model
        key = spec if isinstance(spec, str) else getattr(spec, "name", "adapter")
        if key not in adapters:
            adapters[key] = _resolve_adapter(spec)
        adapter = adapters[key]
        if not 1 <= p.layer <= adapter.n_layers or p.state not in adapter.available_states():
            raise MtbenchError(f"truth plants L{p.layer} {p.state} in {p.parcel!r} but model {adapter.name} has layers "
                               f"1..{adapter.n_layers} and states {', '.join(adapter.available_states())}")
        p.model = key
    for key, adapter in adapters.items():
        mine = [p for p in planted if p.model == key]
        feats = word_features(adapter, stimulus, sorted({p.state for p in mine}), sorted({p.layer for p in mine}))
        for p in mine:
            features[p.parcel_id] = feats[(p.layer, p.state)]

    r = np.clip(split_half_r, *R_CLIP)
    snr = snr_scale * 2 * r / (1 - r)
    weights = np.zeros(parcels.size)
    for p in planted:
        weights[parcels == p.parcel_id] = p.weight
    planted_voxels = weights > 0
    # Only planted voxels carry signal: simulate them alone, then scatter.
    signal = planted_signal(stimulus, planted, lambda p: features[p.parcel_id], parcels[planted_voxels],
                            np.sqrt(snr[planted_voxels]), seed)
    phi = np.random.default_rng([seed, 3]).uniform(*AR1_PHI, parcels.size)
    effective_snr = weights * snr
    ceiling = np.sqrt(effective_snr / (1 + effective_snr))

    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / lang.annotation.parent).mkdir(parents=True)
    shutil.copyfile(src.annotation, partial / lang.annotation)
    prepared = partial / PREPARED_DIR
    task = progress.add_task("simulate lpp-en runs", total=len(stimulus.runs)) if progress is not None else None
    for k, run in enumerate(stimulus.runs):
        y = ar1_noise(np.random.default_rng([seed, 4, k]), run.n_scans, phi)
        y[:, planted_voxels] += signal[k]
        (prepared / "bold").mkdir(parents=True, exist_ok=True)
        np.save(prepared / "bold" / f"sub-average_run-{k + 1}.npy", y.astype(np.float32))
        if task is not None:
            progress.update(task, advance=1)

    models = {key: {"name": a.name, "revision": a.revision, "settings": a.settings()} for key, a in adapters.items()}
    truth_record = {
        "planted": [{"parcel": p.parcel, "parcel_id": p.parcel_id, "model": p.model, "layer": p.layer,
                     "state": p.state, "weight": p.weight, "n_voxels": int((parcels == p.parcel_id).sum())}
                    for p in planted],
        "null_parcels": "every other voxel of the mask (noise only)",
        "truth_models": models,
        "seed": seed,
        "scale": scale,
        "snr": "snr_scale * 2 r_v / (1 - r_v), r_v the voxel's mean split-half r clipped to "
               f"{list(R_CLIP)}; signal variance weight * snr_v",
        "snr_scale": snr_scale,
        "reliability": reliability_note,
        "directions": f"{N_DIRECTIONS} seeded random unit vectors in the span of the top {N_COMPONENTS} "
                      "principal components of the z-scored word features, mixed per voxel",
        "noise": f"AR(1), phi ~ uniform{AR1_PHI}, unit variance, independent across voxels and runs",
        "ceiling": "sqrt(w snr_v / (1 + w snr_v)) in planted voxels, 0 elsewhere",
        "simulation_version": SIMULATION_VERSION,
        "annotation_sha256": hashlib.sha256(src.annotation.read_bytes()).hexdigest()[:16],
    }
    info = {"subjects": ["average"], "n_scans": list(lang.n_scans), "simulated": True,
            "annotation_dropped": annotation.dropped}
    if n_subjects:  # absent otherwise: the average's files and version do not change
        write_subject_parts(prepared, signal, np.flatnonzero(planted_voxels), phi)
        info["subjects"] += subject_ids(n_subjects)
        info["simulated_subjects"] = {"n": n_subjects, "seed": seed, "noise_scale": float(np.sqrt(REAL_SUBJECTS))}
        truth_record["subjects"] = {"n": n_subjects, "noise": SUBJECT_NOISE}
    write_prepared(prepared, mask, MNI_4MM_AFFINE, parcels, split_half_r[None].astype(np.float32), info,
                   ceiling=ceiling, truth=truth_record)
    (partial / "dataset_description.json").write_text(json.dumps(
        {"Name": "Le Petit Prince (English), simulated BOLD by mtbench", "BIDSVersion": "1.6.0",
         "GeneratedBy": [{"Name": "mtbench data simulate lpp-en"}]}, indent=1))
    # Swap in the complete folder; an older simulation is removed only after.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    partial.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    n_planted = int(planted_voxels.sum())
    return (f"simulated lpp-en at {out}: {len(stimulus.runs)} runs, {sum(lang.n_scans)} scans, {parcels.size} voxels "
            f"({n_planted} planted in {len(planted)} parcels); read it with --dataset lpp-en-sim"
            + ("" if out == default_root("lpp-en-sim") else f" --dataset-option root={out}"))

