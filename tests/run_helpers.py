"""Helpers for tests that run `mtbench run` on tiny models: count (or interrupt) an inner call,
read a run's per-voxel table."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from mtbench.settings import RunSettings
from mtbench_plugins.models.hf.tiny import save_tiny_llama


class Interrupted(Exception):
    """Raised by :func:`count_calls` in place of the ``stop_after + 1``-th call."""


def count_calls(monkeypatch, module, name: str, stop_after: int | None = None) -> list[int]:
    """Patch ``module.name`` to count its calls (and raise :class:`Interrupted` after ``stop_after``).

    Returns
    -------
    list
        One entry per completed call.
    """
    current = getattr(module, name)
    real = getattr(current, "__wrapped__", current)  # counting again replaces an earlier count
    calls = []

    def counted(*args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupted(f"{name} interrupted")
        calls.append(1)
        return real(*args, **kwargs)

    counted.__wrapped__ = real
    monkeypatch.setattr(module, name, counted)
    return calls


def voxel_table(run_dir):
    """A run's ``voxels.parquet`` as a DataFrame in (layer, state, voxel) order."""
    return pq.read_table(run_dir / "voxels.parquet").to_pandas().sort_values(["layer", "state", "voxel"],
                                                                               ignore_index=True)


def tiny_run_settings(tmp_path, monkeypatch, states: list[str], planted: str, permutations: int) -> RunSettings:
    """A 2-layer tiny Llama on the tiny synthetic dataset (Heschl's gyrus planted at layer 2,
    state ``planted``), 3 alphas, with its own ``MTBENCH_CACHE`` under ``tmp_path``."""
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    model = save_tiny_llama(tmp_path / "tiny-llama", seed=0, n_layers=2)
    truth = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 2, "state": planted}]
    return RunSettings(model=f"hf:{model}", dataset="synthetic", states=states, layers="all",
                       alphas=[1.0, 1e2, 1e4], permutations=permutations,
                       dataset_options={"scale": "tiny", "truth_model": f"hf:{model}", "truth": json.dumps(truth)})
