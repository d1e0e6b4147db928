"""Nested leave-one-run-out with himalaya's ``KernelRidgeCV``: the independent cross-check of the torch engine
(``backend="himalaya"``, ``"himalaya_cuda"``)."""

from __future__ import annotations

import numpy as np

from .folds import inner_splits
from .scores import EncodingResult, nearest_alpha, score_per_voxel


def fit_himalaya(xs, ys, alpha_grid, score, shared_alpha, device, inner="loro", outer=None,
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
            splits = inner_splits([x.shape[0] for x in xs], o, inner)
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
            test_per_run[o] = score_per_voxel(score, ys[o], pred)
            if alpha_index is None:
                validation[o] = backend.to_numpy(model.cv_scores_)
                # himalaya returns the chosen alphas in float32: snap them back onto the grid
                chosen = backend.to_numpy(model.best_alphas_).astype(np.float64)
                log_alpha[o] = np.log(alpha_grid[nearest_alpha(chosen, alpha_grid)])
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
