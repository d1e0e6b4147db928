"""Voxelwise ridge encoding models scored by nested leave-one-run-out cross-validation.

For every outer fold one run is held out as the test run. On the remaining runs an inner
leave-one-run-out picks the ridge penalty (per voxel, or one shared by all voxels) that
maximizes the mean validation Pearson r; the model is then refit on all training runs
with the chosen penalties and predicts the test run. The test run never takes part in the
choice of alpha nor in any fit of its own outer fold.
``inner="first"`` (MindTransformer's protocol) replaces the inner leave-one-run-out by a
single inner fold: validation on the first run that is not the test run, training on the
others; only the C(n_runs, 2) pair folds that contain run 0 are then decomposed.

The torch backend (``backend="torch"``, the default) shares one eigendecomposition per
training set across alphas and both inner folds that use it, X'Y across folds, and never
stores a validation prediction: :mod:`mtbench.eigen_ridge` says how, what it costs
(benchmark table in ``docs/encoding.md``) and what ``precision="mixed"`` changes.

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

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MtbenchError
from .settings import BACKENDS, INNERS, PRECISIONS

__all__ = ["EncodingResult", "effective_precision", "fit_nested_loro", "on_gpu", "pearson_r"]



def on_gpu(backend: str) -> bool:
    """Whether a ridge backend (one of ``BACKENDS``) fits on the CUDA GPU."""
    return backend.endswith("_cuda")


def check_device(backend: str, device: str = "cpu") -> str:
    """The device a fit with ``backend`` runs on; one line when it is a GPU that torch does not see.

    The runner calls it before extraction, so a ``_cuda`` backend on a machine without a GPU
    fails at once, not after minutes of feature extraction.
    """
    import torch

    device = "cuda" if on_gpu(backend) else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        fix = f"backend {backend.removesuffix('_cuda')}" if on_gpu(backend) else "device cpu"
        raise MtbenchError(f"backend {backend} / device {device} asked for, but torch sees no CUDA GPU; use {fix}")
    return device


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
        nominated ones validated exactly on every voxel (see :mod:`mtbench.eigen_ridge`).
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
        moves with it (see :mod:`mtbench.eigen_ridge`). Applies where the hardware multiplies
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

    device = check_device(backend, device)
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
            from .eigen_ridge import EigenRidge

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


# --------------------------------------------------------------------------- precision
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
