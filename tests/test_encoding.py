"""Nested leave-one-run-out ridge (mtbench.encoding): equivalence, mixed precision, leakage, recovery, errors.

The reference implementation below is deliberately naive: loops over outer folds, inner
folds and alphas, one scikit-learn ``Ridge(alpha, fit_intercept=False)`` per fit (float64),
per-voxel alpha by argmax of the mean validation r, refit per chosen alpha.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from mtbench.alignment import zscore
from mtbench.encoding import EncodingResult, fit_nested_loro, pearson_r
from mtbench.errors import MtbenchError

ALPHAS = np.logspace(-1, 4, 11)


# --------------------------------------------------------------------------- reference
def _ridge_predict(x_train, y_train, x_test, alpha):
    model = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky")
    return model.fit(x_train.astype(np.float64), y_train.astype(np.float64)).predict(x_test.astype(np.float64))


def reference_nested_loro(xs, ys, alphas, shared_alpha=False, score=pearson_r):
    """Straightforward nested LORO: returns test, validation, alpha, test_per_run."""
    n_runs, n_voxels = len(xs), ys[0].shape[1]
    test = np.zeros((n_runs, n_voxels))
    validation = np.zeros((n_runs, n_voxels))
    chosen = np.zeros((n_runs, n_voxels))
    for o in range(n_runs):
        train = [r for r in range(n_runs) if r != o]
        val = np.zeros((len(alphas), n_voxels))
        for i in train:
            inner = [r for r in train if r != i]
            x_in, y_in = np.concatenate([xs[r] for r in inner]), np.concatenate([ys[r] for r in inner])
            for k, alpha in enumerate(alphas):
                pred = _ridge_predict(x_in, y_in, xs[i], alpha)
                for v in range(n_voxels):  # one voxel at a time, on purpose
                    val[k, v] += np.corrcoef(ys[i][:, v], pred[:, v])[0, 1] / len(train)
        best = np.full(n_voxels, val.mean(1).argmax()) if shared_alpha else val.argmax(0)
        x_tr, y_tr = np.concatenate([xs[r] for r in train]), np.concatenate([ys[r] for r in train])
        pred = np.zeros((xs[o].shape[0], n_voxels))
        for v in range(n_voxels):
            pred[:, v] = _ridge_predict(x_tr, y_tr[:, v], xs[o], alphas[best[v]])
        test[o] = score(ys[o], pred)
        validation[o] = val[best, np.arange(n_voxels)]
        chosen[o] = np.asarray(alphas)[best]
    return test.mean(0), validation.mean(0), np.exp(np.log(chosen).mean(0)), test


def _random_data(rng, n_runs=4, n_scans=30, n_features=20, n_voxels=15, snr=0.4):
    xs = [zscore(rng.standard_normal((n_scans, n_features))) for _ in range(n_runs)]
    weights = rng.standard_normal((n_features, n_voxels)) * snr / np.sqrt(n_features)
    ys = [zscore(x @ weights + rng.standard_normal((n_scans, n_voxels))) for x in xs]
    return xs, ys


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("n_features", [20, 75, 100], ids=["feature-form", "mixed-forms", "kernel-form"])
@pytest.mark.parametrize("shared_alpha", [False, True], ids=["voxel-alpha", "shared-alpha"])
def test_matches_reference(n_features, shared_alpha):
    # 4 runs x 30 scans: inner training sets have 60 scans, outer ones 90. 20 features:
    # feature form everywhere; 75: kernel form inside, feature form outside; 100: kernel form.
    rng = np.random.default_rng(n_features + 7 * shared_alpha)
    xs, ys = _random_data(rng, n_features=n_features)
    got = fit_nested_loro(xs, ys, ALPHAS, shared_alpha=shared_alpha, precision="float32")
    test, validation, alpha, test_per_run = reference_nested_loro(xs, ys, ALPHAS, shared_alpha)
    assert isinstance(got, EncodingResult)
    assert got.test.shape == got.validation.shape == got.alpha.shape == (15,)
    assert got.test_per_run.shape == (4, 15)
    np.testing.assert_allclose(got.test, test, atol=1e-4)
    np.testing.assert_allclose(got.test_per_run, test_per_run, atol=1e-4)
    np.testing.assert_allclose(got.validation_per_run.mean(0), got.validation, atol=1e-6)
    np.testing.assert_allclose(got.validation, validation, atol=1e-4)
    np.testing.assert_allclose(got.alpha, alpha, rtol=1e-4)
    if shared_alpha:
        assert np.ptp(np.log(got.alpha)) < 1e-6  # every voxel got the same alpha
    else:
        assert len(np.unique(got.alpha.round(3))) > 1  # the grid actually discriminates


def test_float32_decompositions_match_reference(monkeypatch):
    """Large eigenproblems (> 1,024) are solved in float32: exercise that path on small data."""
    import mtbench.encoding.limits as engine

    monkeypatch.setattr(engine, "FLOAT64_EIGH_MAX", 0)
    rng = np.random.default_rng(12)
    for n_features in (20, 100):
        xs, ys = _random_data(rng, n_features=n_features)
        got = fit_nested_loro(xs, ys, ALPHAS, precision="float32")
        test, validation, alpha, test_per_run = reference_nested_loro(xs, ys, ALPHAS)
        np.testing.assert_allclose(got.test_per_run, test_per_run, atol=1e-4)
        np.testing.assert_allclose(got.validation, validation, atol=1e-4)
        np.testing.assert_allclose(got.alpha, alpha, rtol=1e-4)


def test_unequal_runs_custom_score_and_more_runs():
    """5 runs of different lengths; a scale-sensitive score (negative MSE) checks the refit itself."""
    rng = np.random.default_rng(3)
    xs, ys = [], []
    weights = rng.standard_normal((12, 6)) * 0.3
    for n in (25, 31, 28, 35, 22):
        x = zscore(rng.standard_normal((n, 12)))
        xs.append(x)
        ys.append(zscore(x @ weights + rng.standard_normal((n, 6))))

    def neg_mse(y_true, y_pred):
        return -((y_true - y_pred) ** 2).mean(0)

    got = fit_nested_loro(xs, ys, ALPHAS, score=neg_mse, precision="float32")
    test, validation, alpha, test_per_run = reference_nested_loro(xs, ys, ALPHAS, score=neg_mse)
    np.testing.assert_allclose(got.test_per_run, test_per_run, atol=1e-4)
    np.testing.assert_allclose(got.validation_per_run.mean(0), got.validation, atol=1e-6)
    np.testing.assert_allclose(got.validation, validation, atol=1e-4)
    np.testing.assert_allclose(got.alpha, alpha, rtol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "mixed"])
def test_constant_voxels_score_zero_not_nan(monkeypatch, precision):
    import mtbench.encoding.device as enc

    monkeypatch.setattr(enc, "fast_bfloat16", lambda dev: True)  # bfloat16 products on any CPU
    rng = np.random.default_rng(9)
    xs, ys = _random_data(rng, n_features=25, n_voxels=6)
    ys = [y.copy() for y in ys]
    for y in ys:
        y[:, 0] = 0.0  # flat everywhere (z-scoring a constant gives 0)
    ys[2][:, 1] = 0.0  # flat in one run only
    got = fit_nested_loro(xs, ys, ALPHAS, precision=precision)
    for field in (got.test, got.validation, got.alpha, got.test_per_run):
        assert np.isfinite(field).all()
    assert got.test[0] == 0 and got.validation[0] == 0
    assert np.isclose(got.alpha[0], ALPHAS[0], rtol=1e-6)  # all alphas tie at r = 0: the first wins
    assert got.test_per_run[2, 1] == 0  # nothing to correlate with in that test run
    if precision == "float32":
        _, _, _, test_per_run = reference_nested_loro(xs, [y[:, 2:] for y in ys], ALPHAS)
        np.testing.assert_allclose(got.test_per_run[:, 2:], test_per_run, atol=1e-4)


def test_himalaya_backend_agrees():
    rng = np.random.default_rng(11)
    xs, ys = _random_data(rng, n_features=50)
    ours = fit_nested_loro(xs, ys, ALPHAS, precision="float32")
    theirs = fit_nested_loro(xs, ys, ALPHAS, backend="himalaya")
    np.testing.assert_allclose(ours.test_per_run, theirs.test_per_run, atol=1e-4)
    np.testing.assert_allclose(ours.validation, theirs.validation, atol=1e-4)
    np.testing.assert_allclose(ours.alpha, theirs.alpha, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch_cuda", "himalaya_cuda"])
def test_cuda_backends_without_a_gpu_fail_in_one_line(monkeypatch, backend):
    """Both ``_cuda`` backends fit on the GPU (tests/test_gpu.py checks them there); without one
    they stop before any work and name the CPU backend to use instead."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    xs, ys = _random_data(np.random.default_rng(5), n_features=10)
    cpu = backend.removesuffix("_cuda")
    with pytest.raises(MtbenchError, match=f"backend {backend} / device cuda asked for, but torch sees no CUDA GPU; "
                                           f"use backend {cpu}$"):
        fit_nested_loro(xs, ys, ALPHAS, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "himalaya"])
