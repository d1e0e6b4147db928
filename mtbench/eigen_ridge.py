"""The shared-eigenbasis engine behind ``fit_nested_loro(backend="torch")`` (internal).

:func:`mtbench.encoding.fit_nested_loro` checks the inputs and hands them to
:class:`EigenRidge`; this module says how the work is shared, what it costs and what
``precision="mixed"`` changes.

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
  fold and chunk of voxels) gives the norms of the centered predictions of every alpha; the
  numerator of Pearson r needs no predictions at all:
  ``<B_v (w_a * z), y_v> = sum_k w_a[k] (B_v^T y_v)[k] z[k]``, one small product for all alphas.
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

``precision="mixed"`` computes only those per-alpha norm products from bfloat16 inputs
(float32 accumulation); eigendecompositions, projections, the Pearson numerators, the refit,
the test predictions and scores stay as with ``float32``. The products give the increments
between consecutive (sorted) alphas, summed in float32, so that rounding errors which differ
between alphas stay proportional to the change of the alpha's weights and rarely reorder
neighbouring alphas. Measured at the default run's shape: the alpha sweep (products, running
sums, norms) 2.1-2.2x faster (the bfloat16 products alone ~830 vs ~200 GFLOP/s), per call
0.36-0.38 s with 9 alphas (1.55x) and 0.48-0.50 s with 17 (1.8x). Accuracy against
``float32`` on synthetic data of that shape (random features, correlated or not, signal
planted in 40% of the voxels, noise):

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
choices, test r by <= 2.5e-4. Because of the near-tie flips ``float32`` stays the default
of ``fit_nested_loro`` (and the MindTransformer protocol's).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .encoding import EncodingResult, _checked_score, _first_validation_run, _inner_pairs

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
# Bytes of pair-fold eigenbases and inputs held at once (see EigenRidge.pair_groups).
_GROUP_BYTES = 128 * 2**20
# Shared alpha: candidates are swept first on this many evenly spaced voxels (fits of at least
# 4 times as many), and kept when within _NOMINATION_Z standard errors of the leader.
_NOMINATION_VOXELS = 2048
_NOMINATION_Z = 6.0

f32, f64 = torch.float32, torch.float64


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


@dataclass
class _PairInputs:
    """What the per-voxel validation of one pair fold needs for every block (see ``pair_inputs``)."""

    num: dict  # validated run -> centered B (n_v, m) float32, for the Pearson numerators
    stack: Any  # (rows, m) float32: same column Gram as the centered B of every validated run
    edges: np.ndarray  # row offsets of each validated run in ``stack``
    w: Any  # (n_alphas, m) float32: w~_a
    scale: Any  # (m, n_alphas) float32: w~_a (float32) or the increments between sorted alphas
    train_idx: Any  # kernel form: rows of the training runs


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
        numel = int(np.prod(shape))
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            buffer = self.buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel].view(shape)


class EigenRidge:
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
        self.X = torch.from_numpy(_concatenated_rows(xs)).to(self.dev)
        self.Y = torch.from_numpy(_concatenated_rows(ys)).to(self.dev)  # only read, never written

        pairs = _inner_pairs(self.n_runs, inner, outer)
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
        self.ws = _Workspace(self.dev)
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
            K = (X @ X.T) if self.n_total > _FLOAT64_EIGH_MAX else (X.to(f64) @ X.to(f64).T)
        gram_dtype = f32 if self.n_features > _FLOAT64_EIGH_MAX else f64
        if not all(self.use_kernel(t) for t in all_sets):
            G = X.T @ X if gram_dtype == f32 else X.to(f64).T @ X.to(f64)  # X^T X of all runs
        return K, G, gram_dtype

    def validations(self, i, j) -> list[tuple[int, int]]:
        """The inner folds the pair fold (i, j) serves: (v, other) = validated on run v, trained
        without v and ``other``, for outer fold ``other`` (its test run)."""
        out = []
        for v, other in ((i, j), (j, i)):
            if other in self.outer and (self.inner == "loro" or v == _first_validation_run(other)):
                out.append((v, other))
        return out

    def pair_groups(self) -> list[list]:
        """The pair folds in groups whose eigenbases and inputs fit in _GROUP_BYTES.

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
            if groups and group_bytes + size <= _GROUP_BYTES:
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
        the chunk's X'Y products and refit temporaries stay under _CHUNK_BYTES.
        """
        sizes, n_voxels = self.sizes, self.n_voxels
        widest = max([sum(min(sizes[v], self.n_train(t)) for v, _ in checks) for _, t, checks in self.pair_checks]
                     + [1])
        block = int(min(n_voxels, max(_MIN_BLOCK, min(_MAX_BLOCK, _BLOCK_BYTES // (4 * widest * self.n_alphas))
                                      // _MIN_BLOCK * _MIN_BLOCK)))
        # per voxel of a chunk: the runs' X'Y (feature form) and the refit's targets, z, 1 / (s + alpha), z w
        widest_basis = max(min(self.n_features, self.n_train(t)) for t in self.outer_sets)
        kernel_targets = max([self.n_train(t) for t in self.outer_sets if self.use_kernel(t)] + [0])
        per_voxel = (4 * ((self.n_runs + 1) * self.n_features if self.need_xty else 0)
                     + 4 * (5 * widest_basis + kernel_targets))
        return block, int(min(n_voxels, max(block, _CHUNK_BYTES // per_voxel // block * block)))

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

    def make_fold(self, runs, targets) -> _Fold:
        """Eigendecompose the training set ``runs``; prediction maps for the runs ``targets``."""
        kernel = self.use_kernel(runs)
        if kernel:
            idx = self.train_index(runs)
            gram = self.K[idx][:, idx]
        else:
            gram = self.feature_gram(runs)
        dtype = gram.dtype if gram.shape[0] > _FLOAT64_EIGH_MAX else f64
        s, vecs = torch.linalg.eigh(gram.to(dtype))
        s = s.clamp_min(0)
        if kernel:
            B = {v: self.K[self.rows[v]][:, idx].to(dtype) @ vecs for v in targets}
        else:
            B = {v: self.X[self.rows[v]].to(dtype) @ vecs for v in targets}
        return _Fold(list(runs), kernel, s.cpu().numpy().astype(np.float64), vecs.to(f32), B)

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
    def pair_inputs(self, f: _Fold, checks) -> _PairInputs:
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
        if all(r.shape == bc[v].shape for r, (v, _) in zip(rs, checks)):
            # no QR: the stack holds the centered B themselves, share them
            bc = {v: stack[edges[k]:edges[k + 1]] for k, (v, _) in enumerate(checks)}
        # float32: every alpha's weights; bfloat16: the increments between sorted alphas
        steps = w if self.lo == f32 else np.diff(w[self.order], axis=0, prepend=0.0)
        f.B = {}  # the rest is in num / stack
        return _PairInputs(bc, stack, edges, torch.from_numpy(w).to(self.dev, f32),
                           torch.from_numpy(steps.T.copy()).to(self.dev, f32),
                           self.train_index(f.train) if f.kernel else None)

    def make_group(self, group) -> list[tuple[_Fold, _PairInputs, tuple]]:
        """The pair folds of ``group`` with what their validation needs."""
        folds = (self.make_fold(t, [v for v, _ in checks]) for _, t, checks in group)
        return [(f, self.pair_inputs(f, c[2]), c) for f, c in zip(folds, group)]

    def tall_of(self, data: _PairInputs):
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
            for a in range(1, n_alphas):
                pred[a].add_(pred[a - 1])
        pred.square_()  # then column sums per run (several times faster than vector_norm here)
        for k, (v, other) in enumerate(checks):
            norm = pred[:, data.edges[k]:data.edges[k + 1]].sum(1).sqrt_()  # (n_alphas, block)
            if lo != f32:
                norm = norm.index_select(0, self.unsort)
            num = data.w @ ((data.num[v].T @ yc[self.rows[v]]) * z)  # (n_alphas, block)
            denom = norm * self.ynorm_all[v, c0:c1][None, :]
            val[other] += torch.where(denom > 0, num / torch.where(denom > 0, denom, 1.0), 0.0)

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

        _release_freed_memory()  # the pair folds' heap goes back before the outer eigenbases are made
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
        for f, o in zip(self.outer_folds, self.outer):
            f.B = {"test": f.B[o].to(f32)}  # (n_o, m): coefficients -> predictions of the test run
        self.K = self.G = None  # every eigenbasis is made: the Gram pieces are no longer needed
        self.alpha_t = torch.from_numpy(self.alpha_grid).to(self.dev, f64)
        self.outer_s = [torch.from_numpy(f.s).to(self.dev, f64) for f in self.outer_folds]
        self.coef_maps = None
        if self.on_refit is not None:  # coefficients = coef_map @ (z * w): E (feature form) or X_T^T U (kernel form)
            self.coef_maps = [self.X.index_select(0, idx).T @ f.proj if f.kernel else f.proj
                              for f, idx in zip(self.outer_folds, self.outer_idx)]

    def refit(self, c0, c1, best, xty, xty_all) -> None:
        """Refit every outer fold on its training runs with the chosen alphas ``best`` (n_runs, c1 - c0);
        score its test run."""
        # what the last block freed (its predictions, the p-values' buffers) goes back first:
        # the heap would otherwise keep growing in fragments beside the held eigenbases
        _release_freed_memory()
        ws, block_preds = self.ws, []
        for k, (o, f) in enumerate(zip(self.outer, self.outer_folds)):
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
        self.test_per_run[o, c0:c1] = _checked_score(self.score, self.ys[o][:, c0:c1], pred)
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

    # ------------------------------------------------------------------ one alpha per outer fold
    # When every voxel of an outer fold takes the same alpha (shared alpha, or given alphas equal
    # across voxels), a training set's ridge solution for that alpha is one linear map of its
    # targets: the predictions of run v are T @ rhs with T = B_v diag(1 / (s + alpha)) proj^T
    # (n_v x p) and rhs the training set's X'Y (feature form) or targets (kernel form). No
    # projected targets Z (m x p per voxel) are made: validation costs n_val x p per voxel and
    # alpha, the refit n_test x p. The alphas are first swept on an evenly spaced subset of
    # _NOMINATION_VOXELS voxels; only those whose subset mean r could still be the best (within
    # _NOMINATION_Z standard errors of the leader) are validated on every voxel, exactly, and the
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
            _release_freed_memory()  # as in refit(): the last block's buffers go back first
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
        2 x _GROUP_BYTES) for the sweep over the other voxels, which narrows the candidates
        round by round (``narrowing_sweep``): in feature form all of them fit at LPP scale, and
        that sweep is one pass over the voxels (one X'Y per voxel chunk). The maps that did not
        fit (kernel form: n_v x n_train per alpha) are made again, from a new decomposition, in
        groups of at most 2 x _GROUP_BYTES, each group narrowed over the voxels in turn.
        Otherwise (``inner="loro"``) the pair folds' eigenbases are kept where they fit, and the
        maps are made again for one sweep of every voxel.
        """
        n_runs, n_alphas, n_voxels, dev, Y = self.n_runs, self.n_alphas, self.n_voxels, self.dev, self.Y
        everything = np.arange(n_alphas)
        alpha_sets = {o: everything for o in range(n_runs)}
        subset = _nomination_voxels(n_voxels)
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
                        if sum(_tensor_bytes(m) for _, m in ready.values()) + _tensor_bytes(rows_t) <= 2 * _GROUP_BYTES:
                            ready[v, o] = (chosen, rows_t)

            self.sweep_groups(alpha_sets, Y.index_select(1, cols), self.ynorm_all.index_select(1, cols), r_subset,
                              kept, on_swept=keep_nominated if kept is None else None,
                              group_bytes=_GROUP_BYTES // 2 if kept is None else None)  # room for the kept maps
            nominated = _nominated(r_subset.cpu().numpy().astype(np.float64) / self.n_inner, n_voxels)
            alpha_sets = {o: np.flatnonzero(nominated[o]) for o in range(n_runs)}
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
            _release_freed_memory()  # the kept maps' heap goes back before the next group is made
            for group in self.map_groups([p for p in pending if p[1]], alpha_sets):
                self.narrowing_sweep(subset, alpha_sets, group, val)
                group.clear()
                _release_freed_memory()
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

    def val_maps(self, f: _Fold, v, idx):
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
                if kept is not None and pair not in kept and _fold_bytes(fold) \
                        + sum(_fold_bytes(f) for f in kept.values()) <= 2 * _GROUP_BYTES:
                    kept[pair] = fold
                made = [(v, o, alpha_sets[o], self.val_maps(fold, v, alpha_sets[o])) for v, o in todo]
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

    def standing(self, r_fold) -> np.ndarray:
        """Positions of the candidates the nomination rule keeps, from one outer fold's r (n_candidates, n_swept)."""
        return np.flatnonzero(_nominated(r_fold.cpu().numpy().astype(np.float64)[None] / self.n_inner,
                                         self.n_voxels)[0])

    def map_rows(self, T, n_candidates, positions):
        """The rows of the maps ``T`` (n_candidates * n_v, p) of the candidates at ``positions``."""
        return T.view(n_candidates, -1, T.shape[1])[torch.from_numpy(positions).to(self.dev)].reshape(-1, T.shape[1])

    def narrowing_sweep(self, subset, alpha_sets, ready, val) -> None:
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
        dev = self.dev
        sets = {o: np.empty(0, dtype=np.int64) for o in range(self.n_runs)}
        sets.update({o: idx for (_, o), (idx, _) in ready.items()})
        rest = np.setdiff1d(np.arange(self.n_voxels), subset)
        width = max(1, _NOMINATION_VOXELS // 2)
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
        decomposition, in groups of at most 2 x _GROUP_BYTES: dicts (v, o) -> (alpha indices, maps)."""
        group, size = {}, 0
        for train, todo in pending:
            p = self.n_train(train) if self.use_kernel(train) else self.n_features
            need = sum(4 * alpha_sets[o].size * self.sizes[v] * p for v, o in todo)
            if group and size + need > 2 * _GROUP_BYTES:
                yield group
                group, size = {}, 0
            fold = self.make_fold(train, [v for v, _ in todo])
            group.update({(v, o): (alpha_sets[o], self.val_maps(fold, v, alpha_sets[o])) for v, o in todo})
            size += need
        if group:
            yield group


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
