"""Variance partitioning of a state S against a reference R: R alone, S alone, both jointly (banded ridge).

Every model is fitted with nested leave-one-run-out cross-validation (the alphas, and for the
joint model the weight of each feature space, chosen on the training runs only) and scored on
the held-out run. The joint model is banded ridge (one penalty per state) on a grid of penalty
ratios with the engine (:func:`banded_grid`; 40x faster than himalaya's random search,
:func:`banded`, which gives the same parts on planted data: ``tests/test_partition.py``). From the three held-out scores of a voxel (Lescroart et al. 2015; de Heer et
al. 2017):

    unique(S) = joint - R alone,   unique(R) = joint - S alone,   shared = S alone + R alone - joint

The score is the **signed squared held-out correlation** ``r |r|`` of each test run (mean over
test runs), not the held-out coefficient of determination ``R^2 = 1 - SSE / SST``:

- held-out ``R^2`` of a voxel the features cannot predict is ``-var(prediction) / var(y) < 0``
  in expectation, and the prediction's variance grows with the number of features fitted and
  shrinks with the penalty, so the joint model (more features) is pushed below each single
  model by a different amount: ``unique`` and ``shared`` are biased on such voxels
  (``tests/test_partition.py`` measures it);
- ``r`` of a held-out run whose BOLD is independent of the prediction (made from other runs)
  is symmetric about 0, whatever the number of features, so ``r |r|``, and every difference of
  them, has mean 0 there: unbiased on null voxels (shown in ``tests/test_partition.py``, and
  the measured means are in ``docs/analyses.md``). Where a voxel has signal, ``r^2`` is the
  share of its held-out variance that the best rescaling of the prediction explains; both
  estimates are lowered by the noise in the fitted weights.

Both are written (``r2_*`` columns: the biased held-out ``R^2``, for comparison).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtbench.encoding import fit_nested_loro, on_gpu
from mtbench.encoding.folds import inner_splits
from mtbench.encoding.limits import FLOAT64_EIGH_MAX
from mtbench.encoding.nested import check_runs

#: Kernel-weight candidates of the banded random search (as Mode 2's banded selection).
BANDED_ITERATIONS = 20
#: Weights of the first (reference) space in the engine's banded grid (:func:`banded_grid`).
RATIOS = (0.03, 0.2, 0.5, 0.8, 0.97)
#: The three models of a partition, in the order of the arrays of :class:`PartScores`.
MODELS = ("reference", "state", "joint")


def signed_r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``r |r|`` per voxel, ``r`` the Pearson correlation of ``y`` and ``pred`` (n_scans, n_voxels); 0 where constant."""
    y = y - y.mean(0)
    pred = pred - pred.mean(0)
    scale = np.sqrt((y * y).sum(0) * (pred * pred).sum(0))
    r = np.divide((y * pred).sum(0), scale, out=np.zeros(y.shape[1], np.float64), where=scale > 0)
    return (r * np.abs(r)).astype(np.float32)


def heldout_r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``1 - SSE / SST`` per voxel on a held-out run (n_scans, n_voxels): biased by the prediction's variance."""
    y = y.astype(np.float64)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    sse = ((y - pred) ** 2).sum(0)
    return np.divide(sst - sse, sst, out=np.zeros(y.shape[1]), where=sst > 0).astype(np.float32)


class PartScores:
    """Held-out scores of one model per test run.

    Attributes
    ----------
    ev : ndarray, shape (n_runs, n_voxels)
        :func:`signed_r2` of each test run.
    r2 : ndarray, shape (n_runs, n_voxels)
        :func:`heldout_r2` of each test run.
    """

    def __init__(self, n_runs: int, n_voxels: int):
        self.ev = np.zeros((n_runs, n_voxels), np.float32)
        self.r2 = np.zeros((n_runs, n_voxels), np.float32)

    def add(self, o: int, c0: int, c1: int, y: np.ndarray, pred: np.ndarray) -> None:
        """Score test run ``o``'s prediction of voxels ``c0:c1``."""
        self.ev[o, c0:c1] = signed_r2(y, pred)
        self.r2[o, c0:c1] = heldout_r2(y, pred)


def single_space(x_runs: Sequence[np.ndarray], y_runs: Sequence[np.ndarray], alphas, **options) -> PartScores:
    """One feature space: the engine's nested leave-one-run-out ridge (as Mode 1), scored per test run.

    ``options`` as :func:`mtbench.encoding.fit_nested_loro` (``backend``, ``precision``,
    ``shared_alpha``, ``inner``). The predictions are scored block by block as the engine hands
    them over, never all held.
    """
    scores = PartScores(len(y_runs), y_runs[0].shape[1])

    def on_predictions(c0: int, c1: int, preds: list[np.ndarray]) -> None:
        for o, pred in enumerate(preds):
            scores.add(o, c0, c1, y_runs[o][:, c0:c1], pred)

    fit_nested_loro(x_runs, y_runs, alphas, on_predictions=on_predictions, **options)
    return scores