@pytest.mark.parametrize("n_features", [20, 100], ids=["feature-form", "kernel-form"])
@pytest.mark.parametrize("shared_alpha", [False, True], ids=["voxel-alpha", "shared-alpha"])
def test_refit_with_given_alphas_reproduces_the_fit(monkeypatch, backend, n_features, shared_alpha):
    """``alpha_per_run`` skips the alpha search (no inner fold is decomposed) and gives the same
    held-out predictions, so another metric can score a finished fit at a fraction of its cost.
    Alphas equal across a fold's voxels (shared alpha) take the one-map-per-fold path: a Cholesky
    solve per outer fold, no eigendecomposition at all."""
    rng = np.random.default_rng(21 + n_features)
    xs, ys = _random_data(rng, n_features=n_features, n_voxels=40)
    full = fit_nested_loro(xs, ys, ALPHAS, backend=backend, precision="float32", return_predictions=True,
                           shared_alpha=shared_alpha)
    # the voxels (shared: the folds) did choose different alphas
    assert len(np.unique(full.alpha_per_run)) > 1
    decompositions = []
    import torch

    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: decompositions.append(a.shape) or real_eigh(a))
    neg_mse = lambda t, p: -((t - p) ** 2).mean(0)  # noqa: E731
    again = fit_nested_loro(xs, ys, ALPHAS, backend=backend, precision="float32", return_predictions=True,
                            alpha_per_run=full.alpha_per_run, score=neg_mse)
    if backend == "torch":
        # the outer folds only: no inner pair fold (shared alpha: Cholesky solves, no eigh)
        assert len(decompositions) == (0 if shared_alpha else len(xs))
    # himalaya's KernelRidge solves the refit another way than KernelRidgeCV: float32 rounding,
    # measured against each voxel's largest prediction (large alphas give tiny predictions)
    tolerance = 1e-6 if backend == "torch" else 2e-3
    for run, (before, after) in enumerate(zip(full.predictions, again.predictions)):
        scale = np.abs(before).max(0)
        assert (np.abs(after - before) <= tolerance * scale + 1e-7).all(), f"run {run}"
        np.testing.assert_allclose(again.test_per_run[run], neg_mse(ys[run], before), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(again.alpha_per_run, full.alpha_per_run)
    assert np.isnan(again.validation).all() and np.isnan(again.validation_per_run).all()


@pytest.mark.parametrize("n_features", [20, 75, 100], ids=["feature-form", "mixed-forms", "kernel-form"])
@pytest.mark.parametrize("grid", ["all", "one"], ids=["alphas-sorted", "one-alpha"])
def test_refit_through_test_maps_equals_the_coefficient_path(monkeypatch, n_features, grid):
    """With room for them (limits.TEST_MAP_BYTES) the refit multiplies each alpha's test map by the
    training targets of the voxels that chose it (voxels sorted by alpha, or all at once when one
    alpha serves every voxel); without room it goes through the coefficients z / (s + alpha). Both
    give the same predictions to float32 rounding, and the same scores."""
    import mtbench.encoding.eigen as eigen
    import mtbench.encoding.limits as engine

    rng = np.random.default_rng(31 + n_features)
    xs, ys = _random_data(rng, n_features=n_features, n_voxels=300, snr=1.0)
    alphas = ALPHAS if grid == "all" else ALPHAS[4:5]
    calls = []
    real = eigen.EigenRidge.predict_with_maps
    monkeypatch.setattr(eigen.EigenRidge, "predict_with_maps", lambda self, *a: calls.append(a) or real(self, *a))
    maps = fit_nested_loro(xs, ys, alphas, precision="float32", return_predictions=True)
    assert len(calls) == len(xs)  # one block: every outer fold through its maps
    if grid == "all":
        assert all(len(np.unique(a)) > 2 for a in maps.alpha_per_run)  # several alphas per fold
    monkeypatch.setattr(engine, "TEST_MAP_BYTES", 0)
    coef = fit_nested_loro(xs, ys, alphas, precision="float32", return_predictions=True)
    assert len(calls) == len(xs)  # not called again
    np.testing.assert_array_equal(maps.alpha_per_run, coef.alpha_per_run)
    np.testing.assert_array_equal(maps.validation_per_run, coef.validation_per_run)
    for a, b in zip(maps.predictions, coef.predictions):
        assert (np.abs(a - b) <= 1e-5 * np.abs(b).max(0) + 1e-7).all()
    np.testing.assert_allclose(maps.test_per_run, coef.test_per_run, atol=2e-6)


def test_refit_alphas_must_come_from_the_grid():
    rng = np.random.default_rng(3)
    xs, ys = _random_data(rng)
    given = np.full((4, 15), ALPHAS[1])
    given[2, 3] = ALPHAS[1] * 1.5
    with pytest.raises(MtbenchError, match="not among the alphas"):
        fit_nested_loro(xs, ys, ALPHAS, alpha_per_run=given)
    with pytest.raises(MtbenchError, match="expected \\(4, 15\\)"):
        fit_nested_loro(xs, ys, ALPHAS, alpha_per_run=given[:3])


@pytest.mark.parametrize("shared_alpha", [False, True], ids=["alpha-per-voxel", "shared-alpha"])
@pytest.mark.parametrize("max_block", [64, 100], ids=["blocks-of-64", "blocks-of-100"])
@pytest.mark.parametrize("n_features", [40, 400], ids=["feature-form", "kernel-form"])
@pytest.mark.parametrize("group_bytes", [2**40, 1], ids=["one-group", "fold-by-fold"])
def test_voxel_blocks_agree(monkeypatch, max_block, shared_alpha, n_features, group_bytes):
    """Small voxel blocks (the last one partial), and pair folds made one group at a time over all
    voxels, give the same numbers as one block of all voxels with every fold at once."""
    import mtbench.encoding.limits as engine

    rng = np.random.default_rng(5)
    xs, ys = _random_data(rng, n_features=n_features, n_voxels=700)
    monkeypatch.setattr(engine, "MAX_BLOCK", 10_000)
    monkeypatch.setattr(engine, "BLOCK_BYTES", 2**40)
    whole = fit_nested_loro(xs, ys, ALPHAS, precision="float32", shared_alpha=shared_alpha, return_predictions=True)
    monkeypatch.setattr(engine, "MAX_BLOCK", max_block)
    monkeypatch.setattr(engine, "BLOCK_BYTES", 1)  # -> the smallest block allowed
    monkeypatch.setattr(engine, "MIN_BLOCK", max_block)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)  # feature form: chunks of one block (X'Y made per block)
    monkeypatch.setattr(engine, "GROUP_BYTES", group_bytes)
    blocked = fit_nested_loro(xs, ys, ALPHAS, precision="float32", shared_alpha=shared_alpha,
                              return_predictions=True)
    np.testing.assert_allclose(blocked.test_per_run, whole.test_per_run, atol=1e-6)
    np.testing.assert_allclose(blocked.validation, whole.validation, atol=1e-6)
    np.testing.assert_array_equal(blocked.alpha, whole.alpha)
    for a, b in zip(blocked.predictions, whole.predictions):
        np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- shared alpha: nomination
