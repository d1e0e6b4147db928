"""Voxelwise ridge encoding models scored by nested leave-one-run-out cross-validation.

For every outer fold one run is held out as the test run. On the remaining runs an inner
leave-one-run-out picks the ridge penalty (per voxel, or one shared by all voxels) that
maximizes the mean validation Pearson r; the model is then refit on all training runs
with the chosen penalties and predicts the test run. The test run never takes part in the
choice of alpha nor in any fit of its own outer fold.
``inner="first"`` (MindTransformer's protocol) replaces the inner leave-one-run-out by a
single inner fold: validation on the first run that is not the test run, training on the
others; only the C(n_runs, 2) pair folds that contain run 0 are then decomposed.

How the work is shared (this is what makes the fit fast on a CPU):

- One eigendecomposition per training set serves every alpha: with ``S = diag(s)`` the
  eigenvalues of the training Gram matrix, the ridge prediction of a run ``v`` for
  penalty ``a`` is ``B_v (S + a I)^-1 Z`` where ``Z`` (projected targets) and ``B_v``
  (projected inputs of run ``v``) do not depend on ``a``.
- Kernel form (``K = X_T X_T^T``, size n_train) when n_features > n_train, feature form
  (``X_T^T X_T``, size n_features) otherwise: the eigenbasis is never larger than needed.
- Inner folds come in pairs: the training set of "outer o, inner i" equals that of
  "outer i, inner o" (all runs but o and i), so each of the C(n_runs, 2) training sets
  is decomposed once and validated on both left-out runs (``inner="first"``: only on the
  run that protocol validates on).
- X'Y is computed once per run and voxel block; every feature-form training set (inner
  pairs and outer refits) takes its ``Z = E^T (X'Y_all - X'Y_left_out)`` from those
  sums instead of projecting its own targets.
- Validation predictions are never stored: one product ``[B w_a1; B w_a2; ...] @ z`` per
  pair fold and block of voxels (every alpha's scaled inputs stacked, made once per pair
  fold and chunk of voxels) gives the norms of the centered predictions of every alpha; the numerator of Pearson r needs no
  predictions at all: ``<B_v (w_a * z), y_v> = sum_k w_a[k] (B_v^T y_v)[k] z[k]``, one
  small product for all alphas.
- One alpha per outer fold (``shared_alpha``, the MindTransformer protocol, or given alphas
  equal across voxels): the ridge solution of a training set for one alpha is one linear map,
  so the predictions of a run are ``T @ rhs`` with ``T = B_v (S + a I)^-1 E^T`` (n_v x p,
  made once per fold and alpha) and ``rhs`` the training set's X'Y or targets: no projected
  targets ``Z`` at all, and the refit is one Cholesky solve per outer fold (its test map taken
  to kernel form, ``T X_T^T`` on the training runs' BOLD, where that costs fewer multiply-adds
  than the X'Y pass it replaces: from d ~ 1,250 at LPP scale). The alphas are
  first swept on an evenly spaced subset of ``_NOMINATION_VOXELS`` voxels; only those whose
  subset mean r is within ``_NOMINATION_Z`` standard errors of the leader's (9-12 of 16 at
  LPP scale, where the voxel-mean r is flat around its maximum) are then validated on every
  voxel, exactly, in float32, and the best of those is refit. With one validation per outer
  fold (``inner="first"``) in feature form, the nominated alphas' maps are kept from the
  subset sweep (never made twice), all of them are swept over the other voxels in one pass
  (one X'Y per voxel chunk), and that pass goes in rounds of 1,024 voxels cut from evenly
  spaced strides of the voxels: after each round the same rule, on every voxel swept so far,
  drops the candidates that can no longer win (9-12 -> 2-5 by the last round). In kernel form
  (n_v x n_train per map), the maps that do not fit beside the kept ones are made again in
  groups, each narrowed in turn. The choice and the scores are those of the full sweep
  (tested). Measured at LPP scale (d = 1,536, 25,870 voxels, MindTransformer protocol): 41 s
  instead of 81 s for the full sweep on a 2-core AVX2 machine; kept maps and rounds then took
  it from 19.0 to 15.0 s on a 2-core AVX-512 one; in kernel form, d = 4,096 went from 40 to
  29-32 s on an EPYC Zen 4.
- One pass over chunks of voxels (alpha per voxel): validate, choose the alpha and refit
  every outer fold for the chunk, then the next chunk. Nothing of size
  n_alphas x n_scans x n_voxels exists, and the held-out predictions go chunk by chunk
  to ``on_predictions`` (significance) instead of being kept. When the pair folds'
  eigenbases exceed ``_GROUP_BYTES`` (wide features, kernel form), they are made in
  groups, each used over all voxels, and the refit takes a second pass.

Cost: the per-alpha products dominate: n_alphas x n_runs x (n_runs - 1) x n_val_scans x
min(n_train_scans, n_features) multiply-adds per voxel. That is the floor for exact
per-alpha validation scores. Measured on a quiet 2-core AVX-512 (AMX) machine, 9 runs
x 2,816 scans, 25,870 voxels, 9 alphas, float32, with the 1,000 null columns of
``mtbench run`` (``benchmarks/encoding.py``, table in ``docs/encoding.md``): 36.5 s at
d = 576, 119 s at 1,536, 176-177 s in kernel form (4,096 and 14,336), 1.16-1.28x the dense
floor; the MindTransformer protocol (one inner fold, shared alpha, 16 alphas) 5.5, 15.2,
27.2 and 27.8 s. Peak resident memory 2.0-2.8x the data (X and Y); at d = 4,096 with alpha per
voxel 3.01x there, 2.90x since the heap is handed back before every refit block (measured on an
EPYC Zen 4 host, where the GEMM runs at half the rate). On that host, with the product widths a
multiple of 64 and the shared-alpha refit and narrowing in kernel form (2026-12-06): 56.3, 170.6,
271.1 and 282.1 s; the MindTransformer protocol 7.3, 20.9, 32.1 and 35.8 s; 1.87-2.72x the data.
At the shape of the default run (4 runs of 86-90 scans, 16,471 voxels): ~0.4 s per
call with 9 alphas in ``mixed``.

``precision="mixed"`` (opt-in here; ``mtbench run`` uses it by default where the hardware
multiplies bfloat16 natively) computes only those per-alpha norm products from
bfloat16 inputs (float32 accumulation); eigendecompositions, projections, the Pearson
numerators, the refit, the test predictions and scores stay as with ``float32``. The
products give the increments between consecutive (sorted) alphas, summed in float32, so
that rounding errors which differ between alphas stay proportional to the change of the
alpha's weights and rarely reorder neighbouring alphas. Measured at that shape: the
alpha sweep (products, running sums, norms) 2.1-2.2x faster (the bfloat16 products
alone ~830 vs ~200 GFLOP/s), per call 0.36-0.38 s with 9 alphas (1.55x) and 0.48-0.50 s
with 17 (1.8x). Accuracy against ``float32`` on synthetic data of that shape (random
features, correlated or not, signal planted in 40% of the voxels, noise):

- validation r per outer fold: max |delta| 2.2e-3, 99th percentile 8e-4 (iid features:
  5e-4 / 2.4e-4); the voxel mean moves by < 2e-5;
- chosen alpha differs in 0.2-0.4% of the voxel-folds with correlated features (0.8-1.6%
  of the voxels' mean alphas), 0.2-6.9% with iid features (flat r curves; the most with
  17 alphas and d = 1,536); per-alpha rounding without the running sums: 2-7% and 14-40%;
- test r: identical wherever the fold's alpha is the same (99th percentile |delta| 0 to
  7e-4), but a flipped near-tie moves that fold's test r by up to 0.3 (noise voxels):
  0.1-0.5% of the voxel-folds move by more than 2e-3, max |delta| of the fold-averaged
  test r 0.015-0.08, voxel mean < 3e-5.

For comparison, float32 against float64 (d = 576, 17 alphas) changes 0.05% of the
choices, test r by <= 2.5e-4. Because of the near-tie flips ``float32`` stays this function's
default (and the MindTransformer protocol's).

Why not himalaya: ``backend="himalaya"`` runs ``himalaya.kernel_ridge.KernelRidgeCV``
(torch backend, run-wise inner splits, correlation score) per outer fold; it is kept as
an independent cross-check (the tests compare the two; both give the same scores to
float32 precision). Measured on the 2-core box at 4 runs x 80 scans, 15,000 voxels,
17 alphas, d = 192 / 576 / 1,536, per ``fit_nested_loro`` call: himalaya 4.1-5.3 s with
2 threads (1.0-1.3 s per outer fold), 7-8 s with 1; this implementation 0.72-0.76 s with
2 threads, 1.2-1.25 s with 1. himalaya decomposes each inner training set twice (once
per outer fold that contains it), materializes and z-scores an
n_alphas x n_val x n_voxels prediction block per split, and pays its score function on
every prediction instead of on two small products.

Inputs are expected z-scored per run (as :func:`mtbench.alignment.align_runs` and the
runner provide them): the ridge has no intercept.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MtbenchError

__all__ = ["EncodingResult", "effective_precision", "fit_nested_loro", "on_gpu", "pearson_r"]

BACKENDS = ("torch", "torch_cuda", "himalaya", "himalaya_cuda")
PRECISIONS = ("float32", "mixed")
INNERS = ("loro", "first")


def on_gpu(backend: str) -> bool:
    """Whether a ridge backend (one of ``BACKENDS``) fits on the CUDA GPU."""
    return backend.endswith("_cuda")


# Eigendecompositions up to this size run in float64 (cheap there, and exact enough that
# float32 only enters the large products); larger ones in float32 (float64 eigh of a
# 2,000 x 2,000 matrix costs seconds per fold on 2 cores).
_FLOAT64_EIGH_MAX = 1024
# Voxels per block: the validation product of one pair fold, (rows x n_alphas*block) float32,
# stays under _BLOCK_BYTES (cache-sized, and small beside the data), at most _MAX_BLOCK voxels,
# and is a multiple of _MIN_BLOCK: the products' output width is the block, and widths that are
# not a multiple of 8 ran 15-35% slower (e.g. 10,016 x 1,536 x 209: 116 GFLOP/s, x 208: 174, on
# an EPYC Zen 4; the block had been 209 at LPP scale).
_BLOCK_BYTES = 8 * 2**20
_MAX_BLOCK = 512
_MIN_BLOCK = 64
# Voxels per chunk: its per-run X'Y products and refit temporaries stay under this many bytes.
_CHUNK_BYTES = 64 * 2**20
# Bytes of pair-fold eigenbases and inputs held at once (see the groups in _fit_torch).
_GROUP_BYTES = 128 * 2**20
# Shared alpha: candidates are swept first on this many evenly spaced voxels (fits of at least
# 4 times as many), and kept when within _NOMINATION_Z standard errors of the leader.
_NOMINATION_VOXELS = 2048
_NOMINATION_Z = 6.0
# Below this many floating-point operations a fit runs on one thread.
_SMALL_FLOPS = 1e9


@dataclass
class EncodingResult:
    """Scores of a nested leave-one-run-out ridge fit.

    Attributes
    ----------
    test : ndarray, shape (n_voxels,)
        Mean over outer folds of the held-out-run score (Pearson r by default).
    validation : ndarray, shape (n_voxels,)
        Mean over outer folds of the inner-CV validation Pearson r at the chosen alpha.
        Use it to pick the best feature set without looking at test scores.
    alpha : ndarray, shape (n_voxels,)
        Geometric mean over outer folds of the chosen alpha.
    test_per_run : ndarray, shape (n_runs, n_voxels)
        Held-out score of each outer fold (row ``r``: test run ``r``).
    validation_per_run : ndarray, shape (n_runs, n_voxels)
        Inner-CV validation r at the chosen alpha of each outer fold (row ``r``: computed
        without run ``r``). Choosing between feature sets *within* an outer fold from this
        row, then scoring the choice on ``test_per_run[r]``, keeps the choice nested; the
        averaged ``validation`` uses every run and would leak into the test score.
    alpha_per_run : ndarray, shape (n_runs, n_voxels), optional
        The alpha chosen in each outer fold (without its test run).

    With ``outer_runs`` (see :func:`fit_nested_loro`) the rows of the outer folds that
    were not computed are NaN, and the means are over the computed folds only.
    """

    test: np.ndarray
    validation: np.ndarray
    alpha: np.ndarray
    test_per_run: np.ndarray
    validation_per_run: np.ndarray
    alpha_per_run: np.ndarray | None = None
    # Held-out predictions, one (n_scans_r, n_voxels) array per run (test run r's model never
    # saw run r); only with ``fit_nested_loro(..., return_predictions=True)``.
    predictions: list[np.ndarray] | None = None


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns (the default test score).

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_scans, n_voxels)

    Returns
    -------
    ndarray, shape (n_voxels,), float32
        0 where either column is constant.
    """
    t = np.array(y_true, dtype=np.float64)  # float64 copies, centered in place
    p = np.array(y_pred, dtype=np.float64)
    t -= t.mean(0)
    p -= p.mean(0)
    # column sums of products without the (n_scans, n_voxels) temporaries: 1.7-2.4x faster
    denom = np.sqrt(np.einsum("ij,ij->j", t, t) * np.einsum("ij,ij->j", p, p))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.einsum("ij,ij->j", t, p) / denom
    return np.where(denom > 0, r, 0.0).astype(np.float32)


