"""The torch engine behind ``fit_nested_loro(backend="torch")``: eigenbases shared across folds and alphas.

:func:`mtbench.encoding.fit_nested_loro` checks the inputs and hands them to :class:`EigenRidge`.
How the work is shared:

- one eigendecomposition per training set serves every alpha (kernel form when there are
  more features than training scans, feature form otherwise);
- inner folds come in pairs: the training set of "outer o, inner i" is that of "outer i,
  inner o", so each of the C(n_runs, 2) training sets is decomposed once;
- X'Y is computed once per run and voxel block and every feature-form training set takes
  its projected targets from those sums;
- validation predictions are never stored: one product per pair fold and block of voxels
  gives the norms of every alpha's centered predictions, and the Pearson numerators need
  no predictions at all;
- one pass over chunks of voxels validates, chooses and refits, so nothing of size
  n_alphas x n_scans x n_voxels exists; held-out predictions go chunk by chunk to
  ``on_predictions``;
- one alpha per outer fold has a path of its own (:mod:`mtbench.encoding.eigen_shared`).

``precision="mixed"`` computes only the per-alpha norm products from bfloat16 inputs
(float32 accumulation), as increments between consecutive sorted alphas. The cost model,
the measurements and the accuracy of ``mixed`` against ``float32`` are in ``docs/encoding.md``
("How the torch engine shares work").
"""

from __future__ import annotations

import numpy as np
import torch

from . import limits
from .eigen_parts import (
    Fold,
    PairInputs,
    Workspace,
    concatenated_rows,
    f32,
    f64,
    release_freed_memory,
)
from .eigen_shared import OneAlphaPerFold
from .folds import first_validation_run, inner_pairs
from .scores import EncodingResult, score_per_voxel


