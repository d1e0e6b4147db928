"""Datasets: the embedded synthetic default."""