def fit_nested_loro(
    X_runs: Sequence[np.ndarray],
    Y_runs: Sequence[np.ndarray],
    alphas: Sequence[float] | np.ndarray,
    *,
    backend: str = "torch",
    score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    shared_alpha: bool = False,
    device: str = "cpu",
    precision: str = "float32",
    inner: str = "loro",
    outer_runs: Sequence[int] | None = None,
    on_refit: Callable[[int, int, int, np.ndarray], None] | None = None,
    return_predictions: bool = False,
    on_predictions: Callable[[int, int, list[np.ndarray]], None] | None = None,
    alpha_per_run: np.ndarray | None = None,
) -> EncodingResult:
    """Fit ridge encoding models with nested leave-one-run-out cross-validation.

    Parameters
    ----------
    X_runs : list of ndarray, each shape (n_scans_r, n_features)
        Features per run, z-scored per run.
    Y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
        fMRI responses per run, z-scored per run. At least 3 runs.
    alphas : sequence of float, shape (n_alphas,)
        Candidate ridge penalties (positive). Ties go to the first one listed.
    backend : {"torch", "torch_cuda", "himalaya", "himalaya_cuda"}
        ``torch``: the shared-eigenbasis implementation on ``device``; ``torch_cuda``:
        the same on ``cuda``; ``himalaya``: ``KernelRidgeCV`` per outer fold (slower,
        for cross-checks) with himalaya's ``torch`` backend; ``himalaya_cuda``: the same
        with its ``torch_cuda`` backend.
    score : callable, optional
        ``score(y_true, y_pred) -> (n_voxels,)`` on numpy arrays of shape
        (n_scans_test, n_voxels), used for the test score only. Default: Pearson r.
        The inner validation criterion is always Pearson r.
    shared_alpha : bool
        Choose one alpha per outer fold for all voxels (maximizing the validation r
        averaged over voxels) instead of one per voxel. Computed in float32 whatever
        ``precision`` says: the alphas are nominated on a subset of voxels and the
        nominated ones validated exactly on every voxel (see the module docstring).
    device : str
        torch device for ``backend="torch"``.
    precision : {"float32", "mixed"}
        ``float32`` (default): every product in float32. ``mixed``: the per-alpha
        products that give the norms of the inner validation predictions (the dominant
        cost) take bfloat16 inputs (float32 accumulation), ~1.55x (9 alphas) to 1.8x
        (17 alphas) faster per call; everything else (decompositions, projections,
        Pearson numerators, the refit, the test predictions and scores) is computed as
        with ``float32``. Validation r moves by < 1e-3 (99th percentile; 2.2e-3 at
        most) and the chosen alpha of a few voxels in a thousand, whose test r then
        moves with it (see the module docstring). Applies where the hardware multiplies
        bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs with bfloat16
        support), ``float32`` elsewhere. Ignored by ``backend="himalaya"``.
    inner : {"loro", "first"}
        How the alpha is validated inside outer fold ``o``. ``loro`` (default): every
        other run is validated once (training on the rest), scores averaged. ``first``
        (MindTransformer's protocol): one inner fold only, validated on the first run
        that is not ``o`` (run 0, or run 1 when ``o`` is 0) and trained on the runs left;
        ``validation_per_run[o]`` is that fold's r at the chosen alpha. Either way the
        model is then refit on all runs but ``o``.
    outer_runs : sequence of int, optional
        Compute only these outer folds (test runs); default all. Only the inner folds
        they need are decomposed. Rows of the other folds are NaN in the result.
    on_refit : callable, optional
        ``on_refit(o, start, stop, coef)`` receives the ridge coefficients of the refit
        of outer fold ``o`` (all runs but ``o``, chosen alphas), ``coef`` of shape
        (n_features, stop - start) for voxels ``start:stop``, block by block (the whole
        coefficient matrix is never held). Used by Mode 2's feature selection.
    return_predictions : bool
        Also return the held-out predictions (``EncodingResult.predictions``), e.g. for
        :func:`mtbench.significance.circular_shift_pvalues`.
    on_predictions : callable, optional
        ``on_predictions(start, stop, preds)`` receives the held-out predictions block by
        block: ``preds`` lists, per computed outer fold (in order), an array of shape
        (n_scans_o, stop - start) for voxels ``start:stop``. Per-voxel statistics (e.g.
        circular-shift p-values) computed there never need all predictions in memory.
    alpha_per_run : ndarray, shape (n_runs, n_voxels), optional
        Refit only: skip the alpha search and refit outer fold ``o`` with the alphas
        ``alpha_per_run[o]`` (values from ``alphas``, e.g. an earlier fit's
        ``EncodingResult.alpha_per_run``). The test predictions and scores are those of
        the fit that chose these alphas (e.g. to score it with another metric at a tenth
        of the cost); ``validation`` and ``validation_per_run`` are NaN.

    Returns
    -------
    EncodingResult
        ``test``, ``validation``, ``alpha`` of shape (n_voxels,) and ``test_per_run`` of
        shape (n_runs, n_voxels), float32.

    Raises
    ------
    MtbenchError
        Mismatched run or scan counts, fewer than 3 runs, NaN/inf values, empty or
        non-positive alphas, an unknown backend or precision.
    """
    if backend not in BACKENDS:
        raise MtbenchError(f"unknown ridge backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise MtbenchError(f"unknown ridge precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if inner not in INNERS:
        raise MtbenchError(f"unknown inner validation {inner!r}: choose one of {', '.join(INNERS)}")
    xs, ys, alpha_grid = _validate(X_runs, Y_runs, alphas)
    outer = _check_outer(outer_runs, len(xs))
    alpha_index = None if alpha_per_run is None else _grid_index(alpha_per_run, alpha_grid, outer, ys)
    score = pearson_r if score is None else score
    import torch

    device = "cuda" if on_gpu(backend) else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        fix = f"backend {backend.removesuffix('_cuda')}" if on_gpu(backend) else "device cpu"
        raise MtbenchError(f"backend {backend} / device {device} asked for, but torch sees no CUDA GPU; use {fix}")
    threads = torch.get_num_threads()
    # Small fits run on one thread: splitting tiny products gains nothing, and when the
    # cores are busy with other processes every parallel region waits for a descheduled
    # thread (measured: 4 s instead of 10 ms for a 4 x 30-scan fit on a loaded 2-core box).
    small = (alpha_index is not None and xs[0].shape[1] * sum(y.size for y in ys) < _SMALL_FLOPS
             or _work(xs, ys, alpha_grid.size, inner, outer) < _SMALL_FLOPS)
    try:
        if small and threads > 1:
            torch.set_num_threads(1)
        if backend.startswith("himalaya"):
            result = _fit_himalaya(xs, ys, alpha_grid, score, shared_alpha, device, inner, outer, on_refit,
                                   alpha_index)
            if on_predictions is not None:
                on_predictions(0, ys[0].shape[1], result.predictions)
        else:
            with torch.inference_mode():
                result = _fit_torch(xs, ys, alpha_grid, score, shared_alpha, device, precision, inner, outer,
                                    on_refit, keep_predictions=return_predictions, on_predictions=on_predictions,
                                    alpha_index=alpha_index)
        if not return_predictions:
            result.predictions = None
        return result
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _nearest_alpha(values: np.ndarray, alpha_grid: np.ndarray) -> np.ndarray:
    """Index in ``alpha_grid`` of the alpha nearest (in log) to each of ``values`` (any shape, > 0)."""
    log_values = np.log(np.where(values > 0, values, np.nan))
    return np.abs(np.log(alpha_grid).reshape(-1, *[1] * log_values.ndim) - log_values).argmin(0)


def _grid_index(alpha_per_run, alpha_grid: np.ndarray, outer: list[int], ys) -> np.ndarray:
    """Positions in ``alpha_grid`` of the given per-run alphas, (n_runs, n_voxels) int64 (0 where unused)."""
    given = np.asarray(alpha_per_run, dtype=np.float64)
    shape = (len(ys), ys[0].shape[1])
    if given.shape != shape:
        raise MtbenchError(f"alpha_per_run has shape {given.shape}, expected {shape} (runs x voxels)")
    rows = given[outer]
    index = _nearest_alpha(rows, alpha_grid)
    if not np.allclose(alpha_grid[index], rows, rtol=1e-5, atol=0):
        raise MtbenchError("alpha_per_run holds values that are not among the alphas (or NaN in a computed "
                           "outer fold); pass the alphas of the fit that chose them")
    out = np.zeros(shape, dtype=np.int64)
    out[outer] = index
    return out


def _check_outer(outer_runs, n_runs: int) -> list[int]:
    """``outer_runs`` as a sorted list of distinct run indices (all runs when None)."""
    if outer_runs is None:
        return list(range(n_runs))
    outer = sorted({int(o) for o in outer_runs})
    if not outer or outer[0] < 0 or outer[-1] >= n_runs:
        raise MtbenchError(f"outer_runs {list(outer_runs)} must name test runs among 0..{n_runs - 1}")
    return outer


def _work(xs, ys, n_alphas: int, inner: str = "loro", outer: Sequence[int] | None = None) -> float:
    """Floating-point operations of the per-alpha validation products (the dominant cost)."""
    sizes = [x.shape[0] for x in xs]
    total, n_features, n_voxels = sum(sizes), xs[0].shape[1], ys[0].shape[1]
    flops = 0.0
    for i, j in _inner_pairs(len(xs), inner, outer):
        m = min(n_features, total - sizes[i] - sizes[j])
        flops += 2.0 * n_alphas * (min(sizes[i], m) + min(sizes[j], m)) * m * n_voxels
    return flops


def _first_validation_run(o: int) -> int:
    """``inner="first"``: the validation run of outer fold ``o`` (the first run that is not ``o``)."""
    return 1 if o == 0 else 0


def _inner_pairs(n_runs: int, inner: str, outer: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Left-out pairs ``(i, j)`` whose training set (all runs but i and j) some inner fold uses.

    ``loro``: every pair. ``first``: the pairs ``(0, o)`` only (outer ``o`` validated on run 0,
    and ``(0, 1)`` also serves outer 0 validated on run 1). With ``outer``, only the pairs
    that contain one of those outer folds.
    """
    pairs = list(itertools.combinations(range(n_runs), 2))
    pairs = pairs if inner == "loro" else [p for p in pairs if 0 in p]
    return pairs if outer is None else [p for p in pairs if p[0] in outer or p[1] in outer]


# --------------------------------------------------------------------------- validation
def _validate(X_runs, Y_runs, alphas) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Check shapes and values; return float32 C-contiguous runs and float64 alphas."""
    X_runs, Y_runs = list(X_runs), list(Y_runs)
    if len(X_runs) != len(Y_runs):
        raise MtbenchError(f"features have {len(X_runs)} runs but fMRI data has {len(Y_runs)}; "
                           "pass one feature matrix per fMRI run")
    if len(X_runs) < 3:
        raise MtbenchError(f"nested leave-one-run-out needs at least 3 runs, got {len(X_runs)}; "
                           "use a dataset with more runs or split long runs")
    xs, ys = [], []
    for r, (x, y) in enumerate(zip(X_runs, Y_runs), start=1):
        x, y = np.asarray(x), np.asarray(y)
        for name, a in (("features", x), ("fMRI data", y)):
            if a.ndim != 2:
                raise MtbenchError(f"{name} of run {r} must be 2-D (n_scans, n_columns), got shape {a.shape}")
        if x.shape[0] != y.shape[0]:
            raise MtbenchError(f"run {r}: features have {x.shape[0]} scans but fMRI data has {y.shape[0]}; "
                               "align features to the scans of each run (and trim both the same way)")
        if x.shape[1] == 0 or y.shape[1] == 0:
            raise MtbenchError(f"run {r} has {x.shape[1]} features and {y.shape[1]} voxels; both must be at least 1")
        if x.shape[0] < 2:
            raise MtbenchError(f"run {r} has {x.shape[0]} scan(s); each run needs at least 2 scans")
        if xs and x.shape[1] != xs[0].shape[1]:
            raise MtbenchError(f"run {r} has {x.shape[1]} features but run 1 has {xs[0].shape[1]}; "
                               "every run must use the same feature set")
        if ys and y.shape[1] != ys[0].shape[1]:
            raise MtbenchError(f"run {r} has {y.shape[1]} voxels but run 1 has {ys[0].shape[1]}; "
                               "every run must use the same voxel mask")
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.ascontiguousarray(y, dtype=np.float32)
        for name, a in (("features (X)", x), ("fMRI data (Y)", y)):
            if not np.isfinite(a).all():
                what = "NaN" if np.isnan(a).any() else "inf"
                raise MtbenchError(f"{name} contains {what} in run {r}; clean or drop those scans")
        xs.append(x)
        ys.append(y)
    alpha_grid = np.asarray(alphas, dtype=np.float64).ravel()
    if alpha_grid.size == 0:
        raise MtbenchError("alphas is empty; give at least one positive ridge penalty (e.g. logspace(0, 8, 17))")
    if not (np.isfinite(alpha_grid).all() and (alpha_grid > 0).all()):
        raise MtbenchError(f"alphas must be positive and finite, got {alpha_grid.tolist()}")
    return xs, ys, alpha_grid


# --------------------------------------------------------------------------- torch implementation
@dataclass
class _Fold:
    """Eigenbasis of one training set and what every alpha's predictions need.

    ``s`` (m,) float64 eigenvalues (>= 0). ``proj`` (float32) turns a block of targets
    into the coefficients ``Z`` (m, n_block): kernel form, ``proj = U`` (n_train, m) and
    ``Z = U^T Y_T``; feature form, ``proj = E`` (n_features, m) and ``Z = E^T X_T^T Y_T``.
    ``B[v]`` (n_v, m) maps coefficients scaled by ``1 / (s + alpha)`` to predictions of
    run ``v``.
    """

    train: list[int]
    kernel: bool
    s: np.ndarray
    proj: Any
    B: dict


class _Workspace:
    """Scratch tensors reused from block to block.

    The large temporaries of the block loop (tens of MB, thousands of them per fit) are written
    into the same memory instead of being freed and allocated again: with glibc's malloc the
    freed blocks fragment the heap (+270 MB peak resident memory measured at LPP scale).
    """

    def __init__(self, device) -> None:
        self.device = device
        self.buffers: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> Any:
        """A contiguous tensor of ``shape`` (contents undefined), backed by buffer ``name``."""
        import torch

        numel = int(np.prod(shape))
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            buffer = self.buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel].view(shape)


def effective_precision(precision: str, device: str = "cpu") -> str:
    """The precision a fit really uses: ``mixed`` falls back to ``float32`` without native bfloat16."""
    import torch

    if precision == "mixed" and not _fast_bfloat16(torch.device(device)):
        return "float32"
    return precision


def _fast_bfloat16(dev) -> bool:
    """Whether ``dev`` multiplies bfloat16 matrices natively (faster than float32)."""
    import torch

    if dev.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3
            return torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no way to tell, stay in float32
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _fit_torch(xs, ys, alpha_grid, score, shared_alpha, device, precision="float32", inner="loro", outer=None,
               on_refit=None, keep_predictions=True, on_predictions=None, alpha_index=None) -> EncodingResult:
    import torch

    dev = torch.device(device)  # fit_nested_loro checked that CUDA is there
    f32, f64 = torch.float32, torch.float64
    n_runs = len(xs)
    n_features = xs[0].shape[1]
    n_voxels = ys[0].shape[1]
    n_alphas = alpha_grid.size
    sizes = [x.shape[0] for x in xs]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows = [slice(int(starts[r]), int(starts[r + 1])) for r in range(n_runs)]
    n_total = int(starts[-1])

    X = torch.from_numpy(_concatenated_rows(xs)).to(dev)
    Y = torch.from_numpy(_concatenated_rows(ys)).to(dev)  # only read, never written

    outer = list(range(n_runs)) if outer is None else outer
    pairs = _inner_pairs(n_runs, inner, outer)
    train_sets = [[r for r in range(n_runs) if r not in p] for p in pairs]
    outer_sets = [[r for r in range(n_runs) if r != o] for o in outer]
    n_train = lambda runs: sum(sizes[r] for r in runs)  # noqa: E731
    use_kernel = lambda runs: n_features > n_train(runs)  # noqa: E731

    # Gram pieces shared by every fold, computed once.
    all_sets = train_sets + outer_sets
    K = None
    G = None
    if any(use_kernel(t) for t in all_sets):
        big = n_total > _FLOAT64_EIGH_MAX
        K = (X @ X.T) if big else (X.to(f64) @ X.to(f64).T)
    gram_dtype = f32 if n_features > _FLOAT64_EIGH_MAX else f64
    if not all(use_kernel(t) for t in all_sets):
        G = X.T @ X if gram_dtype == f32 else X.to(f64).T @ X.to(f64)  # X^T X of all runs

    def feature_gram(runs):
        """X_T^T X_T of the training runs ``runs``: all runs' Gram minus the left-out runs' (made here).

        Only the total is kept: per-run Grams would hold n_runs x n_features^2 (85 MB at d = 1,536),
        and the left-out runs' cost 2 x n_scans x n_features^2 each, small beside the fold's work.
        """
        gram = G.clone()
        for r in range(n_runs):
            if r not in runs:
                x = X[rows[r]].to(gram_dtype)
                gram.addmm_(x.T, x, alpha=-1)
        return gram

    def train_index(runs):
        return torch.cat([torch.arange(rows[r].start, rows[r].stop, device=dev) for r in runs])

    def make_fold(runs, targets):
        """Eigendecompose the training set ``runs``; prediction maps for ``targets``."""
        if use_kernel(runs):
            idx = train_index(runs)
            gram = K[idx][:, idx]
        else:
            gram = feature_gram(runs)
        dtype = gram.dtype if gram.shape[0] > _FLOAT64_EIGH_MAX else f64
        s, vecs = torch.linalg.eigh(gram.to(dtype))
        s = s.clamp_min(0)
        if use_kernel(runs):
            B = {v: K[rows[v]][:, idx].to(dtype) @ vecs for v in targets}
        else:
            B = {v: X[rows[v]].to(dtype) @ vecs for v in targets}
        return _Fold(list(runs), use_kernel(runs), s.cpu().numpy().astype(np.float64), vecs.to(f32), B)

    # Which inner folds are validated: (v, other) = validated on run v, trained without v and
    # `other`, for outer fold `other` (its test run). The pair (i, j) serves (i, j) and (j, i).
    def validations(i, j):
        out = []
        for v, other in ((i, j), (j, i)):
            if other in outer and (inner == "loro" or v == _first_validation_run(other)):
                out.append((v, other))
        return out

    pair_checks = [(p, t, validations(*p)) for p, t in zip(pairs, train_sets)]
    pair_checks = [c for c in pair_checks if c[2]]  # e.g. inner="first": pairs nobody validates on
    if alpha_index is not None:  # refit only: the alphas are given, no inner fold is needed
        pair_checks = []
    # Pair folds are made in groups whose eigenbases and inputs fit in _GROUP_BYTES, each group
    # used over all voxels before the next one is made: at LPP scale all 36 feature-form folds at
    # d = 576 (~100 MB), 9 at d = 1,536 (13 MB each), 5 kernel-form ones (n_train x n_train, ~20 MB
    # each). With one group and an alpha per voxel, validation, choice and refit share one pass
    # over the voxels (and its X'Y products).
    def fold_bytes(t, checks):
        m = min(n_features, n_train(t))
        return 4 * m * ((n_train(t) if use_kernel(t) else n_features) + sum(sizes[v] for v, _ in checks))

    groups, group_bytes = [], 0
    for c in pair_checks:
        size = fold_bytes(c[1], c[2])
        if groups and group_bytes + size <= _GROUP_BYTES:
            groups[-1].append(c)
            group_bytes += size
        else:
            groups.append([c])
            group_bytes = size
    fused = len(groups) == 1 and not shared_alpha
    need_xty = not all(use_kernel(t) for t in train_sets + outer_sets)

    # precision="mixed" (``lo`` = bfloat16): only the per-alpha norm products take bfloat16 inputs,
    # each rounded once from float32 (bfloat16 has float32's exponent range: no rescaling needed,
    # the rounding is relative, <= 2^-9, at any magnitude); they accumulate in float32. They do not
    # give each alpha's prediction but the increment from the previous alpha (in increasing
    # order): B (w~_a - w~_a') z, whose running sum (in float32) is B w~_a z. Rounding errors that
    # differ between alphas then scale with w~_a - w~_a' (tiny where the r curve is flat, e.g. at
    # large alphas, where w~ -> 1) instead of with w~_a, so the ranking of neighbouring alphas,
    # hence the choice, rarely moves (17 alphas at the default shape: 0.4% of voxel-folds instead
    # of 7% with per-alpha rounding).
    lo = torch.bfloat16 if precision == "mixed" and _fast_bfloat16(dev) else f32
    order = np.argsort(alpha_grid, kind="stable")
    unsort = torch.from_numpy(np.argsort(order, kind="stable")).to(dev)

    @dataclass
    class _PairInputs:
        num: dict  # validated run -> centered B (n_v, m) float32, for the Pearson numerators
        stack: Any  # (rows, m) float32: same column Gram as the centered B of every validated run
        edges: np.ndarray  # row offsets of each validated run in ``stack``
        w: Any  # (n_alphas, m) float32: w~_a
        scale: Any  # (m, n_alphas) float32: w~_a (float32) or the increments between sorted alphas
        train_idx: Any  # kernel form: rows of the training runs

    def pair_inputs(f, checks):
        """What the validation of one pair fold needs for every voxel block.

        Per validated run: centered B (for the numerator) and a matrix with the same column Gram
        (for the norm of the centered predictions): R of a QR when that is smaller than B.
        Scaled per alpha by w~_a = (s_min + a) / (s + a): the same direction as 1 / (s + a)
        (Pearson r ignores the scale) without tiny numbers.
        """
        w = (f.s.min() + alpha_grid[:, None]) / (f.s[None, :] + alpha_grid[:, None])  # (n_alphas, m)
        bc, rs = {}, []
        for v, _ in checks:
            b = f.B[v] - f.B[v].mean(0, keepdim=True)
            bc[v] = b.to(f32)
            rs.append((torch.linalg.qr(b, mode="r")[1] if b.shape[0] > b.shape[1] else b).to(f32))
        edges = np.cumsum([0] + [r.shape[0] for r in rs])
        stack = torch.cat(rs, 0)
        if all(r.shape == bc[v].shape for r, (v, _) in zip(rs, checks)):
            # no QR: the stack holds the centered B themselves, share them
            bc = {v: stack[edges[k]:edges[k + 1]] for k, (v, _) in enumerate(checks)}
        # float32: every alpha's weights; bfloat16: the increments between sorted alphas
        steps = w if lo == f32 else np.diff(w[order], axis=0, prepend=0.0)
        f.B = {}  # the rest is in num / stack
        return _PairInputs(bc, stack, edges, torch.from_numpy(w).to(dev, f32),
                           torch.from_numpy(steps.T.copy()).to(dev, f32),
                           train_index(f.train) if f.kernel else None)

    def make_group(group):
        """The pair folds of ``group`` with what their validation needs."""
        folds = (make_fold(t, [v for v, _ in checks]) for _, t, checks in group)
        return [(f, pair_inputs(f, c[2]), c) for f, c in zip(folds, group)]

    n_inner = n_runs - 1 if inner == "loro" else 1
    # norm of every run's centered BOLD (the Pearson denominators' other half), (n_runs, n_voxels)
    ynorm_all = torch.stack([torch.linalg.vector_norm(Y[rw] - Y[rw].mean(0, keepdim=True), dim=0) for rw in rows])

    # Voxels per block: the (n_alphas x rows, block) product output stays within a few MB. Per
    # chunk of blocks, each pair fold's per-alpha scaled inputs are made once, and the outer folds
    # are refit; the chunk's X'Y products and refit temporaries stay under _CHUNK_BYTES.
    widest = max([sum(min(sizes[v], n_train(t)) for v, _ in checks) for _, t, checks in pair_checks] + [1])
    block = int(min(n_voxels, max(_MIN_BLOCK, min(_MAX_BLOCK, _BLOCK_BYTES // (4 * widest * n_alphas))
                                  // _MIN_BLOCK * _MIN_BLOCK)))
    # per voxel of a chunk: the runs' X'Y (feature form) and the refit's targets, z, 1 / (s + alpha), z w
    widest_basis = max(min(n_features, n_train(t)) for t in outer_sets)
    kernel_targets = max([n_train(t) for t in outer_sets if use_kernel(t)] + [0])
    per_voxel = 4 * ((n_runs + 1) * n_features if need_xty else 0) + 4 * (5 * widest_basis + kernel_targets)
    chunk = int(min(n_voxels, max(block, _CHUNK_BYTES // per_voxel // block * block)))
    chunks = [(c0, min(n_voxels, c0 + chunk)) for c0 in range(0, n_voxels, chunk)]

    def blocks_of(c0, c1):
        return [(b0, min(c1, b0 + block)) for b0 in range(c0, c1, block)]

    ws = _Workspace(dev)

    def xty_of(c0, c1, source=None):
        """X_r^T Y_r of every run for voxels c0:c1 of ``source`` (default Y; feature-form folds), and their sum."""
        if not need_xty:
            return None, None
        yc = (Y if source is None else source)[:, c0:c1]
        xty = [torch.mm(X[rw].T, yc[rw], out=ws.get(f"xty{r}", (n_features, c1 - c0), f32))
               for r, rw in enumerate(rows)]
        total = ws.get("xty_all", (n_features, c1 - c0), f32).copy_(xty[0])
        for part in xty[1:]:
            total.add_(part)
        return xty, total

    def projected(proj, xty_all, left_out, c1_c0):
        """``proj^T (X'Y_all - sum of X'Y_left_out)``: the targets of a training set, (m, block)."""
        rest = torch.sub(xty_all, left_out[0], out=ws.get("rest", tuple(xty_all.shape), f32))
        for part in left_out[1:]:
            rest.sub_(part)
        return torch.mm(proj.T, rest, out=ws.get("z", (proj.shape[1], c1_c0), f32))

    def tall_of(data):
        """Every alpha's scaled inputs stacked, (n_alphas x rows, m) in ``lo``: one product per block.

        The per-alpha factors multiply the inputs (not the coefficients z), so the rounding of
        each alpha's bfloat16 copy differs from row to row and largely averages out in the norms;
        rounding alpha-scaled z instead would shift every row's prediction coherently (measured:
        3.6x more alpha choices moved against float32).
        """
        n_rows, m = data.stack.shape
        tall = ws.get("tall", (n_alphas, n_rows, m), lo)
        for a in range(n_alphas):  # written (and rounded) straight into the workspace
            torch.mul(data.stack, data.scale[:, a], out=tall[a])
        return tall.view(-1, m)

    def validate_pair(f, data, tall, pair, checks, c0, c1, xty, xty_all, val):
        """Add one pair fold's validation r of voxels c0:c1 to ``val`` (n_runs, n_alphas, c1 - c0)."""
        i, j = pair
        yc = Y[:, c0:c1]
        if f.kernel:
            targets = torch.index_select(yc, 0, data.train_idx,
                                         out=ws.get("targets", (len(data.train_idx), c1 - c0), f32))
            z = torch.mm(f.proj.T, targets, out=ws.get("z", (f.proj.shape[1], c1 - c0), f32))
        else:
            z = projected(f.proj, xty_all, [xty[i], xty[j]], c1 - c0)
        # predictions (float32) or their increments between sorted alphas (bfloat16) of all alphas
        z_lo = z if lo == f32 else ws.get("z_lo", tuple(z.shape), lo).copy_(z)
        pred = torch.mm(tall, z_lo, out=ws.get("pred_lo", (tall.shape[0], c1 - c0), lo)).view(n_alphas, -1, c1 - c0)
        if lo != f32:  # increments in sorted order -> running sums in float32
            pred = ws.get("pred", tuple(pred.shape), f32).copy_(pred)
            for a in range(1, n_alphas):
                pred[a].add_(pred[a - 1])
        pred.square_()  # then column sums per run (several times faster than vector_norm here)
        for k, (v, other) in enumerate(checks):
            norm = pred[:, data.edges[k]:data.edges[k + 1]].sum(1).sqrt_()  # (n_alphas, block)
            if lo != f32:
                norm = norm.index_select(0, unsort)
            num = data.w @ ((data.num[v].T @ yc[rows[v]]) * z)  # (n_alphas, block)
            denom = norm * ynorm_all[v, c0:c1][None, :]
            val[other] += torch.where(denom > 0, num / torch.where(denom > 0, denom, 1.0), 0.0)

    def validate(ready, c0, c1, val, xty=None, xty_all=None):
        """Add the validation r of the pair folds ``ready`` for voxels c0:c1 to ``val`` (n_runs, n_alphas, c1 - c0)."""
        if xty is None and any(not f.kernel for f, _, _ in ready):
            xty, xty_all = xty_of(c0, c1)
        for f, data, (pair, _, checks) in ready:
            tall = tall_of(data)
            for b0, b1 in blocks_of(c0, c1):
                sub = None if xty is None else [x[:, b0 - c0:b1 - c0] for x in xty]
                sub_all = None if xty is None else xty_all[:, b0 - c0:b1 - c0]
                validate_pair(f, data, tall, pair, checks, b0, b1, sub, sub_all, val[:, :, b0 - c0:b1 - c0])
        return xty, xty_all

    test_per_run = np.full((n_runs, n_voxels), np.nan, dtype=np.float32)
    preds = [np.empty((sizes[o], n_voxels), dtype=np.float32) for o in outer] if keep_predictions else None

    def deliver(k, o, c0, c1, pred, block_preds):
        """Score outer fold ``o``'s test predictions of voxels c0:c1, (n_o, c1 - c0), and keep them."""
        test_per_run[o, c0:c1] = _checked_score(score, ys[o][:, c0:c1], pred)
        if preds is not None:
            preds[k][:, c0:c1] = pred
        block_preds.append(pred)

    def result_of(best_all, validation):
        """The EncodingResult of chosen alpha indices and validation r, both (n_runs, n_voxels) numpy."""
        validation = validation.astype(np.float32)
        chosen = alpha_grid[best_all]  # (n_runs, n_voxels)
        skipped = np.setdiff1d(np.arange(n_runs), outer)
        validation[skipped] = np.nan
        chosen[skipped] = np.nan
        return EncodingResult(
            test=test_per_run[outer].mean(0).astype(np.float32),
            validation=validation[outer].mean(0).astype(np.float32),
            alpha=np.exp(np.log(chosen[outer]).mean(0)).astype(np.float32),
            test_per_run=test_per_run,
            validation_per_run=validation,
            alpha_per_run=chosen.astype(np.float32),
            predictions=preds,
        )

    # ------------------------------------------------------------ one alpha per outer fold
    # When every voxel of an outer fold takes the same alpha (shared alpha, or given alphas equal
    # across voxels), a training set's ridge solution for that alpha is one linear map of its
    # targets: the predictions of run v are T @ rhs with T = B_v diag(1 / (s + alpha)) proj^T
    # (n_v x p) and rhs the training set's X'Y (feature form) or targets (kernel form). No
    # projected targets Z (m x p per voxel) are made: validation costs n_val x p per voxel and
    # alpha, the refit n_test x p. The alphas are first swept on an evenly spaced subset of
    # _NOMINATION_VOXELS voxels; only those whose subset mean r could still be the best (within
    # _NOMINATION_Z standard errors of the leader) are validated on every voxel, exactly, and the
    # best of those, as if all had been, is refit.
    def val_maps(f, v, idx):
        """Centered prediction maps of run ``v`` for ``alpha_grid[idx]``, (len(idx) * n_v, p) float32.

        Scaled by (s_min + alpha) / (s + alpha): the direction of 1 / (s + alpha) (Pearson r
        ignores the scale) without tiny numbers.
        """
        b = f.B[v] - f.B[v].mean(0, keepdim=True)
        w = (f.s.min() + alpha_grid[idx, None]) / (f.s[None, :] + alpha_grid[idx, None])  # (len(idx), m)
        scaled = b[None] * torch.from_numpy(w).to(dev, b.dtype)[:, None, :]
        return scaled.reshape(-1, b.shape[1]).to(f32) @ f.proj.T

    def solve_map(runs, o, alpha):
        """Test map of outer fold ``o`` (trained on ``runs``): X_o (X_T^T X_T + alpha I)^-1 (feature form)
        or K_oT (K_TT + alpha I)^-1 (kernel form), (n_o, p) float32; Cholesky in float64."""
        if use_kernel(runs):
            idx = train_index(runs)
            gram, left = K[idx][:, idx].to(f64), K[rows[o]][:, idx].to(f64)
        else:
            gram, left = feature_gram(runs).to(f64), X[rows[o]].to(f64)
        gram.diagonal().add_(alpha)
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            return torch.cholesky_solve(left.T, chol).T.to(f32)
        s, vecs = torch.linalg.eigh(gram)  # rounding made it indefinite: clamp as make_fold does
        return (((left @ vecs) / s.clamp_min(alpha)) @ vecs.T).to(f32)

    def rhs_of(train, left_out, source, xty, xty_all, b0, b1, c0):
        """What a training set's maps multiply for columns b0:b1 of ``source``: (p, b1 - b0) float32."""
        if use_kernel(train):
            return torch.index_select(source[:, b0:b1], 0, train_index(train),
                                      out=ws.get("targets", (n_train(train), b1 - b0), f32))
        rest = torch.sub(xty_all[:, b0 - c0:b1 - c0], xty[left_out[0]][:, b0 - c0:b1 - c0],
                         out=ws.get("rest", (n_features, b1 - b0), f32))
        for r in left_out[1:]:
            rest.sub_(xty[r][:, b0 - c0:b1 - c0])
        return rest

    def outside_run(M, o, c0, c1):
        """``M`` (n, n_scans - n_o) times the BOLD of every run but ``o`` (in run order), voxels c0:c1:
        (n, c1 - c0), from the two stretches of ``Y`` around run ``o`` (no copy of the training rows)."""
        a, b = rows[o].start, rows[o].stop
        return torch.mm(M[:, :a], Y[:a, c0:c1]).addmm_(M[:, a:], Y[b:, c0:c1])

    def sweep(jobs, source, ynorm, out):
        """Add validation r to ``out`` (n_runs, n_alphas, n_columns of ``source``).

        ``jobs``: (training runs, left-out runs, [(v, other, alpha indices, maps)]) per pair fold:
        run ``v`` validated for outer fold ``other``.
        """
        n_cols = source.shape[1]
        feature = any(not use_kernel(train) for train, _, _ in jobs)
        spans = [(c0, min(n_cols, c0 + chunk)) for c0 in range(0, n_cols, chunk)] if feature else [(0, n_cols)]
        for c0, c1 in spans:
            xty, xty_all = xty_of(c0, c1, source) if feature else (None, None)
            for b0, b1 in blocks_of(c0, c1):
                for train, left_out, maps in jobs:
                    rhs = rhs_of(train, left_out, source, xty, xty_all, b0, b1, c0)
                    for v, other, idx, T in maps:
                        pred = torch.mm(T, rhs, out=ws.get("pred", (T.shape[0], b1 - b0), f32))
                        pred = pred.view(len(idx), -1, b1 - b0)
                        product = torch.mul(pred, source[rows[v], b0:b1], out=ws.get("product", tuple(pred.shape), f32))
                        num = product.sum(1)  # the maps are centered: no need to center y
                        denom = pred.square_().sum(1).sqrt_() * ynorm[v, b0:b1]
                        r = torch.where(denom > 0, num / torch.where(denom > 0, denom, 1.0), 0.0)
                        out[other, torch.from_numpy(idx).to(dev), b0:b1] += r

    def sweep_groups(alpha_sets, source, ynorm, out, kept=None, ready=None, on_swept=None, group_bytes=None):
        """``sweep`` over every validated pair fold; maps not ``ready`` are made in groups of at most _GROUP_BYTES.

        ``alpha_sets[o]``: alpha indices to validate for outer fold ``o``. ``ready``: (v, o) ->
        (alpha indices, maps) made earlier (the nomination's, kept): swept as they are, in the
        group of their pair fold. ``kept`` (pair -> _Fold): eigenbases kept for a later sweep
        while they fit in 2 x _GROUP_BYTES, and reused from an earlier one. ``on_swept(jobs)``
        runs after each group is swept.
        """
        ready = {} if ready is None else ready
        jobs, job_bytes = [], 0

        def flush():
            sweep(jobs, source, ynorm, out)
            if on_swept is not None:
                on_swept(jobs)
            jobs.clear()

        for pair, train, checks in pair_checks:
            maps = [(v, o, *ready[v, o]) for v, o in checks if (v, o) in ready]
            todo = [(v, o) for v, o in checks if (v, o) not in ready and alpha_sets[o].size]
            size = 0
            if todo:
                fold = (kept or {}).get(pair) or make_fold(train, [v for v, _ in checks])
                if kept is not None and pair not in kept and _fold_bytes(fold) \
                        + sum(_fold_bytes(f) for f in kept.values()) <= 2 * _GROUP_BYTES:
                    kept[pair] = fold
                made = [(v, o, alpha_sets[o], val_maps(fold, v, alpha_sets[o])) for v, o in todo]
                size = sum(_tensor_bytes(m[3]) for m in made)
                if jobs and job_bytes + size > (group_bytes or _GROUP_BYTES):
                    flush()
                    job_bytes = 0
                maps += made
            if maps:
                jobs.append((train, list(pair), maps))
                job_bytes += size
        if jobs:
            flush()

    def standing(r_fold):
        """Positions of the candidates the nomination rule keeps, from one outer fold's r (n_candidates, n_swept)."""
        return np.flatnonzero(_nominated(r_fold.cpu().numpy().astype(np.float64)[None] / n_inner, n_voxels)[0])

    def map_rows(T, n_candidates, positions):
        """The rows of the maps ``T`` (n_candidates * n_v, p) of the candidates at ``positions``."""
        return T.view(n_candidates, -1, T.shape[1])[torch.from_numpy(positions).to(dev)].reshape(-1, T.shape[1])

    def narrowing_sweep(subset, alpha_sets, ready, val):
        """Sweep the voxels outside ``subset`` round by round; after each, drop the candidates that
        every voxel swept so far rules out (the nomination rule on a growing sample).

        The remaining voxels are laid out stride after stride (each an evenly spaced sample of
        the volume) and cut in rounds of _NOMINATION_VOXELS / 2 (a multiple of the block: odd
        product widths are slow), so every prefix of the rounds samples the whole volume. A
        candidate dropped is never swept again; the ones standing at the end have exact r on
        every voxel. Only the (v, o) in ``ready`` are swept. Modifies ``alpha_sets``, ``ready``
        (the maps keep the rows of the standing candidates) and ``val`` (n_runs, n_alphas,
        n_voxels; zero outside ``subset`` for those outer folds).
        """
        sets = {o: np.empty(0, dtype=np.int64) for o in range(n_runs)}
        sets.update({o: idx for (_, o), (idx, _) in ready.items()})
        rest = np.setdiff1d(np.arange(n_voxels), subset)
        width = max(1, _NOMINATION_VOXELS // 2)
        n_rounds = max(1, -(-rest.size // width))
        order = np.concatenate([rest[k::n_rounds] for k in range(n_rounds)])
        swept = [subset]
        for k in range(n_rounds):
            cols_k = order[k * width:(k + 1) * width]
            idx_t = torch.from_numpy(cols_k).to(dev)
            out = torch.zeros((n_runs, n_alphas, cols_k.size), dtype=f32, device=dev)
            sweep_groups(sets, Y.index_select(1, idx_t), ynorm_all.index_select(1, idx_t), out, None, ready)
            val.index_add_(2, idx_t, out)  # zeros for the outer folds not in `ready`
            swept.append(cols_k)
            if k == n_rounds - 1:
                break
            done = torch.from_numpy(np.concatenate(swept)).to(dev)
            for (v, o), (idx, T) in list(ready.items()):
                if idx.size < 2:
                    continue
                keep = standing(val[o].index_select(1, done)[torch.from_numpy(idx).to(dev)])
                if keep.size < idx.size:
                    alpha_sets[o] = sets[o] = idx[keep]
                    ready[v, o] = (idx[keep], map_rows(T, idx.size, keep))

    def map_groups(pending, alpha_sets):
        """The maps of the (v, o) of ``pending`` [(pair training runs, [(v, o)])], made from a new
        decomposition, in groups of at most 2 x _GROUP_BYTES: dicts (v, o) -> (alpha indices, maps)."""
        group, size = {}, 0
        for train, todo in pending:
            p = n_train(train) if use_kernel(train) else n_features
            need = sum(4 * alpha_sets[o].size * sizes[v] * p for v, o in todo)
            if group and size + need > 2 * _GROUP_BYTES:
                yield group
                group, size = {}, 0
            fold = make_fold(train, [v for v, _ in todo])
            group.update({(v, o): (alpha_sets[o], val_maps(fold, v, alpha_sets[o])) for v, o in todo})
            size += need
        if group:
            yield group

    def choose_shared():
        """Per outer fold, the alpha of the best voxel-mean validation r: indices (n_runs,), validation (n_runs, n_voxels).

        With a voxel subset, every alpha is swept on it first. Where every outer fold is
        validated by one pair fold only (``inner="first"``), a fold's nomination follows its
        pair's sweep, and the maps of the nominated alphas are kept (while they fit in
        2 x _GROUP_BYTES) for the sweep over the other voxels, which narrows the candidates
        round by round (``narrowing_sweep``): in feature form all of them fit at LPP scale, and
        that sweep is one pass over the voxels (one X'Y per voxel chunk). The maps that did not
        fit (kernel form: n_v x n_train per alpha) are made again, from a new decomposition, in
        groups of at most 2 x _GROUP_BYTES, each group narrowed over the voxels in turn.
        Otherwise (``inner="loro"``) the pair folds' eigenbases are kept where they fit, and the
        maps are made again for one sweep of every voxel.
        """
        everything = np.arange(n_alphas)
        alpha_sets = {o: everything for o in range(n_runs)}
        subset = _nomination_voxels(n_voxels)
        checks_of = {}
        for _, _, checks in pair_checks:
            for v, o in checks:
                checks_of[o] = checks_of.get(o, 0) + 1
        ready: dict = {}
        # maps kept (one check per outer fold: each map is swept for one fold's narrowing)
        keep_maps = all(c == 1 for c in checks_of.values())
        kept: dict | None = None if keep_maps else {}
        if subset is not None:
            cols = torch.from_numpy(subset).to(dev)
            r_subset = torch.zeros((n_runs, n_alphas, subset.size), dtype=f32, device=dev)

            def keep_nominated(jobs):
                """Keep the nominated alphas' rows of the maps just swept (outer folds with one check)."""
                for _, _, maps in jobs:
                    for v, o, idx, T in maps:  # idx: every alpha
                        chosen = standing(r_subset[o])
                        rows_t = map_rows(T, idx.size, chosen)
                        if sum(_tensor_bytes(m) for _, m in ready.values()) + _tensor_bytes(rows_t) <= 2 * _GROUP_BYTES:
                            ready[v, o] = (chosen, rows_t)

            sweep_groups(alpha_sets, Y.index_select(1, cols), ynorm_all.index_select(1, cols), r_subset, kept,
                         on_swept=keep_nominated if kept is None else None,
                         group_bytes=_GROUP_BYTES // 2 if kept is None else None)  # room for the kept maps
            nominated = _nominated(r_subset.cpu().numpy().astype(np.float64) / n_inner, n_voxels)
            alpha_sets = {o: np.flatnonzero(nominated[o]) for o in range(n_runs)}
            ready = {key: value for key, value in ready.items() if np.array_equal(value[0], alpha_sets[key[1]])}
        val = torch.zeros((n_runs, n_alphas, n_voxels), dtype=f32, device=dev)
        if subset is None or not keep_maps:
            sweep_groups(alpha_sets, Y, ynorm_all, val, kept, ready)
        else:  # the candidates shrink as the voxels are swept: the kept maps first, then the others
            val.index_copy_(2, cols, r_subset)
            pending = [(train, [(v, o) for v, o in checks if (v, o) not in ready and alpha_sets[o].size])
                       for _, train, checks in pair_checks]
            narrowing_sweep(subset, alpha_sets, ready, val)
            ready.clear()
            _release_freed_memory()  # the kept maps' heap goes back before the next group is made
            for group in map_groups([p for p in pending if p[1]], alpha_sets):
                narrowing_sweep(subset, alpha_sets, group, val)
                group.clear()
                _release_freed_memory()
        ready.clear()
        if kept is not None:
            kept.clear()
        val /= n_inner
        mean_r = val.sum(2, dtype=torch.float64).cpu().numpy()
        for o in range(n_runs):
            mean_r[o, np.setdiff1d(everything, alpha_sets[o])] = -np.inf
        best = mean_r.argmax(1)  # first maximum: ties go to the first alpha listed
        validation = val[torch.arange(n_runs, device=dev), torch.from_numpy(best).to(dev)]
        return best, validation.cpu().numpy()

    uniform = alpha_index is not None and bool((alpha_index[outer] == alpha_index[outer][:, :1]).all())
    if on_refit is None and (uniform or (shared_alpha and alpha_index is None)):
        if alpha_index is None:
            best, validation = choose_shared()
        else:
            best, validation = alpha_index[:, 0].copy(), np.full((n_runs, n_voxels), np.nan, dtype=np.float32)
        test_maps = [solve_map(t, o, float(alpha_grid[best[o]])) for t, o in zip(outer_sets, outer)]
        # Multiply-adds per voxel: feature-form maps need the X'Y pass (n_features x n_scans) and
        # n_o x n_features per fold; a map times X_T^T is the same map on the training runs' BOLD
        # (kernel form), n_o x n_train per fold and no X'Y. The cheaper one is taken (at LPP
        # scale: kernel form from d ~ 1,250 on; at d = 1,536, 19% fewer).
        on_bold_cost = sum(sizes[o] * n_train(t) for t, o in zip(outer_sets, outer))
        on_xty_cost = n_features * n_total + sum(sizes[o] * (n_train(t) if use_kernel(t) else n_features)
                                                 for t, o in zip(outer_sets, outer))
        on_bold = on_bold_cost <= on_xty_cost
        if on_bold:
            test_maps = [m if use_kernel(t) else m @ X[train_index(t)].T for m, t in zip(test_maps, outer_sets)]
        K = G = None
        for c0, c1 in chunks:
            _release_freed_memory()  # as in refit(): the last block's buffers go back first
            xty, xty_all = (None, None) if on_bold else xty_of(c0, c1)
            block_preds = []
            for k, (o, t) in enumerate(zip(outer, outer_sets)):
                if on_bold or use_kernel(t):
                    pred = outside_run(test_maps[k], o, c0, c1)
                else:
                    pred = test_maps[k] @ rhs_of(t, [o], Y, xty, xty_all, c0, c1, c0)
                deliver(k, o, c0, c1, pred.cpu().numpy(), block_preds)
            if on_predictions is not None:
                on_predictions(c0, c1, block_preds)
        return result_of(np.repeat(best[:, None], n_voxels, axis=1), validation)

    val_all = None
    ready = make_group(groups[0]) if fused else None
    if not fused and alpha_index is None:  # every voxel validated first, group by group
        val_all = torch.zeros((n_runs, n_alphas, n_voxels), dtype=f32, device=dev)
        for group in groups:
            ready = make_group(group)
            for c0, c1 in (chunks if any(not f.kernel for f, _, _ in ready) else [(0, n_voxels)]):
                validate(ready, c0, c1, val_all[:, :, c0:c1])
            ready = None
        val_all /= n_inner

    _release_freed_memory()  # the pair folds' heap goes back before the outer eigenbases are made
    # Outer folds (all runs but the test run o): eigenbasis kept for the refit of every block.
    outer_folds = [make_fold(t, [o]) for t, o in zip(outer_sets, outer)]
    outer_idx = [train_index(f.train) if f.kernel else None for f in outer_folds]
    for f, o in zip(outer_folds, outer):
        f.B = {"test": f.B[o].to(f32)}  # (n_o, m): coefficients -> predictions of the test run
    K = G = None  # every eigenbasis is made: the Gram pieces are no longer needed
    alpha_t = torch.from_numpy(alpha_grid).to(dev, f64)
    outer_s = [torch.from_numpy(f.s).to(dev, f64) for f in outer_folds]
    coef_maps = None
    if on_refit is not None:  # coefficients = coef_map @ (z * w): E (feature form) or X_T^T U (kernel form)
        coef_maps = [X.index_select(0, idx).T @ f.proj if f.kernel else f.proj
                     for f, idx in zip(outer_folds, outer_idx)]

    def refit(c0, c1, best, xty, xty_all):
        """Refit every outer fold on its training runs with the chosen alphas; score its test run."""
        # what the last block freed (its predictions, the p-values' buffers) goes back first:
        # the heap would otherwise keep growing in fragments beside the held eigenbases
        _release_freed_memory()
        block_preds = []
        for k, (o, f) in enumerate(zip(outer, outer_folds)):
            m = f.proj.shape[1]
            if f.kernel:
                targets = torch.index_select(Y[:, c0:c1], 0, outer_idx[k],
                                             out=ws.get("targets", (len(outer_idx[k]), c1 - c0), f32))
                z = torch.mm(f.proj.T, targets, out=ws.get("z", (m, c1 - c0), f32))
            else:  # X'Y of the training runs: all runs' sum minus the test run's (no new product)
                z = projected(f.proj, xty_all, [xty[o]], c1 - c0)
            w = torch.add(outer_s[k][:, None], alpha_t[best[o]][None, :], out=ws.get("w", (m, c1 - c0), f64))
            zw = torch.div(z, w, out=ws.get("zw", (m, c1 - c0), f32))  # z / (s + alpha), (m, block)
            deliver(k, o, c0, c1, (f.B["test"] @ zw).cpu().numpy(), block_preds)
            if on_refit is not None:
                on_refit(o, c0, c1, (coef_maps[k] @ zw).cpu().numpy())
        if on_predictions is not None:
            on_predictions(c0, c1, block_preds)

    validation = torch.empty((n_runs, n_voxels), dtype=f32, device=dev)
    best_all = torch.empty((n_runs, n_voxels), dtype=torch.long, device=dev)
    if alpha_index is not None:  # refit only, with the given alphas
        best_all[:] = torch.from_numpy(alpha_index).to(dev)
        validation[:] = float("nan")
        for c0, c1 in chunks:
            refit(c0, c1, best_all[:, c0:c1], *xty_of(c0, c1))
    elif not fused:
        if shared_alpha:  # first maximum of the voxel-mean r: ties go to the first alpha listed
            best_all[:] = val_all.sum(2, dtype=torch.float64).argmax(1)[:, None]
        else:
            best_all[:] = val_all.argmax(1)
        validation[:] = val_all.gather(1, best_all[:, None, :])[:, 0]
        del val_all
        for c0, c1 in chunks:
            refit(c0, c1, best_all[:, c0:c1], *xty_of(c0, c1))
    else:  # alpha per voxel: validate, choose and refit chunk by chunk in one pass
        for c0, c1 in chunks:
            xty, xty_all = xty_of(c0, c1)
            val = torch.zeros((n_runs, n_alphas, c1 - c0), dtype=f32, device=dev)
            validate(ready, c0, c1, val, xty, xty_all)
            val /= n_inner
            best = val.argmax(1)  # (n_runs, block); first maximum: ties go to the first alpha listed
            best_all[:, c0:c1] = best
            validation[:, c0:c1] = val.gather(1, best[:, None, :])[:, 0]
            refit(c0, c1, best, xty, xty_all)

    return result_of(best_all.cpu().numpy(), validation.cpu().numpy())


def _release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``; elsewhere nothing).

    Tensors below glibc's mmap threshold (which rises to 32 MB as large blocks are freed) live
    on the heap, and what a phase frees stays resident, fragmented, while the next phase
    allocates anew: the peak is then the sum of the phases instead of the largest one. Called
    between phases and before each refit block (up to ~20 ms on a fragmented 200 MB heap).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


def _fold_bytes(f: _Fold) -> int:
    """Bytes of a fold's eigenbasis and inputs."""
    return _tensor_bytes(f.proj) + sum(_tensor_bytes(b) for b in f.B.values())


def _nomination_voxels(n_voxels: int) -> np.ndarray | None:
    """Evenly spaced voxels on which a shared alpha's candidates are swept first (None: too few voxels to gain)."""
    if n_voxels < 4 * _NOMINATION_VOXELS:
        return None
    return np.linspace(0, n_voxels - 1, _NOMINATION_VOXELS).round().astype(np.int64)


def _nominated(r_subset: np.ndarray, n_voxels: int) -> np.ndarray:
    """Alphas that may still hold the best voxel-mean validation r, (n_runs, n_alphas) bool.

    Parameters
    ----------
    r_subset : ndarray, shape (n_runs, n_alphas, n_subset)
        Validation r of the subset's voxels, per outer fold and alpha.
    n_voxels : int
        Voxels in the whole fit (finite-population correction of the standard errors).

    The leader is the alpha of the best subset mean; an alpha is kept when its mean trails the
    leader's by at most _NOMINATION_Z standard errors of the per-voxel paired difference (zero
    for an alpha identical to the leader, or where the subset is every voxel).
    """
    n = r_subset.shape[2]
    means = r_subset.mean(2)  # (n_runs, n_alphas)
    leader = means.argmax(1)
    diff = r_subset[np.arange(len(leader)), leader][:, None, :] - r_subset  # (n_runs, n_alphas, n)
    std_error = diff.std(2, ddof=1) / np.sqrt(n) * np.sqrt(max(0.0, 1 - n / n_voxels))
    return diff.mean(2) <= _NOMINATION_Z * std_error + 1e-12


def _concatenated_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(arrays)``, without a copy when they are consecutive row blocks of one buffer.

    Callers that hold all runs in one C-contiguous (n_scans, n_columns) array and pass its row
    slices save a copy of the whole data (the BOLD: 290 MB at LPP scale).
    """
    first = arrays[0]
    owner = first.base
    row_bytes = first.strides[0] if first.ndim == 2 else 0
    address = first.__array_interface__["data"][0]
    if owner is not None and row_bytes > 0 and first.flags.writeable:
        rows = 0
        for a in arrays:
            if a.base is not owner or not a.flags.c_contiguous or a.dtype != first.dtype or \
                    a.shape[1:] != first.shape[1:] or a.__array_interface__["data"][0] != address + rows * row_bytes:
                break
            rows += a.shape[0]
        else:  # one contiguous stretch of the owner's memory: a view of it
            return np.lib.stride_tricks.as_strided(first, shape=(rows, first.shape[1]), strides=first.strides)
    return np.concatenate(arrays)


def _checked_score(score, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``score(y_true, y_pred)`` as float32, checked to give one value per voxel."""
    out = np.asarray(score(y_true, y_pred), dtype=np.float32)
    if out.shape != (y_true.shape[1],):
        raise MtbenchError(f"the score function returned shape {out.shape}, expected ({y_true.shape[1]},) "
                           "(one value per voxel)")
    return out


# --------------------------------------------------------------------------- himalaya (cross-check)
def _fit_himalaya(xs, ys, alpha_grid, score, shared_alpha, device, inner="loro", outer=None,
                  on_refit=None, alpha_index=None) -> EncodingResult:
    """Nested LORO with himalaya's KernelRidgeCV (torch backend) per outer fold.

    With ``alpha_index`` (refit only), himalaya's ``KernelRidge`` with one given alpha per
    voxel replaces ``KernelRidgeCV``.
    """
    import torch
    from himalaya.backend import get_backend, set_backend
    from himalaya.kernel_ridge import KernelRidge, KernelRidgeCV
    from himalaya.scoring import correlation_score

    previous = get_backend()
    backend = set_backend("torch_cuda" if device.startswith("cuda") else "torch", on_error="raise")
    try:
        n_runs = len(xs)
        n_voxels = ys[0].shape[1]
        outer = list(range(n_runs)) if outer is None else outer
        test_per_run = np.full((n_runs, n_voxels), np.nan, dtype=np.float32)
        validation = np.full((n_runs, n_voxels), np.nan, dtype=np.float32)
        log_alpha = np.full((n_runs, n_voxels), np.nan, dtype=np.float64)
        preds = []
        batch = max(1, int(2**28 // (4 * alpha_grid.size * max(x.shape[0] for x in xs) * 2)))
        for o in outer:
            train = [r for r in range(n_runs) if r != o]
            sizes = [xs[r].shape[0] for r in train]
            edges = np.concatenate([[0], np.cumsum(sizes)])
            everything = np.arange(edges[-1])
            inner_runs = range(len(train)) if inner == "loro" else [train.index(_first_validation_run(o))]
            splits = [(np.setdiff1d(everything, np.arange(edges[k], edges[k + 1])),
                       np.arange(edges[k], edges[k + 1])) for k in inner_runs]
            if alpha_index is None:
                model = KernelRidgeCV(
                    alphas=alpha_grid, kernel="linear", fit_intercept=False, cv=splits, warn=False,
                    solver_params=dict(score_func=correlation_score, local_alpha=not shared_alpha,
                                       n_targets_batch=batch, n_targets_batch_refit=batch),
                )
            else:
                model = KernelRidge(alpha=alpha_grid[alpha_index[o]], kernel="linear", fit_intercept=False,
                                    solver="eigenvalues", warn=False)  # exact, as KernelRidgeCV refits
            model.fit(np.concatenate([xs[r] for r in train]), np.concatenate([ys[r] for r in train]))
            pred = backend.to_numpy(model.predict(xs[o]))
            preds.append(np.asarray(pred, dtype=np.float32))
            test_per_run[o] = _checked_score(score, ys[o], pred)
            if alpha_index is None:
                validation[o] = backend.to_numpy(model.cv_scores_)
                # himalaya returns the chosen alphas in float32: snap them back onto the grid
                chosen = backend.to_numpy(model.best_alphas_).astype(np.float64)
                log_alpha[o] = np.log(alpha_grid[_nearest_alpha(chosen, alpha_grid)])
            else:
                log_alpha[o] = np.log(alpha_grid[alpha_index[o]])
            if on_refit is not None:  # primal coefficients of the linear kernel: X_T^T dual
                x_train = np.concatenate([xs[r] for r in train]).astype(np.float64)
                on_refit(o, 0, n_voxels, (x_train.T @ backend.to_numpy(model.dual_coef_)).astype(np.float32))
            del model
    finally:
        set_backend(previous)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return EncodingResult(
        test=test_per_run[outer].mean(0), validation=validation[outer].mean(0),
        alpha=np.exp(log_alpha[outer].mean(0)).astype(np.float32), test_per_run=test_per_run,
        validation_per_run=validation, alpha_per_run=np.exp(log_alpha).astype(np.float32),
        predictions=preds,
    )