@pytest.mark.parametrize("n_features", [40, 400], ids=["feature-form", "kernel-form"])
@pytest.mark.parametrize("inner", ["loro", "first"])
@pytest.mark.parametrize("group_bytes", [2**40, 1], ids=["maps-kept", "maps-remade"])
def test_shared_alpha_nomination_gives_the_full_sweeps_choice(monkeypatch, n_features, inner, group_bytes):
    """Sweeping every alpha on a voxel subset first, then only the nominated ones on every voxel,
    chooses what the exact sweep of every alpha on every voxel chooses, with the same scores:
    whether the nomination's maps are kept for that sweep (inner="first", room for them) or made
    again (fold by fold, nothing kept), in feature and in kernel form."""
    import mtbench.encoding.limits as engine

    monkeypatch.setattr(engine, "GROUP_BYTES", group_bytes)

    rng = np.random.default_rng(13 + n_features)
    xs, ys = _random_data(rng, n_runs=5, n_scans=60, n_features=n_features, n_voxels=1600, snr=1.0)
    alphas = np.logspace(-1, 5, 13)
    import torch

    eighs = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: eighs.append(a.shape) or real_eigh(a))
    monkeypatch.setattr(engine, "NOMINATION_VOXELS", 10**9)  # no subset: every alpha on every voxel
    full = fit_nested_loro(xs, ys, alphas, shared_alpha=True, inner=inner, return_predictions=True)
    n_full = len(eighs)
    nominated = []
    import mtbench.encoding.eigen_shared as shared

    real = shared.nominated_alphas
    monkeypatch.setattr(shared, "nominated_alphas", lambda r, n: nominated.append(real(r, n)) or nominated[-1])
    monkeypatch.setattr(engine, "NOMINATION_VOXELS", 400)
    fast = fit_nested_loro(xs, ys, alphas, shared_alpha=True, inner=inner, return_predictions=True)
    # with room, nothing is decomposed twice (kept maps, or kept eigenbases); without, pair folds are
    if group_bytes > 1:
        assert len(eighs) - n_full == n_full
    else:
        assert len(eighs) - n_full > n_full
    # the nomination on the subset is the call on every outer fold (inner="first": one call per fold
    # before it); with one validation per outer fold (inner="first"), calls per fold after it narrow
    # the candidates round by round, on kept maps or on maps made again in groups
    main = max(i for i, k in enumerate(nominated) if k.shape == (len(xs), len(alphas)))
    kept, narrowed = nominated[main], nominated[main + 1:]
    if inner == "first":
        assert narrowed and not all(k.all() for k in narrowed)  # candidates were dropped on the way
    else:
        assert not narrowed
    assert kept.sum(1).max() < len(alphas)  # alphas were left out of the full sweep...
    chosen = np.searchsorted(alphas, fast.alpha_per_run[:, 0])
    assert kept[np.arange(len(xs)), chosen].all()  # ...but never the chosen one
    np.testing.assert_array_equal(fast.alpha_per_run, full.alpha_per_run)
    # voxels swept in other blocks (the narrowing's rounds) may differ in the last float32 bit
    np.testing.assert_allclose(fast.validation_per_run, full.validation_per_run, atol=1e-6)
    np.testing.assert_allclose(fast.test_per_run, full.test_per_run, atol=1e-6)
    for a, b in zip(fast.predictions, full.predictions):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_nominated_keeps_what_the_subset_cannot_rule_out():
    """Leader kept; a challenger within noise kept; a clearly worse alpha dropped; with every voxel in
    the subset (no sampling error) only the leader and exact copies of it stay."""
    from mtbench.encoding.eigen_parts import nominated_alphas as _nominated

    rng = np.random.default_rng(0)
    base = rng.normal(0.2, 0.1, 500)
    noise = lambda: rng.normal(0, 0.05, 500)  # noqa: E731
    r = np.stack([base - 0.05 + noise(), base + noise() * 0.1, base - 0.001 + noise(), base.copy()])
    r[3] = r[1]  # alpha 3 repeats alpha 1
    kept = _nominated(r[None], 25_000)[0]
    assert kept.tolist() == [False, True, True, True]
    kept_all = _nominated(r[None], 500)[0]
    assert kept_all.tolist() == [False, True, False, True]


