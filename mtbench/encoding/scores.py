"""What a nested fit returns, and how its held-out predictions are scored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MtbenchError


@dataclass
class EncodingResult:
    """Scores of a nested leave-one-run-out ridge fit.

    Attributes
    ----------
    test : ndarray, shape (n_voxels,)
        Mean over outer folds of the held-out-run score (Pearson r by default).
    validation : ndarray, shape (n_voxels,)
        Mean over outer folds of the inner-CV validation Pearson r at the chosen alpha.
        Use it to pick the best feature set without looking at test scores.
    alpha : ndarray, shape (n_voxels,)
        Geometric mean over outer folds of the chosen alpha.
    test_per_run : ndarray, shape (n_runs, n_voxels)
        Held-out score of each outer fold (row ``r``: test run ``r``).
    validation_per_run : ndarray, shape (n_runs, n_voxels)
        Inner-CV validation r at the chosen alpha of each outer fold (row ``r``: computed
        without run ``r``). Choosing between feature sets *within* an outer fold from this
        row, then scoring the choice on ``test_per_run[r]``, keeps the choice nested; the
        averaged ``validation`` uses every run and would leak into the test score.
    alpha_per_run : ndarray, shape (n_runs, n_voxels), optional
        The alpha chosen in each outer fold (without its test run).

    With ``outer_runs`` (see :func:`fit_nested_loro`) the rows of the outer folds that
    were not computed are NaN, and the means are over the computed folds only.
    """

    test: np.ndarray
    validation: np.ndarray
    alpha: np.ndarray
    test_per_run: np.ndarray
    validation_per_run: np.ndarray
    alpha_per_run: np.ndarray | None = None
    # Held-out predictions, one (n_scans_r, n_voxels) array per run (test run r's model never
    # saw run r); only with ``fit_nested_loro(..., return_predictions=True)``.
    predictions: list[np.ndarray] | None = None


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns (the default test score).

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_scans, n_voxels)

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        0 where either column is constant.
    """
    t = np.array(y_true, dtype=np.float64)  # float64 copies, centered in place
    p = np.array(y_pred, dtype=np.float64)
    t -= t.mean(0)
    p -= p.mean(0)
    # column sums of products without the (n_scans, n_voxels) temporaries: 1.7-2.4x faster
    denom = np.sqrt(np.einsum("ij,ij->j", t, t) * np.einsum("ij,ij->j", p, p))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.einsum("ij,ij->j", t, p) / denom
    return np.where(denom > 0, r, 0.0).astype(np.float32)


def score_per_voxel(score, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``score(y_true, y_pred)`` as float32, checked to give one value per voxel."""
    out = np.asarray(score(y_true, y_pred), dtype=np.float32)
    if out.shape != (y_true.shape[1],):
        raise MtbenchError(f"the score function returned shape {out.shape}, expected ({y_true.shape[1]},) "
                           "(one value per voxel)")
    return out


def nearest_alpha(values: np.ndarray, alpha_grid: np.ndarray) -> np.ndarray:
    """Index in ``alpha_grid`` of the alpha nearest (in log) to each of ``values`` (any shape, > 0)."""
    log_values = np.log(np.where(values > 0, values, np.nan))
    return np.abs(np.log(alpha_grid).reshape(-1, *[1] * log_values.ndim) - log_values).argmin(0)