def banded_grid(x_runs: Sequence[Sequence[np.ndarray]], y_runs: Sequence[np.ndarray], alphas,
                ratios: Sequence[float] = RATIOS, **options) -> PartScores:
    """Two feature spaces jointly: banded ridge on a grid of penalty ratios, with the engine (the default).

    Ridge on ``[sqrt(g) X_1, sqrt(1 - g) X_2]`` with penalty ``alpha`` is ridge on ``[X_1, X_2]``
    with one penalty per space, ``alpha / g`` and ``alpha / (1 - g)``: for every ``g`` of
    ``ratios`` one nested leave-one-run-out fit (:func:`mtbench.encoding.fit_nested_loro`, its
    alpha chosen per voxel on the inner folds); then, per voxel and outer fold, the ``g`` of the
    best inner validation (computed without the test run) is kept, and its held-out prediction
    scored. Ratios near 0 and 1 let a voxel all but drop a space it does not need.

    Parameters
    ----------
    x_runs : two feature spaces, each a list of ndarray (n_scans_r, n_features_space)
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    alphas : sequence of float
    ratios : sequence of float in (0, 1)
        Weights ``g`` of the first space.
    **options
        As :func:`mtbench.encoding.fit_nested_loro` (``backend``, ``precision``, ``shared_alpha``, ``inner``).
    """
    first, second = x_runs
    n_runs, n_voxels = len(y_runs), y_runs[0].shape[1]
    best = PartScores(n_runs, n_voxels)
    best_validation = np.full((n_runs, n_voxels), -np.inf, np.float32)
    for g in ratios:
        joint = [np.concatenate([np.sqrt(g) * a, np.sqrt(1 - g) * b], axis=1).astype(np.float32)
                 for a, b in zip(first, second)]
        scores = PartScores(n_runs, n_voxels)

        def on_predictions(c0: int, c1: int, preds: list[np.ndarray], scores=scores) -> None:
            for o, pred in enumerate(preds):
                scores.add(o, c0, c1, y_runs[o][:, c0:c1], pred)

        validation = fit_nested_loro(joint, y_runs, alphas, on_predictions=on_predictions, **options).validation_per_run
        better = validation > best_validation
        best.ev[better], best.r2[better] = scores.ev[better], scores.r2[better]
        best_validation = np.where(better, validation, best_validation)
    return best


def banded(x_runs: Sequence[Sequence[np.ndarray]], y_runs: Sequence[np.ndarray], alphas, *, seed: int = 0,
           n_iter: int = BANDED_ITERATIONS, backend: str = "torch", shared_alpha: bool = False,
           inner: str = "loro", **_) -> PartScores:
    """Several feature spaces jointly with himalaya (the cross-check of :func:`banded_grid`), nested leave-one-run-out.

    himalaya's ``MultipleKernelRidgeCV`` (one linear kernel per space; random search over the
    kernel weights, ``n_iter`` Dirichlet draws, and ``alphas``) per outer fold, validated by
    correlation on the engine's inner folds (``inner``), refit on all runs but the test run,
    scored on it. A space the voxel does not need gets a small weight, so the joint model is
    not forced to spread its penalty over features that only add noise.

    Parameters
    ----------
    x_runs : list of feature spaces, each a list of ndarray (n_scans_r, n_features_space)
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    alphas : sequence of float
    seed : int
        Random state of the search.
    """
    import torch
    from himalaya.backend import get_backend, set_backend
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from himalaya.scoring import correlation_score

    spaces = [check_runs(x, y_runs, alphas)[0] for x in x_runs]
    ys, alpha_grid = check_runs(x_runs[0], y_runs, alphas)[1:]
    n_runs, n_voxels = len(ys), ys[0].shape[1]
    scores = PartScores(n_runs, n_voxels)
    previous = get_backend()
    hb = set_backend("torch_cuda" if on_gpu(backend) else "torch", on_error="raise")
    threads = torch.get_num_threads()
    if sum(y.shape[0] for y in ys) <= FLOAT64_EIGH_MAX:  # many small eigh: one thread (as Mode 2's banded fit)
        torch.set_num_threads(1)
    try:
        batch = max(1, int(2**27 // (4 * alpha_grid.size * max(y.shape[0] for y in ys))))
        for o in range(n_runs):
            train = [r for r in range(n_runs) if r != o]
            splits = inner_splits([y.shape[0] for y in ys], o, inner)
            kernels, test_kernels = [], []
            for xs in spaces:
                x_train = np.concatenate([xs[r] for r in train])
                kernels.append(x_train @ x_train.T)
                test_kernels.append(xs[o] @ x_train.T)
            model = MultipleKernelRidgeCV(
                kernels="precomputed", solver="random_search", fit_intercept=False, cv=splits, random_state=seed,
                solver_params=dict(n_iter=n_iter, alphas=alpha_grid, score_func=correlation_score,
                                   local_alpha=not shared_alpha, progress_bar=False,
                                   n_targets_batch=batch, n_targets_batch_refit=batch))
            model.fit(np.stack(kernels), np.concatenate([ys[r] for r in train]))
            pred = hb.to_numpy(model.predict(np.stack(test_kernels)))
            scores.add(o, 0, n_voxels, ys[o], np.asarray(pred, dtype=np.float32))
            del model, kernels, test_kernels
    finally:
        torch.set_num_threads(threads)
        set_backend(previous)
    return scores


def partition(joint: PartScores, state: PartScores, reference: PartScores, field: str = "ev") -> dict[str, np.ndarray]:
    """The parts of each voxel per test run: ``unique_state``, ``unique_reference``, ``shared`` (n_runs, n_voxels)."""
    j, s, r = (getattr(p, field) for p in (joint, state, reference))
    return {"unique_state": j - r, "unique_reference": j - s, "shared": s + r - j}
