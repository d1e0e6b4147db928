"""Metrics: per-voxel scores of held-out predictions."""