# --------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("n_features", [40, 150], ids=["feature-form", "kernel-form"])
def test_mixed_precision_close_to_float32(monkeypatch, n_features):
    """bfloat16 alpha-sweep products: validation r within 3e-3, same alphas almost everywhere.

    Only the validation norms are computed from bfloat16 inputs: where an outer fold
    chooses the same alpha, its refit and test score are the float32 ones exactly; where
    the choice moves (near-ties), the test r of that fold moves with it.
    """
    import mtbench.encoding.device as enc

    monkeypatch.setattr(enc, "fast_bfloat16", lambda dev: True)  # bfloat16 products on any CPU
    rng = np.random.default_rng(31 + n_features)
    xs, ys = _random_data(rng, n_runs=4, n_scans=50, n_features=n_features, n_voxels=1500, snr=1.0)
    ys = [np.concatenate([y[:, :1000], zscore(rng.standard_normal((50, 500)))], axis=1) for y in ys]
    alphas = np.logspace(0, 4, 9)
    exact = fit_nested_loro(xs, ys, alphas, precision="float32")
    mixed = fit_nested_loro(xs, ys, alphas, precision="mixed")
    assert not np.array_equal(mixed.validation_per_run, exact.validation_per_run)  # bfloat16 did run
    np.testing.assert_allclose(mixed.validation_per_run, exact.validation_per_run, atol=3e-3)
    np.testing.assert_allclose(mixed.validation, exact.validation, atol=3e-3)
    same = np.isclose(mixed.alpha, exact.alpha, rtol=1e-5)
    assert same.mean() >= 0.95
    np.testing.assert_array_equal(mixed.test_per_run[:, same], exact.test_per_run[:, same])
    same_fold = mixed.test_per_run == exact.test_per_run  # same alpha in that outer fold
    assert same_fold.mean() >= 0.98
    assert np.quantile(np.abs(mixed.test_per_run - exact.test_per_run), 0.99) < 3e-3
    assert np.abs(mixed.test - exact.test).mean() < 1e-3
    assert abs(mixed.test.mean() - exact.test.mean()) < 1e-4


