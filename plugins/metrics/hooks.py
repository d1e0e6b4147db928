"""Per-voxel encoding scores: Pearson r (the field's standard) and R² (explained variance)."""

from __future__ import annotations

import numpy as np

from mtbench.api import MetricEntry
from mtbench.encoding import (
    pearson_r as encoding_pearson_r,  # one implementation, numpy only
)
from mtbench.hookspecs import hookimpl


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r between columns.

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_scans, n_voxels)

    Returns
    -------
    ndarray, shape (n_voxels,)
        0 where either column is constant (no defined correlation).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"pearson: shapes differ, {y_true.shape} vs {y_pred.shape}")
    return encoding_pearson_r(y_true, y_pred)


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination between columns, 1 - SS_res / SS_tot (negative when the
    prediction is worse than the held-out run's own mean).

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_scans, n_voxels)

    Returns
    -------
    ndarray, shape (n_voxels,)
        0 where ``y_true`` is constant (no variance to explain).
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"r2: shapes differ, {y_true.shape} vs {y_pred.shape}")
    total = ((y_true - y_true.mean(0)) ** 2).sum(0)
    residual = ((y_true - y_pred) ** 2).sum(0)
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 1.0 - residual / safe, 0.0).astype(np.float32)


@hookimpl
def register_metrics():
    return [MetricEntry(name="pearson", summary="Pearson r per voxel on held-out runs", score=pearson_r),
            MetricEntry(name="r2", summary="R² (1 - SS_res/SS_tot) per voxel on held-out runs", score=r2)]
