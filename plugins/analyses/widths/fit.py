"""Width-matched fits: a state reduced to a common number of features before its nested ridge fit.

States differ in width (SmolLM2: k and v 192, most 576, ``ffn_activated_state`` 1,536), and a
wider state can win a voxel by capacity rather than content. Reducing every state to the
same width ``k`` before the fit asks what its best ``k`` directions carry:

- ``pca``: the top ``k`` principal directions of the state's features **on the training runs
  of each outer fold only** (the test run is then projected on them, never used to find
  them); the inner validation runs are training runs of that fold, so they share its
  directions. No rescaling: the ridge sees the state's own geometry restricted to those
  directions.
- ``random``: a Gaussian random projection (Johnson-Lindenstrauss; seeded, independent of
  the data, so the same for every fold), scaled by ``1/sqrt(k)``.

A state of width ``k`` or less is fitted as it is (a rotation would change no ridge score).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError

#: Per-fold arrays of a fit, as :class:`mtbench.encoding.EncodingResult` has them.
PER_RUN = ("test_per_run", "validation_per_run", "alpha_per_run")


def pca_directions(train_runs: Sequence[np.ndarray], width: int) -> np.ndarray:
    """The top ``width`` principal directions of the rows of ``train_runs`` (each (n_scans_r, d)), shape (d, width).

    Eigenvectors of the (d, d) scatter matrix in float64, largest eigenvalues first; the sign
    of each made deterministic (largest absolute entry positive).
    """
    x = np.concatenate(train_runs).astype(np.float64)
    x -= x.mean(0)
    values, vectors = np.linalg.eigh(x.T @ x)
    top = vectors[:, np.argsort(values)[::-1][:width]]
    flip = np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(top.shape[1])])
    return (top * np.where(flip == 0, 1, flip)).astype(np.float32)


def random_directions(dim: int, width: int, seed: int) -> np.ndarray:
    """A Gaussian random projection, shape (dim, width), scaled by ``1/sqrt(width)``."""
    rng = np.random.default_rng([seed, dim, width])
    return (rng.standard_normal((dim, width)) / np.sqrt(width)).astype(np.float32)


def fit_matched(x_runs: Sequence[np.ndarray], y_runs: Sequence[np.ndarray], alphas, width: int, *,
                reduction: str = "pca", seed: int = 0, **options) -> dict[str, np.ndarray]:
    """Nested leave-one-run-out ridge of ``x_runs`` reduced to ``width`` features (see the module docstring).

    Parameters
    ----------
    x_runs : list of ndarray, each shape (n_scans_r, n_features)
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    alphas : sequence of float
    width : int
        Features kept (>= 1).
    reduction : {"pca", "random"}
    seed : int
        Seed of the random projection.
    **options
        As :func:`mtbench.encoding.fit_nested_loro` (``backend``, ``score``, ``precision``,
        ``shared_alpha``, ``inner``).

    Returns
    -------
    dict
        ``test_per_run``, ``validation_per_run``, ``alpha_per_run``: ndarray, each shape
        (n_runs, n_voxels).
    """
    if width < 1:
        raise MtbenchError(f"--width must be at least 1, got {width}")
    dim = x_runs[0].shape[1]
    if dim <= width:
        return _per_run(fit_nested_loro(x_runs, y_runs, alphas, **options))
    if reduction == "random":
        proj = random_directions(dim, width, seed)
        return _per_run(fit_nested_loro([x @ proj for x in x_runs], y_runs, alphas, **options))
    if reduction != "pca":
        raise MtbenchError(f"unknown --reduction {reduction!r}: choose pca or random")
    n_runs = len(x_runs)
    out = {name: np.full((n_runs, y_runs[0].shape[1]), np.nan, np.float32) for name in PER_RUN}
    for o in range(n_runs):  # the directions of outer fold o: from the other runs only
        proj = pca_directions([x for r, x in enumerate(x_runs) if r != o], width)
        result = fit_nested_loro([x @ proj for x in x_runs], y_runs, alphas, outer_runs=[o], **options)
        for name in PER_RUN:
            out[name][o] = getattr(result, name)[o]
    return out


def _per_run(result) -> dict[str, np.ndarray]:
    return {name: np.asarray(getattr(result, name), dtype=np.float32) for name in PER_RUN}