def test_mixed_precision_alpha_order(monkeypatch):
    """The bfloat16 increments run over the sorted alphas: any order, repeats included, fits the same."""
    import mtbench.encoding.device as enc

    monkeypatch.setattr(enc, "fast_bfloat16", lambda dev: True)
    rng = np.random.default_rng(17)
    xs, ys = _random_data(rng, n_features=40, n_voxels=300, snr=1.0)
    shuffled = ALPHAS[[5, 0, 10, 3, 3, 7, 1, 9, 2, 8, 4, 6]]  # ALPHAS[3] twice
    ordered = fit_nested_loro(xs, ys, ALPHAS, precision="mixed")
    got = fit_nested_loro(xs, ys, shuffled, precision="mixed")
    np.testing.assert_allclose(got.validation_per_run, ordered.validation_per_run, atol=1e-6)
    np.testing.assert_allclose(got.test_per_run, ordered.test_per_run, atol=1e-6)
    np.testing.assert_allclose(got.alpha, ordered.alpha, rtol=1e-6)


def test_mixed_precision_shared_alpha(monkeypatch):
    import mtbench.encoding.device as enc

    monkeypatch.setattr(enc, "fast_bfloat16", lambda dev: True)
    rng = np.random.default_rng(41)
    xs, ys = _random_data(rng, n_runs=4, n_scans=50, n_features=60, n_voxels=600, snr=1.0)
    exact = fit_nested_loro(xs, ys, ALPHAS, shared_alpha=True, precision="float32")
    mixed = fit_nested_loro(xs, ys, ALPHAS, shared_alpha=True, precision="mixed")
    np.testing.assert_array_equal(mixed.alpha, exact.alpha)
    np.testing.assert_array_equal(mixed.test_per_run, exact.test_per_run)
    np.testing.assert_allclose(mixed.validation_per_run, exact.validation_per_run, atol=3e-3)


