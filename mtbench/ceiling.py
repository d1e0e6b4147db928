"""Noise ceilings: split-half reliability across subjects, the ceiling it implies, and r normalized by it.

Split the subjects at random into two halves, average each half's BOLD, and correlate the two
averages voxel by voxel; repeat for several random splits (:func:`split_half_reliability`).
The group average of all subjects is more reliable than either half: Spearman-Brown gives its
reliability, ``rho = 2 r_half / (1 + r_half)``, and the highest correlation any prediction can
reach with data of reliability ``rho`` is ``sqrt(rho)`` (:func:`ceiling_from_split_half`).

Convention: ``Dataset.noise_ceiling`` returns the ceiling in units of r, per voxel.
Normalized scores: per voxel ``r / ceiling`` (:func:`normalize_by_ceiling`), undefined (NaN)
where the ceiling is too small to divide by; per parcel the summary divides the parcel-mean
r by the parcel-mean ceiling (stabler than averaging per-voxel ratios, which a few voxels
with tiny ceilings dominate).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import MtbenchError

__all__ = ["MIN_CEILING", "ceiling_from_split_half", "normalize_by_ceiling", "random_halves",
           "split_half_reliability"]

# Below this ceiling a voxel has no repeatable signal to speak of: its normalized r is NaN.
MIN_CEILING = 0.05


def random_halves(n_subjects: int, n_splits: int, seed: int = 0) -> np.ndarray:
    """Random split-halves of the subjects.

    Returns
    -------
    ndarray of bool, shape (n_splits, n_subjects)
        True = first half (``n_subjects // 2`` subjects), False = second half.
    """
    if n_subjects < 2:
        raise MtbenchError(f"split-half reliability needs at least 2 subjects, got {n_subjects}; fetch more subjects")
    rng = np.random.default_rng(seed)
    halves = np.zeros((n_splits, n_subjects), dtype=bool)
    for s in range(n_splits):
        halves[s, rng.permutation(n_subjects)[: n_subjects // 2]] = True
    return halves


def split_half_reliability(
    load_run: Callable[[int, int], np.ndarray],
    n_subjects: int,
    n_runs: int,
    n_splits: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Per-voxel correlation between the average BOLD of two random halves of the subjects.

    Streams the data: each (subject, run) is loaded once, and memory holds one run's sums
    (``n_splits`` float32 and 3 float64 arrays of shape (n_scans_r, n_voxels)), whatever the
    number of subjects.

    Parameters
    ----------
    load_run : callable
        ``load_run(subject_index, run_index) -> ndarray (n_scans_r, n_voxels)``; the same
        ``n_scans_r`` for every subject of a run.
    n_subjects, n_runs : int
    n_splits : int
        Random splits (rows of the result).
    seed : int
        Decides the splits.

    Returns
    -------
    ndarray, shape (n_splits, n_voxels), float32
        Pearson r over all scans of all runs (each run centred on its own mean) between the
        two halves' averages, per split and voxel; 0 where either average is constant.
    """
    halves = random_halves(n_subjects, n_splits, seed)
    n_first = halves.sum(1)[:, None]  # (n_splits, 1)
    n_second = n_subjects - n_first
    sums = None  # running sums over runs of ab, a^2, b^2 per split and voxel
    for run in range(n_runs):
        total = first = None
        for subject in range(n_subjects):
            y = np.asarray(load_run(subject, run), dtype=np.float64)
            if total is None:
                total = np.zeros_like(y)
                first = np.zeros((n_splits, *y.shape), dtype=np.float32)  # half sums, float32 to halve memory
            elif y.shape != total.shape:
                raise MtbenchError(f"subject {subject + 1} run {run + 1} has shape {y.shape}, others {total.shape}: "
                                   "every subject needs the same scans and voxels; re-prepare the dataset")
            total += y
            first[halves[:, subject]] += y
        run_sums = np.zeros((3, n_splits, total.shape[1]))
        for s in range(n_splits):  # one split at a time: two (n_scans, n_voxels) arrays in memory
            a = first[s] / n_first[s]
            b = (total - first[s]) / n_second[s]
            a -= a.mean(0)
            b -= b.mean(0)
            run_sums[:, s] = (a * b).sum(0), (a * a).sum(0), (b * b).sum(0)
        sums = run_sums if sums is None else sums + run_sums
    ab, aa, bb = sums
    denominator = np.sqrt(aa * bb)
    r = np.divide(ab, denominator, out=np.zeros_like(ab), where=denominator > 0)
    return r.astype(np.float32)


def ceiling_from_split_half(split_half_r: np.ndarray) -> np.ndarray:
    """Noise ceiling (in r) of the all-subject average from split-half reliability.

    Parameters
    ----------
    split_half_r : ndarray, shape (n_splits, n_voxels) or (n_voxels,)
        Correlation between the two halves' averages, per voxel (and per random split).

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        ``sqrt(2 r / (1 + r))`` with ``r`` the mean over splits, 0 where ``r <= 0``.

    Raises
    ------
    MtbenchError
        NaN or values outside [-1, 1].
    """
    r = np.asarray(split_half_r, dtype=np.float64)
    if not np.isfinite(r).all() or (np.abs(r) > 1 + 1e-6).any():
        raise MtbenchError("split-half reliability must be finite correlations in [-1, 1]; "
                           "recompute it (mtbench data prepare) or mask out the bad voxels")
    if r.ndim == 2:
        r = r.mean(0)
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
