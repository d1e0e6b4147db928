"""Pearson correlation per voxel, the field's standard encoding score."""

from __future__ import annotations

import numpy as np

from mtbench.api import MetricEntry
from mtbench.encoding import pearson_r as encoding_pearson_r  # one implementation, numpy only
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


@hookimpl
def register_metrics():
    return [MetricEntry(name="pearson", summary="Pearson r per voxel on held-out runs", score=pearson_r)]