# --------------------------------------------------------------------------- leakage
@pytest.mark.parametrize("precision", ["float32", "mixed"])
def test_test_run_never_influences_its_own_predictions(monkeypatch, precision):
    """Replace the test run's fMRI data by anything: its predictions must not move.

    If the held-out run took part in the choice of alpha or in the refit of its outer
    fold, its predictions would depend on its own data.
    """
    import mtbench.encoding.device as enc

    monkeypatch.setattr(enc, "fast_bfloat16", lambda dev: True)
    rng = np.random.default_rng(21)
    xs, ys = _random_data(rng, n_runs=4, n_features=30, n_voxels=40, snr=1.0)
    alphas = np.logspace(-1, 5, 13)

    def capture(store):
        def score(y_true, y_pred):
            store.append((y_true.copy(), y_pred.copy()))
            return pearson_r(y_true, y_pred)
        return score

    base = []
    fit_nested_loro(xs, ys, alphas, score=capture(base), precision=precision)
    for o in range(len(xs)):
        tampered = list(ys)
        tampered[o] = zscore(rng.standard_normal(ys[o].shape) * 5 + 3 * ys[o][::-1])
        calls = []
        fit_nested_loro(xs, tampered, alphas, score=capture(calls), precision=precision)
        (y_true, pred_tampered), = [c for c in calls if np.array_equal(c[0], tampered[o])]
        (_, pred_base), = [c for c in base if np.array_equal(c[0], ys[o])]
        np.testing.assert_allclose(pred_tampered, pred_base, rtol=1e-5, atol=1e-6)