class EigenRidge(OneAlphaPerFold):
    """One nested leave-one-run-out ridge fit on torch, sharing eigenbases across folds and alphas.

    Parameters
    ----------
    xs, ys : list of ndarray, shapes (n_scans_r, n_features) and (n_scans_r, n_voxels)
        float32 C-contiguous runs, checked by :func:`mtbench.encoding.fit_nested_loro`.
    alpha_grid : ndarray, shape (n_alphas,), float64
    score : callable
        The test score, ``score(y_true, y_pred) -> (n_voxels,)``.
    shared_alpha, inner, on_refit, on_predictions :
        As in :func:`mtbench.encoding.fit_nested_loro`.
    device : str
        torch device (CUDA checked by the caller).
    precision : {"float32", "mixed"}
        As resolved by :func:`mtbench.encoding.effective_precision`: ``mixed`` only where the
        device multiplies bfloat16 natively.
    outer : list of int
        The outer folds (test runs) to compute, sorted.
    keep_predictions : bool
        Keep the held-out predictions in the result.
    alpha_index : ndarray, shape (n_runs, n_voxels), int64, optional
        Refit only: positions in ``alpha_grid`` of the alpha of each outer fold and voxel.

    Call :meth:`fit` once. The layout (runs, pair folds, groups, blocks, chunks) is fixed here.
    """

    def __init__(self, xs, ys, alpha_grid, score, *, shared_alpha, device, precision, inner, outer,
                 on_refit=None, keep_predictions=True, on_predictions=None, alpha_index=None) -> None:
        self.dev = torch.device(device)
        self.alpha_grid, self.score, self.inner, self.outer = alpha_grid, score, inner, outer
        self.shared_alpha, self.alpha_index = shared_alpha, alpha_index
        self.on_refit, self.on_predictions = on_refit, on_predictions
        self.ys = ys
        self.n_runs, self.n_features, self.n_voxels = len(xs), xs[0].shape[1], ys[0].shape[1]
        self.n_alphas = alpha_grid.size
        self.sizes = [x.shape[0] for x in xs]
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.rows = [slice(int(starts[r]), int(starts[r + 1])) for r in range(self.n_runs)]
        self.n_total = int(starts[-1])
        self.X = torch.from_numpy(concatenated_rows(xs)).to(self.dev)
        self.Y = torch.from_numpy(concatenated_rows(ys)).to(self.dev)  # only read, never written

        pairs = inner_pairs(self.n_runs, inner, outer)
        train_sets = [[r for r in range(self.n_runs) if r not in p] for p in pairs]
        self.outer_sets = [[r for r in range(self.n_runs) if r != o] for o in outer]
        all_sets = train_sets + self.outer_sets
        self.need_xty = not all(self.use_kernel(t) for t in all_sets)
        self.K, self.G, self.gram_dtype = self.shared_grams(all_sets)

        self.pair_checks = [(p, t, self.validations(*p)) for p, t in zip(pairs, train_sets)]
        self.pair_checks = [c for c in self.pair_checks if c[2]]  # e.g. inner="first": pairs nobody validates on
        if alpha_index is not None:  # refit only: the alphas are given, no inner fold is needed
            self.pair_checks = []
        self.groups = self.pair_groups()
        self.n_inner = self.n_runs - 1 if inner == "loro" else 1

        # precision="mixed" (``lo`` = bfloat16): only the per-alpha norm products take bfloat16 inputs,
        # each rounded once from float32 (bfloat16 has float32's exponent range: no rescaling needed,
        # the rounding is relative, <= 2^-9, at any magnitude); they accumulate in float32. They do not
        # give each alpha's prediction but the increment from the previous alpha (in increasing
        # order): B (w~_a - w~_a') z, whose running sum (in float32) is B w~_a z. Rounding errors that
        # differ between alphas then scale with w~_a - w~_a' (tiny where the r curve is flat, e.g. at
        # large alphas, where w~ -> 1) instead of with w~_a, so the ranking of neighbouring alphas,
        # hence the choice, rarely moves (17 alphas at the default shape: 0.4% of voxel-folds instead
        # of 7% with per-alpha rounding).
        self.lo = torch.bfloat16 if precision == "mixed" else f32
        self.order = np.argsort(alpha_grid, kind="stable")
        self.unsort = torch.from_numpy(np.argsort(self.order, kind="stable")).to(self.dev)

        # norm of every run's centered BOLD (the Pearson denominators' other half), (n_runs, n_voxels)
        self.ynorm_all = torch.stack([torch.linalg.vector_norm(self.Y[rw] - self.Y[rw].mean(0, keepdim=True), dim=0)
                                      for rw in self.rows])
        self.block, self.chunk = self.block_and_chunk()
        self.chunks = [(c0, min(self.n_voxels, c0 + self.chunk)) for c0 in range(0, self.n_voxels, self.chunk)]
        self.ws = Workspace(self.dev)
        self.test_per_run = np.full((self.n_runs, self.n_voxels), np.nan, dtype=np.float32)
        self.preds = ([np.empty((self.sizes[o], self.n_voxels), dtype=np.float32) for o in outer]
                      if keep_predictions else None)

    def fit(self) -> EncodingResult:
        """Choose the alphas, refit every outer fold and score its test run."""
        index = self.alpha_index
        uniform = index is not None and bool((index[self.outer] == index[self.outer][:, :1]).all())
        if self.on_refit is None and (uniform or (self.shared_alpha and index is None)):
            return self.fit_one_alpha_per_fold()
        return self.fit_alpha_per_voxel()

    # ------------------------------------------------------------------ layout
    def n_train(self, runs) -> int:
        return sum(self.sizes[r] for r in runs)

    def use_kernel(self, runs) -> bool:
        """Kernel form (Gram of the scans) for a training set with fewer scans than features."""
        return self.n_features > self.n_train(runs)

    def train_index(self, runs):
        return torch.cat([torch.arange(self.rows[r].start, self.rows[r].stop, device=self.dev) for r in runs])

    def shared_grams(self, all_sets):
        """Gram pieces shared by every fold, computed once: K = X X^T (kernel form), G = X^T X (feature form)."""
        X, K, G = self.X, None, None
        if any(self.use_kernel(t) for t in all_sets):
            K = (X @ X.T) if self.n_total > limits.FLOAT64_EIGH_MAX else (X.to(f64) @ X.to(f64).T)
        gram_dtype = f32 if self.n_features > limits.FLOAT64_EIGH_MAX else f64
        if not all(self.use_kernel(t) for t in all_sets):
            G = X.T @ X if gram_dtype == f32 else X.to(f64).T @ X.to(f64)  # X^T X of all runs
        return K, G, gram_dtype

    def validations(self, i, j) -> list[tuple[int, int]]:
        """The inner folds the pair fold (i, j) serves: (v, other) = validated on run v, trained
        without v and ``other``, for outer fold ``other`` (its test run)."""
        out = []
        for v, other in ((i, j), (j, i)):
            if other in self.outer and (self.inner == "loro" or v == first_validation_run(other)):
                out.append((v, other))
        return out

    def pair_groups(self) -> list[list]:
        """The pair folds in groups whose eigenbases and inputs fit in limits.GROUP_BYTES.

        Each group is used over all voxels before the next one is made: at LPP scale all 36
        feature-form folds at d = 576 (~100 MB), 9 at d = 1,536 (13 MB each), 5 kernel-form ones
        (n_train x n_train, ~20 MB each). With one group and an alpha per voxel, validation,
        choice and refit share one pass over the voxels (and its X'Y products).
        """
        groups, group_bytes = [], 0
        for pair, train, checks in self.pair_checks:
            m = min(self.n_features, self.n_train(train))
            size = 4 * m * ((self.n_train(train) if self.use_kernel(train) else self.n_features)
                            + sum(self.sizes[v] for v, _ in checks))
            if groups and group_bytes + size <= limits.GROUP_BYTES:
                groups[-1].append((pair, train, checks))
                group_bytes += size
            else:
                groups.append([(pair, train, checks)])
                group_bytes = size
        return groups

    def block_and_chunk(self) -> tuple[int, int]:
        """Voxels per block and per chunk (a multiple of the block).

        The (n_alphas x rows, block) product output stays within a few MB. Per chunk of blocks,
        each pair fold's per-alpha scaled inputs are made once, and the outer folds are refit;
        the chunk's X'Y products and refit temporaries stay under limits.CHUNK_BYTES.
        """
        sizes, n_voxels = self.sizes, self.n_voxels
        widest = max([sum(min(sizes[v], self.n_train(t)) for v, _ in checks) for _, t, checks in self.pair_checks]
                     + [1])
        block = int(min(n_voxels, max(limits.MIN_BLOCK, min(limits.MAX_BLOCK, limits.BLOCK_BYTES // (4 * widest * self.n_alphas))
                                      // limits.MIN_BLOCK * limits.MIN_BLOCK)))
        # per voxel of a chunk: the runs' X'Y (feature form) and the refit's targets, z, 1 / (s + alpha), z w
        widest_basis = max(min(self.n_features, self.n_train(t)) for t in self.outer_sets)
        kernel_targets = max([self.n_train(t) for t in self.outer_sets if self.use_kernel(t)] + [0])
        per_voxel = (4 * ((self.n_runs + 1) * self.n_features if self.need_xty else 0)
                     + 4 * (5 * widest_basis + kernel_targets))
        return block, int(min(n_voxels, max(block, limits.CHUNK_BYTES // per_voxel // block * block)))

    def blocks_of(self, c0, c1) -> list[tuple[int, int]]:
        return [(b0, min(c1, b0 + self.block)) for b0 in range(c0, c1, self.block)]

    # ------------------------------------------------------------------ training sets
    def feature_gram(self, runs):
        """X_T^T X_T of the training runs ``runs``: all runs' Gram minus the left-out runs' (made here).

        Only the total is kept: per-run Grams would hold n_runs x n_features^2 (85 MB at d = 1,536),
        and the left-out runs' cost 2 x n_scans x n_features^2 each, small beside the fold's work.
        """
        gram = self.G.clone()
        for r in range(self.n_runs):
            if r not in runs:
                x = self.X[self.rows[r]].to(self.gram_dtype)
                gram.addmm_(x.T, x, alpha=-1)
        return gram

    def make_fold(self, runs, targets) -> Fold:
        """Eigendecompose the training set ``runs``; prediction maps for the runs ``targets``."""
        kernel = self.use_kernel(runs)
        if kernel:
            idx = self.train_index(runs)
            gram = self.K[idx][:, idx]
        else:
            gram = self.feature_gram(runs)
        dtype = gram.dtype if gram.shape[0] > limits.FLOAT64_EIGH_MAX else f64
        s, vecs = torch.linalg.eigh(gram.to(dtype))
        s = s.clamp_min(0)
        if kernel:
            B = {v: self.K[self.rows[v]][:, idx].to(dtype) @ vecs for v in targets}
        else:
            B = {v: self.X[self.rows[v]].to(dtype) @ vecs for v in targets}
        return Fold(list(runs), kernel, s.cpu().numpy().astype(np.float64), vecs.to(f32), B)

    def solve_map(self, runs, o, alpha):
        """Test map of outer fold ``o`` (trained on ``runs``): X_o (X_T^T X_T + alpha I)^-1 (feature form)
        or K_oT (K_TT + alpha I)^-1 (kernel form), (n_o, p) float32; Cholesky in float64."""
        if self.use_kernel(runs):
            idx = self.train_index(runs)
            gram, left = self.K[idx][:, idx].to(f64), self.K[self.rows[o]][:, idx].to(f64)
        else:
            gram, left = self.feature_gram(runs).to(f64), self.X[self.rows[o]].to(f64)
        gram.diagonal().add_(alpha)
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            return torch.cholesky_solve(left.T, chol).T.to(f32)
        s, vecs = torch.linalg.eigh(gram)  # rounding made it indefinite: clamp as make_fold does
        return (((left @ vecs) / s.clamp_min(alpha)) @ vecs.T).to(f32)

    # ------------------------------------------------------------------ products over voxels
    def xty_of(self, c0, c1, source=None):
        """X_r^T Y_r of every run for voxels c0:c1 of ``source`` (default Y; feature-form folds), and their sum."""
        if not self.need_xty:
            return None, None
        ws, n_features = self.ws, self.n_features
        yc = (self.Y if source is None else source)[:, c0:c1]
        xty = [torch.mm(self.X[rw].T, yc[rw], out=ws.get(f"xty{r}", (n_features, c1 - c0), f32))
               for r, rw in enumerate(self.rows)]
        total = ws.get("xty_all", (n_features, c1 - c0), f32).copy_(xty[0])
        for part in xty[1:]:
            total.add_(part)
        return xty, total

    def projected(self, proj, xty_all, left_out, c1_c0):
        """``proj^T (X'Y_all - sum of X'Y_left_out)``: the targets of a training set, (m, block)."""
        rest = torch.sub(xty_all, left_out[0], out=self.ws.get("rest", tuple(xty_all.shape), f32))
        for part in left_out[1:]:
            rest.sub_(part)
        return torch.mm(proj.T, rest, out=self.ws.get("z", (proj.shape[1], c1_c0), f32))

    def outside_run(self, M, o, c0, c1):
        """``M`` (n, n_scans - n_o) times the BOLD of every run but ``o`` (in run order), voxels c0:c1:
        (n, c1 - c0), from the two stretches of ``Y`` around run ``o`` (no copy of the training rows)."""
        a, b = self.rows[o].start, self.rows[o].stop
        return torch.mm(M[:, :a], self.Y[:a, c0:c1]).addmm_(M[:, a:], self.Y[b:, c0:c1])

    # ------------------------------------------------------------------ alpha per voxel
    def pair_inputs(self, f: Fold, checks) -> PairInputs:
        """What the validation of one pair fold needs for every voxel block.

        Per validated run: centered B (for the numerator) and a matrix with the same column Gram
        (for the norm of the centered predictions): R of a QR when that is smaller than B.
        Scaled per alpha by w~_a = (s_min + a) / (s + a): the same direction as 1 / (s + a)
        (Pearson r ignores the scale) without tiny numbers.
        """
        alpha_grid = self.alpha_grid
        w = (f.s.min() + alpha_grid[:, None]) / (f.s[None, :] + alpha_grid[:, None])  # (n_alphas, m)
        bc, rs = {}, []
        for v, _ in checks:
            b = f.B[v] - f.B[v].mean(0, keepdim=True)
            bc[v] = b.to(f32)
            rs.append((torch.linalg.qr(b, mode="r")[1] if b.shape[0] > b.shape[1] else b).to(f32))
        edges = np.cumsum([0] + [r.shape[0] for r in rs])
        stack = torch.cat(rs, 0)
        rows_are_scans = all(r.shape == bc[v].shape for r, (v, _) in zip(rs, checks))
        if rows_are_scans:  # no QR: the stack holds the centered B themselves, share them
            bc = {v: stack[edges[k]:edges[k + 1]] for k, (v, _) in enumerate(checks)}
        # float32: every alpha's weights; bfloat16: the increments between sorted alphas
        steps = w if self.lo == f32 else np.diff(w[self.order], axis=0, prepend=0.0)
        f.B = {}  # the rest is in num / stack
        return PairInputs(bc, stack, edges, torch.from_numpy(w).to(self.dev, f32),
                           torch.from_numpy(steps.T.copy()).to(self.dev, f32),
                           self.train_index(f.train) if f.kernel else None, rows_are_scans)

    def make_group(self, group) -> list[tuple[Fold, PairInputs, tuple]]:
        """The pair folds of ``group`` with what their validation needs."""
        folds = (self.make_fold(t, [v for v, _ in checks]) for _, t, checks in group)
        return [(f, self.pair_inputs(f, c[2]), c) for f, c in zip(folds, group)]

    def tall_of(self, data: PairInputs):
        """Every alpha's scaled inputs stacked, (n_alphas x rows, m) in ``lo``: one product per block.

        The per-alpha factors multiply the inputs (not the coefficients z), so the rounding of
        each alpha's bfloat16 copy differs from row to row and largely averages out in the norms;
        rounding alpha-scaled z instead would shift every row's prediction coherently (measured:
        3.6x more alpha choices moved against float32).
        """
        n_rows, m = data.stack.shape
        tall = self.ws.get("tall", (self.n_alphas, n_rows, m), self.lo)
        for a in range(self.n_alphas):  # written (and rounded) straight into the workspace
            torch.mul(data.stack, data.scale[:, a], out=tall[a])
        return tall.view(-1, m)

    def validate_pair(self, f, data, tall, pair, checks, c0, c1, xty, xty_all, val) -> None:
        """Add one pair fold's validation r of voxels c0:c1 to ``val`` (n_runs, n_alphas, c1 - c0)."""
        ws, lo, n_alphas = self.ws, self.lo, self.n_alphas
        i, j = pair
        yc = self.Y[:, c0:c1]
        if f.kernel:
            targets = torch.index_select(yc, 0, data.train_idx,
                                         out=ws.get("targets", (len(data.train_idx), c1 - c0), f32))
            z = torch.mm(f.proj.T, targets, out=ws.get("z", (f.proj.shape[1], c1 - c0), f32))
        else:
            z = self.projected(f.proj, xty_all, [xty[i], xty[j]], c1 - c0)
        # predictions (float32) or their increments between sorted alphas (bfloat16) of all alphas
        z_lo = z if lo == f32 else ws.get("z_lo", tuple(z.shape), lo).copy_(z)
        pred = torch.mm(tall, z_lo, out=ws.get("pred_lo", (tall.shape[0], c1 - c0), lo)).view(n_alphas, -1, c1 - c0)
        if lo != f32:  # increments in sorted order -> running sums in float32
            pred = ws.get("pred", tuple(pred.shape), f32).copy_(pred)
            for a in range(1, n_alphas):  # 3x faster than torch.cumsum over dim 0 here
                pred[a].add_(pred[a - 1])
        nums = [self.numerator(data, pred, k, v, yc, z) for k, (v, _) in enumerate(checks)]
        pred.square_()  # then column sums per run (several times faster than vector_norm here)
        for k, (v, other) in enumerate(checks):
            norm = pred[:, data.edges[k]:data.edges[k + 1]].sum(1).sqrt_()  # (n_alphas, block)
            if lo != f32:
                norm = norm.index_select(0, self.unsort)
            num = nums[k]
            denom = norm * self.ynorm_all[v, c0:c1][None, :]
            val[other] += torch.where(denom > 0, num / torch.where(denom > 0, denom, 1.0), 0.0)

    def numerator(self, data, pred, k, v, yc, z):
        """Pearson numerators of validated run ``v`` for every alpha, (n_alphas, block).

        In float32, where the stack's rows are the run's scans, ``pred`` holds its centered
        predictions and the numerator is their product with the BOLD (n_v multiply-adds per alpha
        and voxel); otherwise ``w~ (B_c^T Y_v * z)`` (m x n_v per voxel, ~10x more at the main
        job's shape). In mixed precision the predictions carry bfloat16 rounding: numerators taken
        from them moved 4x more alpha choices against float32 (measured), so they stay exact.
        """
        if self.lo != f32 or not data.rows_are_scans:
            return data.w @ ((data.num[v].T @ yc[self.rows[v]]) * z)
        rows = pred[:, data.edges[k]:data.edges[k + 1]]  # (n_alphas, n_v, block)
        products = torch.mul(rows, yc[self.rows[v]][None], out=self.ws.get("products", tuple(rows.shape), f32))
        return products.sum(1)

    def validate(self, ready, c0, c1, val, xty=None, xty_all=None):
        """Add the validation r of the pair folds ``ready`` for voxels c0:c1 to ``val`` (n_runs, n_alphas, c1 - c0)."""
        if xty is None and any(not f.kernel for f, _, _ in ready):
            xty, xty_all = self.xty_of(c0, c1)
        for f, data, (pair, _, checks) in ready:
            tall = self.tall_of(data)
            for b0, b1 in self.blocks_of(c0, c1):
                sub = None if xty is None else [x[:, b0 - c0:b1 - c0] for x in xty]
                sub_all = None if xty is None else xty_all[:, b0 - c0:b1 - c0]
                self.validate_pair(f, data, tall, pair, checks, b0, b1, sub, sub_all, val[:, :, b0 - c0:b1 - c0])
        return xty, xty_all

    def fit_alpha_per_voxel(self) -> EncodingResult:
        """Validate every alpha on every voxel, choose per voxel (or the best voxel mean) and refit.

        With one group of pair folds and an alpha per voxel, one pass over the chunks validates,
        chooses and refits; otherwise every voxel is validated first, group by group, then refit.
        """
        n_runs, n_voxels, dev = self.n_runs, self.n_voxels, self.dev
        fused = len(self.groups) == 1 and not self.shared_alpha
        val_all = None
        ready = self.make_group(self.groups[0]) if fused else None
        if not fused and self.alpha_index is None:  # every voxel validated first, group by group
            val_all = torch.zeros((n_runs, self.n_alphas, n_voxels), dtype=f32, device=dev)
            for group in self.groups:
                ready = self.make_group(group)
                for c0, c1 in (self.chunks if any(not f.kernel for f, _, _ in ready) else [(0, n_voxels)]):
                    self.validate(ready, c0, c1, val_all[:, :, c0:c1])
                ready = None
            val_all /= self.n_inner

        release_freed_memory()  # the pair folds' heap goes back before the outer eigenbases are made
        self.make_outer_folds()
        validation = torch.empty((n_runs, n_voxels), dtype=f32, device=dev)
        best_all = torch.empty((n_runs, n_voxels), dtype=torch.long, device=dev)
        if self.alpha_index is not None:  # refit only, with the given alphas
            best_all[:] = torch.from_numpy(self.alpha_index).to(dev)
            validation[:] = float("nan")
            for c0, c1 in self.chunks:
                self.refit(c0, c1, best_all[:, c0:c1], *self.xty_of(c0, c1))
        elif not fused:
            if self.shared_alpha:  # first maximum of the voxel-mean r: ties go to the first alpha listed
                best_all[:] = val_all.sum(2, dtype=torch.float64).argmax(1)[:, None]
            else:
                best_all[:] = val_all.argmax(1)
            validation[:] = val_all.gather(1, best_all[:, None, :])[:, 0]
            del val_all
            for c0, c1 in self.chunks:
                self.refit(c0, c1, best_all[:, c0:c1], *self.xty_of(c0, c1))
        else:  # alpha per voxel: validate, choose and refit chunk by chunk in one pass
            for c0, c1 in self.chunks:
                xty, xty_all = self.xty_of(c0, c1)
                val = torch.zeros((n_runs, self.n_alphas, c1 - c0), dtype=f32, device=dev)
                self.validate(ready, c0, c1, val, xty, xty_all)
                val /= self.n_inner
                best = val.argmax(1)  # (n_runs, block); first maximum: ties go to the first alpha listed
                best_all[:, c0:c1] = best
                validation[:, c0:c1] = val.gather(1, best[:, None, :])[:, 0]
                self.refit(c0, c1, best, xty, xty_all)
        return self.result(best_all.cpu().numpy(), validation.cpu().numpy())

    def make_outer_folds(self) -> None:
        """Outer folds (all runs but the test run o): eigenbasis kept for the refit of every block."""
        self.outer_folds = [self.make_fold(t, [o]) for t, o in zip(self.outer_sets, self.outer)]
        self.outer_idx = [self.train_index(f.train) if f.kernel else None for f in self.outer_folds]
        self.test_maps = self.make_test_maps() if self.on_refit is None else None
        for f, o in zip(self.outer_folds, self.outer):
            f.B = {"test": f.B[o].to(f32)}  # (n_o, m): coefficients -> predictions of the test run
        self.K = self.G = None  # every eigenbasis is made: the Gram pieces are no longer needed
        self.alpha_t = torch.from_numpy(self.alpha_grid).to(self.dev, f64)
        self.outer_s = [torch.from_numpy(f.s).to(self.dev, f64) for f in self.outer_folds]
        self.coef_maps = None
        if self.on_refit is not None:  # coefficients = coef_map @ (z * w): E (feature form) or X_T^T U (kernel form)
            self.coef_maps = [self.X.index_select(0, idx).T @ f.proj if f.kernel else f.proj
                              for f, idx in zip(self.outer_folds, self.outer_idx)]

    def make_test_maps(self):
        """Per outer fold, every alpha's map from the training targets to the test run's predictions,
        (n_alphas, n_o, n_train) (kernel form: K_oT (K_TT + alpha I)^-1) or (n_alphas, n_o, n_features)
        (feature form: X_o (X_T^T X_T + alpha I)^-1), float32 from float64; None when they, and the
        BOLD transposed for the kernel form, would exceed limits.TEST_MAP_BYTES.

        With them a voxel's refit costs n_o x n_train (or n_features) multiply-adds instead of the
        coefficients' m x n_train plus n_o x m: at the main job's shape a quarter of the products.
        """
        kernel = any(f.kernel for f in self.outer_folds)
        sources = [self.n_train(f.train) if f.kernel else self.n_features for f in self.outer_folds]
        size = sum(4 * self.n_alphas * self.sizes[o] * n for o, n in zip(self.outer, sources))
        if size + (4 * self.Y.numel() if kernel else 0) > limits.TEST_MAP_BYTES:
            return None
        # voxels in rows: the voxels of one alpha are then gathered as whole rows (columns: 10x slower)
        self.Yt = self.Y.T.contiguous() if kernel else None
        alphas = torch.from_numpy(self.alpha_grid).to(self.dev, f64)[:, None, None]
        maps = []
        for f, o in zip(self.outer_folds, self.outer):
            s = torch.from_numpy(f.s).to(self.dev, f64)
            scaled = f.B[o].to(f64)[None] / (s[None, None, :] + alphas)  # (n_alphas, n_o, m)
            maps.append((scaled @ f.proj.to(f64).T).to(f32))
        return maps

    def predict_with_maps(self, k, o, c0, c1, chosen, xty, xty_all):
        """Test predictions of outer fold ``o`` for voxels c0:c1, (n_o, c1 - c0): each alpha's map
        times the training targets of the voxels that chose it (``chosen``: alpha positions, (c1 - c0,))."""
        maps, kernel = self.test_maps[k], self.outer_folds[k].kernel
        if kernel:  # (voxels, scans): the BOLD of every run, o's rows skipped by apply_map
            source = self.Yt[c0:c1]
        else:  # (voxels, n_features): X'Y of the training runs
            source = torch.sub(xty_all, xty[o], out=self.ws.get("rest", tuple(xty_all.shape), f32)).T.contiguous()
        counts = torch.bincount(chosen, minlength=self.n_alphas).tolist()
        if max(counts) == c1 - c0:  # one alpha for every voxel
            return self.apply_map(maps[counts.index(c1 - c0)], source, o, kernel).T.contiguous()
        order = torch.argsort(chosen, stable=True)
        pred = torch.empty((c1 - c0, self.sizes[o]), dtype=f32, device=self.dev)
        start = 0
        for value, count in enumerate(counts):
            if count:
                rows = order[start:start + count]
                pred.index_copy_(0, rows, self.apply_map(maps[value], source.index_select(0, rows), o, kernel))
                start += count
        return pred.T.contiguous()

    def apply_map(self, test_map, source, o, kernel):
        """Predictions (voxels, n_o) of the voxels in the rows of ``source``: their training
        targets times ``test_map`` (kernel form: the columns around run ``o``'s scans)."""
        if not kernel:
            return source @ test_map.T
        a, b = self.rows[o].start, self.rows[o].stop
        return torch.mm(source[:, :a], test_map[:, :a].T).addmm_(source[:, b:], test_map[:, a:].T)

    def refit(self, c0, c1, best, xty, xty_all) -> None:
        """Refit every outer fold on its training runs with the chosen alphas ``best`` (n_runs, c1 - c0);
        score its test run."""
        # what the last block freed (its predictions, the p-values' buffers) goes back first:
        # the heap would otherwise keep growing in fragments beside the held eigenbases
        release_freed_memory()
        ws, block_preds = self.ws, []
        for k, (o, f) in enumerate(zip(self.outer, self.outer_folds)):
            if self.test_maps is not None:
                pred = self.predict_with_maps(k, o, c0, c1, best[o], xty, xty_all)
                self.deliver(k, o, c0, c1, pred.cpu().numpy(), block_preds)
                continue
            m = f.proj.shape[1]
            if f.kernel:
                targets = torch.index_select(self.Y[:, c0:c1], 0, self.outer_idx[k],
                                             out=ws.get("targets", (len(self.outer_idx[k]), c1 - c0), f32))
                z = torch.mm(f.proj.T, targets, out=ws.get("z", (m, c1 - c0), f32))
            else:  # X'Y of the training runs: all runs' sum minus the test run's (no new product)
                z = self.projected(f.proj, xty_all, [xty[o]], c1 - c0)
            w = torch.add(self.outer_s[k][:, None], self.alpha_t[best[o]][None, :], out=ws.get("w", (m, c1 - c0), f64))
            zw = torch.div(z, w, out=ws.get("zw", (m, c1 - c0), f32))  # z / (s + alpha), (m, block)
            self.deliver(k, o, c0, c1, (f.B["test"] @ zw).cpu().numpy(), block_preds)
            if self.on_refit is not None:
                self.on_refit(o, c0, c1, (self.coef_maps[k] @ zw).cpu().numpy())
        if self.on_predictions is not None:
            self.on_predictions(c0, c1, block_preds)

    # ------------------------------------------------------------------ results
    def deliver(self, k, o, c0, c1, pred, block_preds) -> None:
        """Score outer fold ``o``'s test predictions of voxels c0:c1, (n_o, c1 - c0), and keep them."""
        self.test_per_run[o, c0:c1] = score_per_voxel(self.score, self.ys[o][:, c0:c1], pred)
        if self.preds is not None:
            self.preds[k][:, c0:c1] = pred
        block_preds.append(pred)

    def result(self, best_all, validation) -> EncodingResult:
        """The EncodingResult of chosen alpha indices and validation r, both (n_runs, n_voxels) numpy."""
        outer = self.outer
        validation = validation.astype(np.float32)
        chosen = self.alpha_grid[best_all]  # (n_runs, n_voxels)
        skipped = np.setdiff1d(np.arange(self.n_runs), outer)
        validation[skipped] = np.nan
        chosen[skipped] = np.nan
        return EncodingResult(
            test=self.test_per_run[outer].mean(0).astype(np.float32),
            validation=validation[outer].mean(0).astype(np.float32),
            alpha=np.exp(np.log(chosen[outer]).mean(0)).astype(np.float32),
            test_per_run=self.test_per_run,
            validation_per_run=validation,
            alpha_per_run=chosen.astype(np.float32),
            predictions=self.preds,
        )
