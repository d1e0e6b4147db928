"""The paired test of two fits' held-out r (mtbench_plugins.commands.compare.stats), proven on simulations.

Each simulated voxel is an independent repetition (``simulate.paired_predictions``: AR(1) BOLD noise
phi 0.4, smooth signal and predictions phi 0.8, noise ceiling 0.5, B's r 0.2), so one call gives
thousands of repetitions. Bounds are the nominal rate plus 2.58 binomial standard deviations
(99% one-sided interval of the observed rate), stated per test.
"""

from __future__ import annotations

import numpy as np
import pytest
from mtbench_plugins.commands.compare.compare import SubjectComparison, group_test
from mtbench_plugins.commands.compare.simulate import paired_predictions
from mtbench_plugins.commands.compare.stats import (
    PairedTest,
    autocovariances,
    circular_block_weights,
    flat_top_variance,
    holm_adjust,
)

from mtbench.errors import MtbenchError

RUNS = [200] * 6


def _margin(rate: float, n: int) -> float:
    return 2.58 * np.sqrt(rate * (1 - rate) / n)


def _sim(seed, n_voxels, delta, runs=RUNS):
    return paired_predictions(np.random.default_rng(seed), runs, n_voxels, 0.2, delta, phi=0.4, phi_signal=0.8)


def test_null_rejects_at_most_the_nominal_rate_per_voxel():
    """Equal planted r (0.2 and 0.2), 4,000 voxels = repetitions: rejection at p < 0.05 is at most
    0.05 + 2.58 sqrt(0.05 x 0.95 / 4000) = 0.0589 (measured 0.0505), and not far below (>= 0.03: the test
    is not simply conservative)."""
    result = PairedTest(method="flat-top").fit(*_sim(0, 4000, 0.0))
    rate = np.mean(result.p_value < 0.05)
    assert 0.03 <= rate <= 0.05 + _margin(0.05, 4000), rate
    assert np.isclose(np.mean(result.ci_low > 0) + np.mean(result.ci_high < 0), rate, atol=1e-9)  # interval = test


def test_intervals_cover_the_planted_difference():
    """Planted Δr 0.05 on 4,000 voxels: the 95% intervals cover it in 93-97% of them (binomial SD 0.34 points; measured 0.952)."""
    result = PairedTest(method="flat-top").fit(*_sim(1, 4000, 0.05))
    coverage = np.mean((result.ci_low <= 0.05) & (result.ci_high >= 0.05))
    assert 0.93 <= coverage <= 0.97, coverage
    assert abs(np.mean(result.delta) - 0.05) < 0.005  # the estimate is unbiased (SE of the mean 0.0008)


def test_fdr_holds_across_voxels_and_power_grows_with_the_difference():
    """2,000 null voxels mixed with 500 at each planted Δr 0.02, 0.05, 0.1 (3 repetitions): the share
    of false discoveries among voxels with BH q <= 0.05 stays under 0.05 (BH bounds it by 0.05 x 4/7);
    detection at p < 0.05 grows with Δr."""
    fdp, power = [], []
    for seed in range(3):
        delta = np.repeat([0.0, 0.02, 0.05, 0.1], [2000, 500, 500, 500])
        result = PairedTest(method="flat-top").fit(*_sim(10 + seed, delta.size, delta))
        found = result.q_value <= 0.05
        fdp.append(np.sum(found & (delta == 0)) / max(found.sum(), 1))
        power.append([np.mean(result.p_value[delta == d] < 0.05) for d in (0.02, 0.05, 0.1)])
    assert np.mean(fdp) <= 0.05, fdp
    power = np.mean(power, axis=0)  # uncorrected, per voxel (measured 0.08, 0.14, 0.47)
    assert power[0] < power[1] < power[2] and power[2] > 0.3, power