def test_run_specific_signal_stays_at_chance():
    """Each run has its own random feature->voxel map (plus shared-signal control voxels).

    Only a procedure that fits on the test run itself could predict a run-specific map;
    a leaky fit (train on all runs, score on one of them) does, the nested one must not.
    """
    rng = np.random.default_rng(8)
    n_runs, n_scans, n_features, n_specific, n_shared = 5, 60, 10, 300, 50
    xs = [zscore(rng.standard_normal((n_scans, n_features))) for _ in range(n_runs)]
    shared_map = rng.standard_normal((n_features, n_shared)) / np.sqrt(n_features)
    ys = []
    for x in xs:
        own_map = rng.standard_normal((n_features, n_specific)) / np.sqrt(n_features)
        y = np.concatenate([x @ own_map, x @ shared_map], axis=1)
        ys.append(zscore(y + 0.7 * rng.standard_normal(y.shape)))
    alphas = np.logspace(-1, 5, 13)
    result = fit_nested_loro(xs, ys, alphas)
    specific, shared = result.test[:n_specific], result.test[n_specific:]
    # chance level: a run-specific map is unrelated to the maps of the training runs, so
    # each voxel's r is the cosine of two independent directions (sd ~ 1/sqrt(10) per
    # run); the mean over 300 independent voxels must sit at 0 (sd ~ 0.01).
    assert abs(specific.mean()) < 0.03
    assert shared.mean() > 0.7
    # the dataset does detect leakage: train on all runs (test run included), score a run
    leaky = np.mean([
        pearson_r(ys[o], _ridge_predict(np.concatenate(xs), np.concatenate(ys), xs[o], 1.0))[:n_specific].mean()
        for o in range(n_runs)
    ])
    assert leaky > 0.3


