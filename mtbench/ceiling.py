"""Noise ceilings: from split-half reliability to the highest r a model can reach, and r normalized by it.

Convention: ``Dataset.noise_ceiling`` returns the ceiling in units of r (the correlation a
perfect model of the repeatable signal would reach with the data), per voxel. A dataset
that knows a split-half reliability ``r_half`` (the correlation of the averages of two
halves of the subjects, or of two halves of the repetitions) converts it with
:func:`ceiling_from_split_half`: Spearman-Brown gives the reliability of the full average,
``rho = 2 r_half / (1 + r_half)``, and the highest correlation of any prediction with
data of reliability ``rho`` is ``sqrt(rho)``.

Normalized scores: per voxel ``r / ceiling`` (:func:`normalize_by_ceiling`), undefined (NaN)
where the ceiling is too small to divide by; per parcel the summary divides the parcel-mean
r by the parcel-mean ceiling (stabler than averaging per-voxel ratios, which a few voxels
with tiny ceilings dominate).
"""

from __future__ import annotations

import numpy as np

from .errors import MtbenchError

__all__ = ["MIN_CEILING", "ceiling_from_split_half", "normalize_by_ceiling"]

# Below this ceiling a voxel has no repeatable signal to speak of: its normalized r is NaN.
MIN_CEILING = 0.05


def ceiling_from_split_half(split_half_r: np.ndarray) -> np.ndarray:
    """Noise ceiling (in r) from split-half reliability, Spearman-Brown corrected.

    Parameters
    ----------
    split_half_r : ndarray, shape (n_voxels,)
        Correlation between the two halves' averages, per voxel.

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        ``sqrt(2 r / (1 + r))``, 0 where ``r <= 0``.

    Raises
    ------
    MtbenchError
        NaN or values outside [-1, 1].
    """
    r = np.asarray(split_half_r, dtype=np.float64)
    if not np.isfinite(r).all() or (np.abs(r) > 1 + 1e-6).any():
        raise MtbenchError("split-half reliability must be finite correlations in [-1, 1]; "
                           "recompute it (mtbench prepare) or mask out the bad voxels")
    r = np.clip(r, 0.0, 1.0)
    return np.sqrt(2 * r / (1 + r)).astype(np.float32)


def normalize_by_ceiling(scores: np.ndarray, ceiling: np.ndarray, min_ceiling: float = MIN_CEILING) -> np.ndarray:
    """Scores divided by the noise ceiling.

    Parameters
    ----------
    scores : ndarray, shape (..., n_voxels)
        Raw r (e.g. test scores of several fits).
    ceiling : ndarray, shape (n_voxels,)
        Noise ceiling in r units.
    min_ceiling : float
        Voxels whose ceiling is below this get NaN.

    Returns
    -------
    ndarray, shape (..., n_voxels), float32
    """
    scores = np.asarray(scores, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    if ceiling.shape != scores.shape[-1:]:
        raise MtbenchError(f"noise ceiling has shape {ceiling.shape}, expected ({scores.shape[-1]},) voxels; "
                           "the dataset's ceiling does not match its mask")
    ok = np.isfinite(ceiling) & (ceiling >= min_ceiling)
    out = np.full(scores.shape, np.nan)
    np.divide(scores, ceiling, out=out, where=np.broadcast_to(ok, scores.shape))
    return out.astype(np.float32)
