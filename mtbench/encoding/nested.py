"""Ridge encoding models scored by nested leave-one-run-out cross-validation: :func:`fit_nested_loro`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import MtbenchError
from ..memory import usable_cpus
from ..settings import BACKENDS, INNERS, PRECISIONS
from . import limits
from .device import check_device, effective_precision
from .folds import check_outer, inner_pairs
from .himalaya_fit import fit_himalaya
from .scores import EncodingResult, nearest_alpha, pearson_r


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
        nominated ones validated exactly on every voxel (see ``docs/encoding.md``).
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
        moves with it (see ``docs/encoding.md``). Applies where the hardware multiplies
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
        coefficient matrix is never held), e.g. to rank features by their weights.
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
    xs, ys, alpha_grid = check_runs(X_runs, Y_runs, alphas)
    outer = check_outer(outer_runs, len(xs))
    alpha_index = None if alpha_per_run is None else grid_index(alpha_per_run, alpha_grid, outer, ys)
    score = pearson_r if score is None else score
    import torch

    device = check_device(backend, device)
    threads = torch.get_num_threads()
    # never more threads than CPUs to run them (torch sizes its pool by the host's cores, a
    # container's CPU quota throttles the whole pool: several times slower, docs/encoding.md)
    wanted = min(threads, usable_cpus())
    # Small fits run on one thread: splitting tiny products gains nothing, and when the
    # cores are busy with other processes every parallel region waits for a descheduled
    # thread (measured: 4 s instead of 10 ms for a 4 x 30-scan fit on a loaded 2-core box).
    small = (alpha_index is not None and xs[0].shape[1] * sum(y.size for y in ys) < limits.SMALL_FLOPS
             or validation_flops(xs, ys, alpha_grid.size, inner, outer) < limits.SMALL_FLOPS)
    try:
        if small:
            wanted = 1
        if wanted != threads:
            torch.set_num_threads(wanted)
        if backend.startswith("himalaya"):
            result = fit_himalaya(xs, ys, alpha_grid, score, shared_alpha, device, inner, outer, on_refit,
                                   alpha_index)
            if on_predictions is not None:
                on_predictions(0, ys[0].shape[1], result.predictions)
        else:
            from .eigen import EigenRidge  # torch at import

            with torch.inference_mode():
                result = EigenRidge(xs, ys, alpha_grid, score, shared_alpha=shared_alpha, device=device,
                                    precision=effective_precision(precision, device), inner=inner, outer=outer,
                                    on_refit=on_refit, keep_predictions=return_predictions,
                                    on_predictions=on_predictions, alpha_index=alpha_index).fit()
        if not return_predictions:
            result.predictions = None
        return result
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def grid_index(alpha_per_run, alpha_grid: np.ndarray, outer: list[int], ys) -> np.ndarray:
    """Positions in ``alpha_grid`` of the given per-run alphas, (n_runs, n_voxels) int64 (0 where unused)."""
    given = np.asarray(alpha_per_run, dtype=np.float64)
    shape = (len(ys), ys[0].shape[1])
    if given.shape != shape:
        raise MtbenchError(f"alpha_per_run has shape {given.shape}, expected {shape} (runs x voxels)")
    rows = given[outer]
    index = nearest_alpha(rows, alpha_grid)
    if not np.allclose(alpha_grid[index], rows, rtol=1e-5, atol=0):
        raise MtbenchError("alpha_per_run holds values that are not among the alphas (or NaN in a computed "
                           "outer fold); pass the alphas of the fit that chose them")
    out = np.zeros(shape, dtype=np.int64)
    out[outer] = index
    return out


def validation_flops(xs, ys, n_alphas: int, inner: str = "loro", outer: Sequence[int] | None = None) -> float:
    """Floating-point operations of the per-alpha validation products (the dominant cost)."""
    sizes = [x.shape[0] for x in xs]
    total, n_features, n_voxels = sum(sizes), xs[0].shape[1], ys[0].shape[1]
    flops = 0.0
    for i, j in inner_pairs(len(xs), inner, outer):
        m = min(n_features, total - sizes[i] - sizes[j])
        flops += 2.0 * n_alphas * (min(sizes[i], m) + min(sizes[j], m)) * m * n_voxels
    return flops


def check_runs(X_runs, Y_runs, alphas) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
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
