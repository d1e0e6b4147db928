"""The engine's path for one alpha per outer fold (shared alpha, or given alphas equal across voxels).

A training set's ridge solution for one alpha is then one linear map of its targets: the
predictions of run v are ``T @ rhs`` with ``T = B_v diag(1 / (s + alpha)) proj^T`` (n_v x p)
and ``rhs`` the training set's X'Y (feature form) or targets (kernel form); no projected
targets are made. The alphas are swept first on an evenly spaced subset of voxels, and only
those that could still be the best are validated on every voxel, exactly (``docs/encoding.md``
describes the nomination, the kept maps and the narrowing rounds, with their measurements).
"""

from __future__ import annotations

import numpy as np
import torch

from . import limits
from .eigen_parts import (
    Fold,
    f32,
    fold_bytes,
    nominated_alphas,
    nomination_voxels,
    release_freed_memory,
    tensor_bytes,
)
from .scores import EncodingResult


class OneAlphaPerFold:
    """Methods of :class:`mtbench.encoding.eigen.EigenRidge` for fits with one alpha per outer fold.

    They use the engine's layout and products (``make_fold``, ``solve_map``, ``xty_of``,
    ``outside_run``, ``deliver``, ``result``...), defined on the engine.
    """

    # ------------------------------------------------------------------ one alpha per outer fold
    # When every voxel of an outer fold takes the same alpha (shared alpha, or given alphas equal
    # across voxels), a training set's ridge solution for that alpha is one linear map of its
    # targets: the predictions of run v are T @ rhs with T = B_v diag(1 / (s + alpha)) proj^T
    # (n_v x p) and rhs the training set's X'Y (feature form) or targets (kernel form). No
    # projected targets Z (m x p per voxel) are made: validation costs n_val x p per voxel and
    # alpha, the refit n_test x p. The alphas are first swept on an evenly spaced subset of
    # limits.NOMINATION_VOXELS voxels; only those whose subset mean r could still be the best (within
    # limits.NOMINATION_Z standard errors of the leader) are validated on every voxel, exactly, and the
    # best of those, as if all had been, is refit.
    def fit_one_alpha_per_fold(self) -> EncodingResult:
        """Choose one alpha per outer fold (or take the given ones) and refit with one map per fold."""
        n_runs, n_voxels, sizes = self.n_runs, self.n_voxels, self.sizes
        outer, outer_sets = self.outer, self.outer_sets
        if self.alpha_index is None:
            best, validation = self.choose_shared()
        else:
            best, validation = self.alpha_index[:, 0].copy(), np.full((n_runs, n_voxels), np.nan, dtype=np.float32)
        test_maps = [self.solve_map(t, o, float(self.alpha_grid[best[o]])) for t, o in zip(outer_sets, outer)]
        # Multiply-adds per voxel: feature-form maps need the X'Y pass (n_features x n_scans) and
        # n_o x n_features per fold; a map times X_T^T is the same map on the training runs' BOLD
        # (kernel form), n_o x n_train per fold and no X'Y. The cheaper one is taken (at LPP
        # scale: kernel form from d ~ 1,250 on; at d = 1,536, 19% fewer).
        on_bold_cost = sum(sizes[o] * self.n_train(t) for t, o in zip(outer_sets, outer))
        on_xty_cost = self.n_features * self.n_total + sum(
            sizes[o] * (self.n_train(t) if self.use_kernel(t) else self.n_features) for t, o in zip(outer_sets, outer))
        on_bold = on_bold_cost <= on_xty_cost
        if on_bold:
            test_maps = [m if self.use_kernel(t) else m @ self.X[self.train_index(t)].T
                         for m, t in zip(test_maps, outer_sets)]
        self.K = self.G = None
        for c0, c1 in self.chunks:
            release_freed_memory()  # as in refit(): the last block's buffers go back first
            xty, xty_all = (None, None) if on_bold else self.xty_of(c0, c1)
            block_preds = []
            for k, (o, t) in enumerate(zip(outer, outer_sets)):
                if on_bold or self.use_kernel(t):
                    pred = self.outside_run(test_maps[k], o, c0, c1)
                else:
                    pred = test_maps[k] @ self.rhs_of(t, [o], self.Y, xty, xty_all, c0, c1, c0)
                self.deliver(k, o, c0, c1, pred.cpu().numpy(), block_preds)
            if self.on_predictions is not None:
                self.on_predictions(c0, c1, block_preds)
        return self.result(np.repeat(best[:, None], n_voxels, axis=1), validation)

    def choose_shared(self) -> tuple[np.ndarray, np.ndarray]:
        """Per outer fold, the alpha of the best voxel-mean validation r: indices (n_runs,), validation (n_runs, n_voxels).

        With a voxel subset, every alpha is swept on it first. Where every outer fold is
        validated by one pair fold only (``inner="first"``), a fold's nomination follows its
        pair's sweep, and the maps of the nominated alphas are kept (while they fit in
        2 x limits.GROUP_BYTES) for the sweep over the other voxels, which narrows the candidates
        round by round (``narrowing_sweep``): in feature form all of them fit at LPP scale, and
        that sweep is one pass over the voxels (one X'Y per voxel chunk). The maps that did not
        fit (kernel form: n_v x n_train per alpha) are made again, from a new decomposition, in
        groups of at most 2 x limits.GROUP_BYTES, each group narrowed over the voxels in turn.
        Otherwise (``inner="loro"``) the pair folds' eigenbases are kept where they fit, and the
        maps are made again for one sweep of every voxel.
        """
        n_runs, n_alphas, n_voxels, dev, Y = self.n_runs, self.n_alphas, self.n_voxels, self.dev, self.Y
        everything = np.arange(n_alphas)
        alpha_sets = {o: everything for o in range(n_runs)}
        subset = nomination_voxels(n_voxels)
        checks_of = {}
        for _, _, checks in self.pair_checks:
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
                        chosen = self.standing(r_subset[o])
                        rows_t = self.map_rows(T, idx.size, chosen)
                        if sum(tensor_bytes(m) for _, m in ready.values()) + tensor_bytes(rows_t) <= 2 * limits.GROUP_BYTES:
                            ready[v, o] = (chosen, rows_t)

            self.sweep_groups(alpha_sets, Y.index_select(1, cols), self.ynorm_all.index_select(1, cols), r_subset,
                              kept, on_swept=keep_nominated if kept is None else None,
                              group_bytes=limits.GROUP_BYTES // 2 if kept is None else None)  # room for the kept maps
            candidates = nominated_alphas(r_subset.cpu().numpy().astype(np.float64) / self.n_inner, n_voxels)
            alpha_sets = {o: np.flatnonzero(candidates[o]) for o in range(n_runs)}
            ready = {key: value for key, value in ready.items() if np.array_equal(value[0], alpha_sets[key[1]])}
        val = torch.zeros((n_runs, n_alphas, n_voxels), dtype=f32, device=dev)
        if subset is None or not keep_maps:
            self.sweep_groups(alpha_sets, Y, self.ynorm_all, val, kept, ready)
        else:  # the candidates shrink as the voxels are swept: the kept maps first, then the others
            val.index_copy_(2, cols, r_subset)
            pending = [(train, [(v, o) for v, o in checks if (v, o) not in ready and alpha_sets[o].size])
                       for _, train, checks in self.pair_checks]
            self.narrowing_sweep(subset, alpha_sets, ready, val)
            ready.clear()
            release_freed_memory()  # the kept maps' heap goes back before the next group is made
            for group in self.map_groups([p for p in pending if p[1]], alpha_sets):
                self.narrowing_sweep(subset, alpha_sets, group, val)
                group.clear()
                release_freed_memory()
        ready.clear()
        if kept is not None:
            kept.clear()
        val /= self.n_inner
        mean_r = val.sum(2, dtype=torch.float64).cpu().numpy()
        for o in range(n_runs):
            mean_r[o, np.setdiff1d(everything, alpha_sets[o])] = -np.inf
        best = mean_r.argmax(1)  # first maximum: ties go to the first alpha listed
        validation = val[torch.arange(n_runs, device=dev), torch.from_numpy(best).to(dev)]
        return best, validation.cpu().numpy()

    def val_maps(self, f: Fold, v, idx):
        """Centered prediction maps of run ``v`` for ``alpha_grid[idx]``, (len(idx) * n_v, p) float32.

        Scaled by (s_min + alpha) / (s + alpha): the direction of 1 / (s + alpha) (Pearson r
        ignores the scale) without tiny numbers.
        """
        b = f.B[v] - f.B[v].mean(0, keepdim=True)
        alphas = self.alpha_grid[idx, None]
        w = (f.s.min() + alphas) / (f.s[None, :] + alphas)  # (len(idx), m)
        scaled = b[None] * torch.from_numpy(w).to(self.dev, b.dtype)[:, None, :]
        return scaled.reshape(-1, b.shape[1]).to(f32) @ f.proj.T

    def rhs_of(self, train, left_out, source, xty, xty_all, b0, b1, c0):
        """What a training set's maps multiply for columns b0:b1 of ``source``: (p, b1 - b0) float32."""
        ws = self.ws
        if self.use_kernel(train):
            return torch.index_select(source[:, b0:b1], 0, self.train_index(train),
                                      out=ws.get("targets", (self.n_train(train), b1 - b0), f32))
        rest = torch.sub(xty_all[:, b0 - c0:b1 - c0], xty[left_out[0]][:, b0 - c0:b1 - c0],
                         out=ws.get("rest", (self.n_features, b1 - b0), f32))
        for r in left_out[1:]:
            rest.sub_(xty[r][:, b0 - c0:b1 - c0])
        return rest

    def sweep(self, jobs, source, ynorm, out) -> None:
        """Add validation r to ``out`` (n_runs, n_alphas, n_columns of ``source``).

        ``jobs``: (training runs, left-out runs, [(v, other, alpha indices, maps)]) per pair fold:
        run ``v`` validated for outer fold ``other``.
        """
        ws, rows, dev = self.ws, self.rows, self.dev
        n_cols = source.shape[1]
        feature = any(not self.use_kernel(train) for train, _, _ in jobs)
        chunk = self.chunk
        spans = [(c0, min(n_cols, c0 + chunk)) for c0 in range(0, n_cols, chunk)] if feature else [(0, n_cols)]
        for c0, c1 in spans:
            xty, xty_all = self.xty_of(c0, c1, source) if feature else (None, None)
            for b0, b1 in self.blocks_of(c0, c1):
                for train, left_out, maps in jobs:
                    rhs = self.rhs_of(train, left_out, source, xty, xty_all, b0, b1, c0)
                    for v, other, idx, T in maps:
                        pred = torch.mm(T, rhs, out=ws.get("pred", (T.shape[0], b1 - b0), f32))
                        pred = pred.view(len(idx), -1, b1 - b0)
                        product = torch.mul(pred, source[rows[v], b0:b1], out=ws.get("product", tuple(pred.shape), f32))
                        num = product.sum(1)  # the maps are centered: no need to center y
                        denom = pred.square_().sum(1).sqrt_() * ynorm[v, b0:b1]
                        r = torch.where(denom > 0, num / torch.where(denom > 0, denom, 1.0), 0.0)
                        out[other, torch.from_numpy(idx).to(dev), b0:b1] += r

    def sweep_groups(self, alpha_sets, source, ynorm, out, kept=None, ready=None, on_swept=None,
                     group_bytes=None) -> None:
        """``sweep`` over every validated pair fold; maps not ``ready`` are made in groups of at most limits.GROUP_BYTES.

        ``alpha_sets[o]``: alpha indices to validate for outer fold ``o``. ``ready``: (v, o) ->
        (alpha indices, maps) made earlier (the nomination's, kept): swept as they are, in the
        group of their pair fold. ``kept`` (pair -> Fold): eigenbases kept for a later sweep
        while they fit in 2 x limits.GROUP_BYTES, and reused from an earlier one. ``on_swept(jobs)``
        runs after each group is swept.
        """
        ready = {} if ready is None else ready
        jobs, job_bytes = [], 0

        def flush():
            self.sweep(jobs, source, ynorm, out)
            if on_swept is not None:
                on_swept(jobs)
            jobs.clear()

        for pair, train, checks in self.pair_checks:
            maps = [(v, o, *ready[v, o]) for v, o in checks if (v, o) in ready]
            todo = [(v, o) for v, o in checks if (v, o) not in ready and alpha_sets[o].size]
            size = 0
            if todo:
                fold = (kept or {}).get(pair) or self.make_fold(train, [v for v, _ in checks])
                if kept is not None and pair not in kept and fold_bytes(fold) \
                        + sum(fold_bytes(f) for f in kept.values()) <= 2 * limits.GROUP_BYTES:
                    kept[pair] = fold
                made = [(v, o, alpha_sets[o], self.val_maps(fold, v, alpha_sets[o])) for v, o in todo]
                size = sum(tensor_bytes(m[3]) for m in made)
                if jobs and job_bytes + size > (group_bytes or limits.GROUP_BYTES):
                    flush()
                    job_bytes = 0
                maps += made
            if maps:
                jobs.append((train, list(pair), maps))
                job_bytes += size
        if jobs:
            flush()

    def standing(self, r_fold) -> np.ndarray:
        """Positions of the candidates the nomination rule keeps, from one outer fold's r (n_candidates, n_swept)."""
        return np.flatnonzero(nominated_alphas(r_fold.cpu().numpy().astype(np.float64)[None] / self.n_inner,
                                         self.n_voxels)[0])

    def map_rows(self, T, n_candidates, positions):
        """The rows of the maps ``T`` (n_candidates * n_v, p) of the candidates at ``positions``."""
        return T.view(n_candidates, -1, T.shape[1])[torch.from_numpy(positions).to(self.dev)].reshape(-1, T.shape[1])

    def narrowing_sweep(self, subset, alpha_sets, ready, val) -> None:
        """Sweep the voxels outside ``subset`` round by round; after each, drop the candidates that
        every voxel swept so far rules out (the nomination rule on a growing sample).

        The remaining voxels are laid out stride after stride (each an evenly spaced sample of
        the volume) and cut in rounds of limits.NOMINATION_VOXELS / 2 (a multiple of the block: odd
        product widths are slow), so every prefix of the rounds samples the whole volume. A
        candidate dropped is never swept again; the ones standing at the end have exact r on
        every voxel. Only the (v, o) in ``ready`` are swept. Modifies ``alpha_sets``, ``ready``
        (the maps keep the rows of the standing candidates) and ``val`` (n_runs, n_alphas,
        n_voxels; zero outside ``subset`` for those outer folds).
        """
        dev = self.dev
        sets = {o: np.empty(0, dtype=np.int64) for o in range(self.n_runs)}
        sets.update({o: idx for (_, o), (idx, _) in ready.items()})
        rest = np.setdiff1d(np.arange(self.n_voxels), subset)
        width = max(1, limits.NOMINATION_VOXELS // 2)
        n_rounds = max(1, -(-rest.size // width))
        order = np.concatenate([rest[k::n_rounds] for k in range(n_rounds)])
        swept = [subset]
        for k in range(n_rounds):
            cols_k = order[k * width:(k + 1) * width]
            idx_t = torch.from_numpy(cols_k).to(dev)
            out = torch.zeros((self.n_runs, self.n_alphas, cols_k.size), dtype=f32, device=dev)
            self.sweep_groups(sets, self.Y.index_select(1, idx_t), self.ynorm_all.index_select(1, idx_t), out,
                              None, ready)
            val.index_add_(2, idx_t, out)  # zeros for the outer folds not in `ready`
            swept.append(cols_k)
            if k == n_rounds - 1:
                break
            done = torch.from_numpy(np.concatenate(swept)).to(dev)
            for (v, o), (idx, T) in list(ready.items()):
                if idx.size < 2:
                    continue
                keep = self.standing(val[o].index_select(1, done)[torch.from_numpy(idx).to(dev)])
                if keep.size < idx.size:
                    alpha_sets[o] = sets[o] = idx[keep]
                    ready[v, o] = (idx[keep], self.map_rows(T, idx.size, keep))

    def map_groups(self, pending, alpha_sets):
        """The maps of the (v, o) of ``pending`` [(pair training runs, [(v, o)])], made from a new
        decomposition, in groups of at most 2 x limits.GROUP_BYTES: dicts (v, o) -> (alpha indices, maps)."""
        group, size = {}, 0
        for train, todo in pending:
            p = self.n_train(train) if self.use_kernel(train) else self.n_features
            need = sum(4 * alpha_sets[o].size * self.sizes[v] * p for v, o in todo)
            if group and size + need > 2 * limits.GROUP_BYTES:
                yield group
                group, size = {}, 0
            fold = self.make_fold(train, [v for v, _ in todo])
            group.update({(v, o): (alpha_sets[o], self.val_maps(fold, v, alpha_sets[o])) for v, o in todo})
            size += need
        if group:
            yield group
