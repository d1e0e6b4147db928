"""Which runs each fold of a nested leave-one-run-out fit trains and validates on.

Outer fold ``o`` holds run ``o`` out for testing. Inside it, ``inner="loro"`` validates on
every other run in turn (training on the rest); ``inner="first"`` (MindTransformer's protocol)
validates on the first run that is not ``o`` only. Every inner training set is "all runs but
two", so it is named by its left-out pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..errors import MtbenchError


def first_validation_run(o: int) -> int:
    """``inner="first"``: the validation run of outer fold ``o`` (the first run that is not ``o``)."""
    return 1 if o == 0 else 0


def inner_pairs(n_runs: int, inner: str, outer: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Left-out pairs ``(i, j)`` whose training set (all runs but i and j) some inner fold uses.

    ``loro``: every pair. ``first``: the pairs ``(0, o)`` only (outer ``o`` validated on run 0,
    and ``(0, 1)`` also serves outer 0 validated on run 1). With ``outer``, only the pairs
    that contain one of those outer folds.
    """
    pairs = list(itertools.combinations(range(n_runs), 2))
    pairs = pairs if inner == "loro" else [p for p in pairs if 0 in p]
    return pairs if outer is None else [p for p in pairs if p[0] in outer or p[1] in outer]


def check_outer(outer_runs: Sequence[int] | None, n_runs: int) -> list[int]:
    """``outer_runs`` as a sorted list of distinct run indices (all runs when None)."""
    if outer_runs is None:
        return list(range(n_runs))
    outer = sorted({int(o) for o in outer_runs})
    if not outer or outer[0] < 0 or outer[-1] >= n_runs:
        raise MtbenchError(f"outer_runs {list(outer_runs)} must name test runs among 0..{n_runs - 1}")
    return outer


def inner_splits(sizes: Sequence[int], o: int, inner: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inner folds of outer fold ``o`` as (train, validation) row indices of its training runs.

    Parameters
    ----------
    sizes : sequence of int, shape (n_runs,)
        Scans per run.
    o : int
        The outer fold's test run.
    inner : {"loro", "first"}

    Returns
    -------
    list of (ndarray, ndarray)
        Row indices into the training runs (all runs but ``o``) concatenated in order, one
        pair per inner fold: the ``cv`` of himalaya's ``*CV`` estimators.
    """
    train = [r for r in range(len(sizes)) if r != o]
    edges = np.concatenate([[0], np.cumsum([sizes[r] for r in train])])
    everything = np.arange(edges[-1])
    validated = range(len(train)) if inner == "loro" else [train.index(first_validation_run(o))]
    return [(np.setdiff1d(everything, np.arange(edges[k], edges[k + 1])), np.arange(edges[k], edges[k + 1]))
            for k in validated]
