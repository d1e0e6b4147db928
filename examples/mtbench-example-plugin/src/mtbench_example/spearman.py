"""Spearman's rank correlation per voxel: Pearson r of the ranks."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from mtbench.encoding import pearson_r


def spearman_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Spearman rho between matching columns.

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_scans, n_voxels)

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        Ties get their average rank; 0 where a column is constant.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"spearman: shapes differ, {y_true.shape} vs {y_pred.shape}")
    return pearson_r(rankdata(y_true, axis=0), rankdata(y_pred, axis=0))
