"""Word-level features of a model, cached on disk.

The cache key is (model revision, extraction settings, stimulus fingerprint); each
(layer, state) is one ``.npy`` file of float16 word vectors for all runs concatenated,
plus a JSON index with the run lengths. A second run of the same model on the same
stimulus reads the cache instead of running the model.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .api import ModelAdapter, Stimulus
from .paths import atomic_write_bytes, cache_dir

FeatureSet = dict[tuple[int, str], list[np.ndarray]]


def _cache_folder(adapter: ModelAdapter, stimulus: Stimulus) -> Path:
    settings = json.dumps(adapter.settings(), sort_keys=True)
    key = hashlib.sha256(f"{adapter.revision}|{settings}|{stimulus.fingerprint()}".encode()).hexdigest()[:20]
    return cache_dir("features", adapter.name.replace("/", "_").replace(":", "_"), key)


def _file(folder: Path, layer: int, state: str) -> Path:
    return folder / f"L{layer:03d}_{state}.npy"


def word_features(
    adapter: ModelAdapter,
    stimulus: Stimulus,
    states: Sequence[str],
    layers: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
) -> FeatureSet:
    """Features of every requested (layer, state), from the cache when present.

    Parameters
    ----------
    adapter : ModelAdapter
    stimulus : Stimulus
    states : sequence of str
    layers : sequence of int
        1-based block numbers.
    progress : callable, optional
        Forwarded to ``adapter.extract``.
    use_cache : bool
        Read and write the on-disk cache.

    Returns
    -------
    dict
        ``(layer, state) -> [array (n_words_r, dim) per run]``, float32.
    """
    run_lengths = [len(r.words) for r in stimulus.runs]
    bounds = np.cumsum([0, *run_lengths])
    wanted = [(layer, state) for layer in layers for state in states]
    folder = _cache_folder(adapter, stimulus) if use_cache else None
    out: FeatureSet = {}
    missing = []
    for key in wanted:
        path = _file(folder, *key) if folder else None
        if path is not None and path.exists():
            try:
                flat = np.load(path).astype(np.float32)
            except (OSError, ValueError):  # a corrupt cache file is recomputed, not trusted
                flat = None
            if flat is not None and flat.shape[0] == bounds[-1]:
                out[key] = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
                continue
        missing.append(key)
    if missing:
        todo_states = [s for s in states if any(k[1] == s for k in missing)]
        todo_layers = [layer for layer in layers if any(k[0] == layer for k in missing)]
        extracted = adapter.extract(stimulus, todo_states, todo_layers, progress=progress)
        for key in missing:
            runs = extracted[key]
            if [r.shape[0] for r in runs] != run_lengths:
                raise RuntimeError(f"model {adapter.name} returned {[r.shape[0] for r in runs]} words per run "
                                   f"for {key}, expected {run_lengths}")
            # Stored as float16; return the same rounded values on a fresh extraction so
            # that a cached and an uncached run give identical numbers.
            flat = np.concatenate(runs).astype(np.float16)
            if not np.isfinite(flat).all():
                raise RuntimeError(f"model {adapter.name} gave non-finite or float16-overflowing values for {key}")
            out[key] = [flat[a:b].astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
            if folder is not None:
                buffer = io.BytesIO()
                np.save(buffer, flat)
                atomic_write_bytes(_file(folder, *key), buffer.getvalue())
    return out