def test_parcel_tests_keep_the_rate_with_correlated_voxels():
    """300 null parcels of 10 voxels that share most of their series (voxel = 0.9 parcel + 0.44 own):
    a test that took the voxels as independent would reject far too often; the parcel-mean test rejects
    at p < 0.05 at most 0.05 + 2.58 sqrt(0.05 x 0.95 / 300) = 0.083 of them. Holm across the 300
    parcels then rejects none (family-wise control: all are null)."""
    n_parcels, size = 300, 10
    base = _sim(20, n_parcels, 0.0)
    own = _sim(21, n_parcels * size, 0.0)
    mixed = [[0.9 * np.repeat(b, size, axis=1) + 0.44 * o for b, o in zip(base[k], own[k])] for k in range(3)]
    labels = np.repeat(np.arange(1, n_parcels + 1), size)
    names = {i: f"p{i}" for i in range(1, n_parcels + 1)}
    result = PairedTest(method="flat-top").fit(*mixed, labels, names)
    rows = result.parcels[1:]
    rate = np.mean([row["p_value"] < 0.05 for row in rows])
    assert rate <= 0.05 + _margin(0.05, n_parcels), rate
    assert all(row["p_holm"] >= row["p_value"] for row in rows)
    assert not any(row["p_holm"] < 0.05 for row in rows)
    # the parcel's SE is that of a mean of correlated voxels: near the voxels' own, not /sqrt(10)
    voxel_se = np.array([np.mean(result.se[labels == i]) for i in range(1, n_parcels + 1)])
    parcel_se = np.array([row["se"] for row in rows])
    assert np.median(parcel_se / voxel_se) > 0.8


def test_fitted_models_with_equal_signal_reject_at_most_the_nominal_rate():
    """Pipeline-level null: two ridge fits (fit_nested_loro, 6 runs of 200 scans, 2,000 voxels) of features
    that are the same latent signal plus independent noise of equal size, so neither carries more
    information. The default corrected t across runs rejects at most 0.05 + 2.58 sqrt(0.05 x 0.95 / 2000)
    = 0.0626 (measured 0.025); flat-top, which takes the fitted predictions as given, counts the two fits'
    training noise as a real difference and rejects more (measured 0.091)."""
    from mtbench.encoding import fit_nested_loro
    from mtbench_plugins.commands.compare.simulate import ar1

    rng = np.random.default_rng(0)
    n_features, n_voxels = 20, 2000
    weights = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    xs_a, xs_b, ys = [], [], []
    for n in RUNS:
        latent = ar1(rng, n, n_features, 0.8)
        xs_a.append(latent + 0.5 * ar1(rng, n, n_features, 0.8))
        xs_b.append(latent + 0.5 * ar1(rng, n, n_features, 0.8))
        ys.append(latent @ weights * 0.5 + ar1(rng, n, n_voxels, 0.4))
    z = [[((m - m.mean(0)) / m.std(0)).astype(np.float32) for m in runs] for runs in (xs_a, xs_b, ys)]
    fit_a, fit_b = (fit_nested_loro(x, z[2], np.logspace(0, 4, 5), return_predictions=True) for x in z[:2])
    corrected = PairedTest().fit(z[2], fit_a.predictions, fit_b.predictions)
    conditional = PairedTest(method="flat-top").fit(z[2], fit_a.predictions, fit_b.predictions)
    assert corrected.method == "corrected-t"
    assert np.mean(corrected.p_value < 0.05) <= 0.05 + _margin(0.05, n_voxels)
    assert np.mean(conditional.p_value < 0.05) > np.mean(corrected.p_value < 0.05)
    np.testing.assert_allclose(corrected.delta, conditional.delta)  # the same Δr, another standard error


def test_iid_resampling_is_what_goes_wrong():
    """The reference's i.i.d. bootstrap (blocks of 1 scan) on the same autocorrelated null: its intervals
    are too narrow and it rejects well above 5% (> 0.08 on 2,000 voxels); the flat-top variance, on the
    same data, does not (<= 0.0625)."""
    data = _sim(30, 2000, 0.0)
    iid = PairedTest(method="block-bootstrap", n_boot=200, lags=1).fit(*data)
    # lags=1 -> blocks of 2 scans; blocks of 1 are the i.i.d. bootstrap: check both are too liberal
    assert np.mean(iid.p_value < 0.05) > 0.08
    assert np.mean(PairedTest(method="flat-top").fit(*data).p_value < 0.05) <= 0.05 + _margin(0.05, 2000)


