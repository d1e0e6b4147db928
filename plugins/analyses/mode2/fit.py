"""Mode 2: several states of one block predict the brain together.

Mode 2 fits. ``mtbench run --mode 2 --inputs S1,S2,... --pivot input_hidden_state
[--selection pivot|banded]`` fits, per requested layer, one model on the input states of that layer concatenated
(layers are never mixed: each layer is its own Mode 2 fit, reported in its own rows).

``selection="pivot"``: MindTransformer's two-stage selection, as its ``mindtransformer.py``
does it (``llm-mode2``), inside every outer leave-one-run-out fold ``o``:

1. stage 1: ridge on all concatenated input features, alpha chosen by the inner
   validation on the training runs (all runs but ``o``), refit on the training runs;
   score on run ``o`` = stage-1 score;
2. rank the features by the mean over the parcel's voxels of ``|beta|`` of that refit;
   keep as many as the pivot state has dimensions (the pivot only sets this number; its
   features take part only when it is also an input);
3. stage 2: ridge on the kept features, fit on the training runs, score on run ``o``.

The selection is made per parcel (and once for the whole brain) and per outer fold,
from training runs only: the test run never influences alpha, ranking or refit.
Features are aligned to scans, trimmed and z-scored per run and per column as in Mode 1
(the reference standardizes each run's regressors the same way); the betas are the raw
coefficients of that standardized design, not standardized further (as the reference).

Choices where the reference leaves room (also in ``docs/mode2.md``):

- alpha: the reference uses one alpha for all voxels of the parcel, chosen on the first
  remaining run, and reuses it in stage 2. With a shared alpha (``--protocol
  mindtransformer``) mtbench does exactly that: stage 1 is fitted per parcel (the alpha
  is shared by the parcel's voxels) and stage 2 reuses the fold's stage-1 alpha. With
  per-voxel alphas (mtbench's default) stage 1 is fitted once for all voxels (a per-voxel
  alpha does not depend on the parcel) and stage 2 chooses its alphas again by the inner
  validation on the kept features (fewer features want another penalty); the kept
  features were chosen on those same training runs, so stage-2 *validation* scores are
  optimistic, its *test* scores are not.
- with per-voxel alphas, voxels with small alphas have larger betas and weigh more in
  the mean ``|beta|`` (the reference's mean over voxels, unchanged).
- ties in ``|beta|`` go to the feature listed first (stable sort).

``selection="banded"``: himalaya's multiple-kernel ridge (``MultipleKernelRidgeCV``, one
linear kernel per input state, random search over kernel weights and alphas) per outer
fold, validated by the same inner folds; stage 1 is the plain ridge on the
concatenation, stage 2 the banded model. Each state's contribution is himalaya's split
of the test correlation (``correlation_score_split``: the per-state parts sum to r).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from mtbench.encoding import fit_nested_loro, on_gpu, pearson_r
from mtbench.encoding.folds import inner_splits
from mtbench.encoding.limits import FLOAT64_EIGH_MAX
from mtbench.encoding.nested import check_runs
from mtbench.encoding.scores import score_per_voxel
from mtbench.errors import MtbenchError
from mtbench.results import parcel_groups

from .tables import GroupFit, LayerFit, Mode2Result

SELECTIONS = ("pivot", "banded")

# Kernel-weight candidates of the banded random search (himalaya's default is 100: ~5x the
# time for a small gain on this data size).
BANDED_ITERATIONS = 20



def fit_mode2(
    prepare: Callable[[tuple[int, str]], list[np.ndarray]],
    y_runs: Sequence[np.ndarray],
    layers: Sequence[int],
    settings,
    parcels,
    metric,
    progress=None,
) -> Mode2Result:
    """Mode 2 fits of every requested layer.

    Parameters
    ----------
    prepare : callable
        ``prepare((layer, state)) -> [array (n_scans_r, dim) per run]``: scan-level
        features, trimmed and z-scored per run (the runner's Mode 1 preparation).
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    layers : sequence of int
    settings : RunSettings
        ``inputs``, ``pivot``, ``selection`` and the ridge settings.
    parcels : Parcellation
    metric : MetricEntry
        Its ``score`` gives the test scores.
    progress : rich.progress.Progress, optional
    """
    groups = parcel_groups(parcels.labels, parcels.names)
    options = dict(backend=settings.backend, score=metric.score, shared_alpha=settings.shared_alpha,
                   precision=settings.precision, inner=settings.inner)
    result = Mode2Result(selection=settings.selection, inputs=list(settings.inputs), pivot=settings.pivot)
    task = progress.add_task("mode 2", total=len(layers)) if progress is not None else None
    for layer in layers:
        blocks = [prepare((layer, state)) for state in settings.inputs]
        dims = [b[0].shape[1] for b in blocks]
        n_keep = dims[settings.inputs.index(settings.pivot)] if settings.pivot in settings.inputs \
            else prepare((layer, settings.pivot))[0].shape[1]
        x_runs = [np.concatenate([b[r] for b in blocks], axis=1) for r in range(len(y_runs))]
        del blocks
        seconds: dict = {}
        if settings.selection == "pivot":
            fits = pivot_selection(x_runs, y_runs, dims, n_keep, groups, settings.alphas, seconds=seconds, **options)
        else:
            fits = banded_ridge(x_runs, y_runs, dims, groups, settings.alphas, seed=settings.seed, seconds=seconds,
                                **options)
        result.layers.append(LayerFit(layer=layer, dims=dims, n_kept=min(n_keep, sum(dims)), groups=fits,
                                      seconds=seconds))
        if task is not None:
            progress.update(task, advance=1, description=f"mode 2 ({settings.selection}) L{layer}")
    return result


def _stage1(x_runs, y_runs, groups, alphas, options, on_coef=None):
    """Nested ridge on all features, per group: (test, validation, alpha) each (n_runs, n_group).

    One fit for all voxels with per-voxel alphas (the parcel does not change them); one fit
    per group with a shared alpha (shared by that group's voxels, as the reference does per
    parcel). ``on_coef(group_index, o, abs_coef_mean)`` receives, per outer fold, the mean
    over the group's voxels of ``|beta|`` (n_features,).
    """
    n_runs, n_features, n_voxels = len(x_runs), x_runs[0].shape[1], y_runs[0].shape[1]
    out = []
    if options["shared_alpha"]:
        for g, (_, _, idx) in enumerate(groups):
            sums = np.zeros((n_runs, n_features))

            def collect(o, c0, c1, coef, sums=sums, n=idx.size):
                sums[o] += np.abs(coef).sum(1) / n

            res = fit_nested_loro(x_runs, [y[:, idx] for y in y_runs], alphas, **options,
                                  on_refit=collect if on_coef else None)
            if on_coef:
                for o in range(n_runs):
                    on_coef(g, o, sums[o])
            out.append((res.test_per_run, res.validation_per_run, res.alpha_per_run))
        return out
    # voxel -> group weights (1 / group size): |coef| @ member = each group's mean |beta|
    member = np.zeros((n_voxels, len(groups)), dtype=np.float32)
    for g, (_, _, idx) in enumerate(groups):
        member[idx, g] = 1.0 / idx.size
    sums = np.zeros((n_runs, n_features, len(groups)))

    def collect(o, c0, c1, coef):
        sums[o] += np.abs(coef) @ member[c0:c1]

    res = fit_nested_loro(x_runs, y_runs, alphas, **options, on_refit=collect if on_coef else None)
    if on_coef:
        for g in range(len(groups)):
            for o in range(n_runs):
                on_coef(g, o, sums[o, :, g])
    return [(res.test_per_run[:, idx], res.validation_per_run[:, idx], res.alpha_per_run[:, idx])
            for _, _, idx in groups]


def pivot_selection(
    x_runs: Sequence[np.ndarray],
    y_runs: Sequence[np.ndarray],
    dims: Sequence[int],
    n_keep: int,
    groups: Sequence[tuple[int, str, np.ndarray]],
    alphas: Sequence[float],
    seconds: dict | None = None,
    **options,
) -> list[GroupFit]:
    """MindTransformer's two-stage pivot selection, nested in leave-one-run-out.

    Parameters
    ----------
    x_runs : list of ndarray, each shape (n_scans_r, n_features)
        Input states concatenated (columns in ``dims`` order), z-scored per run.
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    dims : sequence of int, shape (n_states,)
        Width of each input state; ``sum(dims) == n_features``.
    n_keep : int
        Features kept in stage 2 (the pivot state's dimension; all when larger).
    groups : list of (parcel_id, name, voxel indices)
        Selection groups (:func:`mtbench.results.parcel_groups`).
    alphas : sequence of float
    seconds : dict, optional
        Receives the wall time of ``stage1`` and ``stage2``.
    **options
        Passed to :func:`mtbench.encoding.fit_nested_loro` (``backend``, ``score``,
        ``shared_alpha``, ``precision``, ``inner``).

    Returns
    -------
    list of GroupFit
        One per group, in ``groups`` order.
    """
    n_runs, n_features = len(x_runs), x_runs[0].shape[1]
    if sum(dims) != n_features:
        raise MtbenchError(f"input state widths {list(dims)} add up to {sum(dims)}, but the features have "
                           f"{n_features} columns")
    band_of = np.repeat(np.arange(len(dims)), dims)
    n_keep = min(int(n_keep), n_features)
    options = {"shared_alpha": False, **options}
    importance = np.zeros((len(groups), n_runs, n_features))

    def on_coef(g, o, mean_abs):
        importance[g, o] = mean_abs

    start = time.perf_counter()
    stage1 = _stage1(x_runs, y_runs, groups, alphas, options, on_coef)
    seconds = {} if seconds is None else seconds
    seconds["stage1"] = round(time.perf_counter() - start, 2)
    fits = []
    for g, (pid, name, idx) in enumerate(groups):
        test1, val1, alpha1 = stage1[g]
        test2, val2 = np.zeros((n_runs, idx.size), np.float32), np.zeros((n_runs, idx.size), np.float32)
        kept = np.zeros((n_runs, len(dims)))
        shares = np.zeros((n_runs, len(dims)))
        for o in range(n_runs):
            # rank on the training runs' refit only (computed without run o); ties: first listed
            keep = np.sort(np.argsort(-importance[g, o], kind="stable")[:n_keep])
            kept[o] = np.bincount(band_of[keep], minlength=len(dims))
            total = importance[g, o].sum()
            shares[o] = np.bincount(band_of, weights=importance[g, o], minlength=len(dims)) / (total if total > 0 else 1)
            # shared alpha: reuse the fold's stage-1 alpha, as the reference does
            fold_alphas = [float(alpha1[o, 0])] if options["shared_alpha"] else alphas
            res = fit_nested_loro([x[:, keep] for x in x_runs], [y[:, idx] for y in y_runs], fold_alphas,
                                  outer_runs=[o], **options)
            test2[o], val2[o] = res.test_per_run[o], res.validation_per_run[o]
        nan = np.full((n_runs, len(dims)), np.nan)
        fits.append(GroupFit(pid, name, idx, test1, val1, test2, val2, kept, shares, nan))
    seconds["stage2"] = round(time.perf_counter() - start - seconds["stage1"], 2)
    return fits


def banded_ridge(
    x_runs: Sequence[np.ndarray],
    y_runs: Sequence[np.ndarray],
    dims: Sequence[int],
    groups: Sequence[tuple[int, str, np.ndarray]],
    alphas: Sequence[float],
    *,
    seed: int = 0,
    n_iter: int = BANDED_ITERATIONS,
    seconds: dict | None = None,
    **options,
) -> list[GroupFit]:
    """Banded ridge (himalaya ``MultipleKernelRidgeCV``, one linear kernel per state), nested LORO.

    Per outer fold ``o``: himalaya's random search over kernel weights (``n_iter``
    Dirichlet draws) and ``alphas``, per voxel (one alpha for all voxels with
    ``shared_alpha``), validated by correlation on the same inner folds as Mode 1
    (``inner``), refit on all runs but ``o``, scored on run ``o``; the per-state split of
    the test r (``himalaya.scoring.correlation_score_split``) gives each state's
    contribution. Stage 1 is the plain nested ridge on the concatenation.

    Parameters
    ----------
    x_runs, y_runs, dims, groups, alphas
        As in :func:`pivot_selection`.
    seed : int
        Random state of the search.
    n_iter : int
        Kernel-weight candidates.
    seconds : dict, optional
        Receives the wall time of ``stage1`` and ``stage2`` (the banded fits).
    **options
        ``backend``, ``score``, ``shared_alpha``, ``precision``, ``inner`` as in
        :func:`mtbench.encoding.fit_nested_loro` (the banded fit itself always runs on
        himalaya's torch backend; ``score`` gives its test scores too).
    """
    import torch
    from himalaya.backend import get_backend, set_backend
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from himalaya.scoring import correlation_score, correlation_score_split


    xs, ys, alpha_grid = check_runs(x_runs, y_runs, alphas)
    n_runs, n_voxels = len(xs), ys[0].shape[1]
    if sum(dims) != xs[0].shape[1]:
        raise MtbenchError(f"input state widths {list(dims)} add up to {sum(dims)}, but the features have "
                           f"{xs[0].shape[1]} columns")
    options = {"shared_alpha": False, "inner": "loro", "score": None, **options}
    start = time.perf_counter()
    stage1 = _stage1(xs, ys, groups, alphas, options)
    seconds = {} if seconds is None else seconds
    seconds["stage1"] = round(time.perf_counter() - start, 2)
    score = options["score"] or pearson_r
    bounds = np.concatenate([[0], np.cumsum(dims)])
    test = np.zeros((n_runs, n_voxels), np.float32)
    validation = np.zeros((n_runs, n_voxels), np.float32)
    contribution = np.zeros((n_runs, len(dims), n_voxels), np.float32)
    previous = get_backend()
    device = "torch_cuda" if on_gpu(options.get("backend") or "torch") else "torch"
    backend = set_backend(device, on_error="raise")
    threads = torch.get_num_threads()
    # Small kernels on one thread, as fit_nested_loro does for small fits: the search runs
    # hundreds of small eigendecompositions and reductions, which split over threads wait for
    # descheduled ones on a busy machine (measured 0.15 s for an 80 x 80 eigh, 0.5 ms alone).
    if sum(x.shape[0] for x in xs) <= FLOAT64_EIGH_MAX:
        torch.set_num_threads(1)
    try:
        batch = max(1, int(2**27 // (4 * alpha_grid.size * max(x.shape[0] for x in xs))))
        for o in range(n_runs):
            train = [r for r in range(n_runs) if r != o]
            splits = inner_splits([x.shape[0] for x in xs], o, options["inner"])
            x_train = np.concatenate([xs[r] for r in train])
            y_train = np.concatenate([ys[r] for r in train])
            bands = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
            kernels = np.stack([x_train[:, b] @ x_train[:, b].T for b in bands])  # (n_states, n_train, n_train)
            test_kernels = np.stack([xs[o][:, b] @ x_train[:, b].T for b in bands])  # (n_states, n_test, n_train)
            model = MultipleKernelRidgeCV(
                kernels="precomputed", solver="random_search", fit_intercept=False, cv=splits, random_state=seed,
                solver_params=dict(n_iter=n_iter, alphas=alpha_grid, score_func=correlation_score,
                                   local_alpha=not options["shared_alpha"], progress_bar=False,
                                   n_targets_batch=batch, n_targets_batch_refit=batch))
            model.fit(kernels, y_train)
            split = backend.to_numpy(model.predict(test_kernels, split=True))  # (n_states, n_test, n_voxels)
            test[o] = score_per_voxel(score, ys[o], split.sum(0))
            contribution[o] = backend.to_numpy(correlation_score_split(ys[o], split))
            validation[o] = backend.to_numpy(model.cv_scores_).max(0)
            del model, kernels, test_kernels
    finally:
        torch.set_num_threads(threads)
        set_backend(previous)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    seconds["stage2"] = round(time.perf_counter() - start - seconds["stage1"], 2)
    fits = []
    kept = np.tile(np.asarray(dims, dtype=float), (n_runs, 1))
    for g, (pid, name, idx) in enumerate(groups):
        test1, val1, _ = stage1[g]
        fits.append(GroupFit(pid, name, idx, test1, val1, test[:, idx], validation[:, idx], kept,
                             np.full((n_runs, len(dims)), np.nan), contribution[:, :, idx].mean(2)))
    return fits