# --------------------------------------------------------------------------- recovery
def test_recovers_planted_signal_and_noise_is_null():
    rng = np.random.default_rng(2)
    n_runs, n_scans, n_features, n_signal, n_noise = 4, 150, 8, 200, 400
    expected_r = 0.6  # corr(x @ w, x @ w + e) with var(x @ w) = 0.5625, var(e) = 1
    signal_sd = expected_r / np.sqrt(1 - expected_r**2)
    weights = rng.standard_normal((n_features, n_signal))
    weights *= signal_sd / np.linalg.norm(weights, axis=0)
    xs, ys = [], []
    for _ in range(n_runs):
        x = rng.standard_normal((n_scans, n_features))
        y = np.concatenate([x @ weights + rng.standard_normal((n_scans, n_signal)),
                            rng.standard_normal((n_scans, n_noise))], axis=1)
        xs.append(zscore(x))
        ys.append(zscore(y))
    result = fit_nested_loro(xs, ys, np.logspace(-2, 6, 17))
    signal, noise = result.test[:n_signal], result.test[n_signal:]
    # with 450 training scans for 8 features the estimation loss is ~1%: r just below 0.6
    assert expected_r - 0.04 < signal.mean() < expected_r + 0.01
    assert abs(noise.mean()) < 0.05
    assert signal.min() > noise.max() - 0.1
    # validation scores see the same signal (chosen on training runs only)
    assert abs(result.validation[:n_signal].mean() - signal.mean()) < 0.05
    # noise voxels prefer strong regularization, signal voxels weak
    assert np.median(result.alpha[n_signal:]) > 10 * np.median(result.alpha[:n_signal])


# --------------------------------------------------------------------------- input errors
def _ok(rng, n_runs=4):
    return _random_data(rng, n_runs=n_runs, n_scans=12, n_features=5, n_voxels=3)


@pytest.mark.parametrize(
    "case, words",
    [
        ("run_counts", ["4 runs", "3", "one feature matrix per fMRI run"]),
        ("scan_counts", ["run 2", "12 scans", "11"]),
        ("too_few_runs", ["at least 3 runs", "got 2"]),
        ("nan_x", ["features", "NaN", "run 3", "clean or drop those scans"]),
        ("inf_y", ["fMRI", "inf", "run 1", "clean or drop those scans"]),
        ("empty_alphas", ["alphas is empty"]),
        ("bad_alpha", ["positive"]),
        ("feature_counts", ["run 4", "features", "same feature set"]),
        ("backend", ["unknown ridge backend", "torch"]),
        ("precision", ["unknown ridge precision", "'bfloat16'", "mixed", "float32"]),
        ("bad_score", ["score function returned shape", "(3,)"]),
    ],
)
def test_input_errors(case, words):
    rng = np.random.default_rng(0)
    xs, ys = _ok(rng)
    alphas, backend, score, precision = ALPHAS, "torch", None, "float32"
    if case == "run_counts":
        ys = ys[:3]
    elif case == "scan_counts":
        ys[1] = ys[1][:11]
    elif case == "too_few_runs":
        xs, ys = xs[:2], ys[:2]
    elif case == "nan_x":
        xs[2] = xs[2].copy()
        xs[2][4, 1] = np.nan
    elif case == "inf_y":
        ys[0] = ys[0].copy()
        ys[0][0, 0] = np.inf
    elif case == "empty_alphas":
        alphas = []
    elif case == "bad_alpha":
        alphas = [1.0, 0.0]
    elif case == "feature_counts":
        xs[3] = xs[3][:, :4]
    elif case == "backend":
        backend = "numpy"
    elif case == "precision":
        precision = "bfloat16"
    elif case == "bad_score":
        score = lambda y_true, y_pred: pearson_r(y_true, y_pred).mean()  # noqa: E731
    with pytest.raises(MtbenchError) as info:
        fit_nested_loro(xs, ys, alphas, backend=backend, score=score, precision=precision)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_default_score_is_the_plugin_pearson():
    plugin = pytest.importorskip("mtbench_plugins.metrics.hooks")
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    b[:, 3] = 1.0  # constant column -> 0
    np.testing.assert_allclose(pearson_r(a, b), plugin.pearson_r(a, b), atol=1e-7)
