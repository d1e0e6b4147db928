"""Pearson correlation per voxel, the field's standard encoding score."""

from __future__ import annotations

import numpy as np

from mtbench.api import MetricEntry
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
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"pearson: shapes differ, {y_true.shape} vs {y_pred.shape}")
    t = y_true - y_true.mean(0)
    p = y_pred - y_pred.mean(0)
    denom = np.sqrt((t * t).sum(0) * (p * p).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (t * p).sum(0) / denom
    return np.where(denom > 0, r, 0.0).astype(np.float32)


@hookimpl
def register_metrics():
    return [MetricEntry(name="pearson", summary="Pearson r per voxel on held-out runs", score=pearson_r)]