def test_group_t_test_is_calibrated_and_finds_a_shared_difference():
    """8 simulated subjects (each its own noise, 3 runs of 150 scans, 1,500 voxels): with no difference the
    group test rejects at most 0.05 + 2.58 sqrt(0.05 x 0.95 / 1500) = 0.0645 of voxels; with Δr 0.05 in
    every subject it finds more voxels than any single subject does."""
    for delta, check in ((0.0, "null"), (0.05, "power")):
        subjects = [SubjectComparison(str(s), PairedTest().fit(*_sim(100 + s + 50 * (delta > 0), 1500, delta,
                                                                       [150] * 3)))
                    for s in range(8)]
        voxels, parcels = group_test(subjects, 0.95)
        rate = np.mean(voxels["p_value"] < 0.05)
        if check == "null":
            assert rate <= 0.05 + _margin(0.05, 1500), rate
        else:
            single = max(np.mean(s.result.p_value < 0.05) for s in subjects)
            assert rate > single, (rate, single)
            assert parcels[0]["p_value"] < 1e-3  # the whole brain


def test_sign_flip_group_test_is_exact_and_calibrated():
    """Sign-flip permutation of the t statistic across subjects. 6 subjects: all 64 flips (exact), the
    smallest p is 2/64; on 3,000 null columns of heavy-tailed (Laplace) differences, rejection at p < 0.05 is at most 0.05 + 2.58 sqrt(0.05 x 0.95 / 3000) = 0.060.
    12 subjects with random flips (2,000 + identity): close to the t-test on normal data."""
    from mtbench_plugins.commands.compare.stats import one_sample_t, sign_flip_pvalues

    rng = np.random.default_rng(5)
    values = rng.laplace(0, 1, (6, 3000))
    p = sign_flip_pvalues(values, n_perm=10000)
    assert np.isclose(p.min(), 2 / 64) and np.all((p * 64) % 1 < 1e-9)  # multiples of 1/64
    assert np.mean(p < 0.05) <= 0.05 + 2.58 * np.sqrt(0.05 * 0.95 / 3000)
    normal = rng.standard_normal((12, 2000)) + 0.3
    flip = sign_flip_pvalues(normal, n_perm=2000, seed=1)
    assert np.corrcoef(flip, one_sample_t(normal)[2])[0, 1] > 0.95


def test_group_needs_three_subjects():
    subjects = [SubjectComparison(str(s), PairedTest(method="flat-top").fit(*_sim(s, 50, 0.0, [60] * 3))) for s in range(2)]
    with pytest.raises(MtbenchError, match="at least 3 subjects"):
        group_test(subjects, 0.95)
    with pytest.raises(MtbenchError, match="unknown group test"):
        group_test(subjects, 0.95, "wilcoxon")


def test_circular_block_weights_draw_every_scan_equally():
    weights = circular_block_weights(37, 5, 4000, np.random.default_rng(0))
    assert weights.shape == (4000, 37) and np.all(weights.sum(1) == 37)
    assert np.allclose(weights.mean(0), 1.0, atol=0.08)  # circular: no edge scan is drawn less often


def test_flat_top_variance_of_an_ar1_mean():
    """The long-run variance of AR(1) (phi 0.6, unit variance) is (1 + phi)/(1 - phi) = 4: the estimate
    over 400 series of 300 scans is within 5% of it on average (the Bartlett window would be ~10% low)."""
    from mtbench_plugins.commands.compare.simulate import ar1

    x = ar1(np.random.default_rng(3), 300, 400, 0.6)
    estimate = flat_top_variance(autocovariances(x, 24), 24, 300)
    assert abs(np.mean(estimate) / 4.0 - 1) < 0.05


def test_holm_adjust():
    np.testing.assert_allclose(holm_adjust(np.array([0.01, 0.04, 0.03, 0.2])), [0.04, 0.09, 0.09, 0.2])


def test_bad_options_are_one_line():
    with pytest.raises(MtbenchError, match="unknown comparison method"):
        PairedTest(method="iid")
    with pytest.raises(MtbenchError, match="at least 3 test runs"):
        PairedTest().fit(*_sim(0, 10, 0.0, [40] * 2))
    with pytest.raises(MtbenchError, match="too few"):
        PairedTest(method="block-bootstrap", n_boot=10)
    y, a, b = _sim(0, 10, 0.0, [40] * 3)
    with pytest.raises(MtbenchError, match="more than half"):
        PairedTest(lags=30).fit(y, a, b)
    with pytest.raises(MtbenchError, match="runs"):
        PairedTest(method="flat-top").fit(y, a[:2], b)
