"""Significance (circular shifts within runs, BH-FDR), parcel confidence intervals, noise ceilings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from mtbench.ceiling import ceiling_from_split_half, normalize_by_ceiling
from mtbench.encoding import fit_nested_loro, pearson_r
from mtbench.errors import MtbenchError
from mtbench.significance import (bh_fdr, circular_shift_pvalues, fold_dependence, run_confidence_interval,
                                  run_pvalues, shift_null_moments, shifted_correlations)


def ar1(rng, shape, phi):
    """Unit-variance AR(1) noise along axis 0 (slow, BOLD-like autocorrelation)."""
    e = rng.standard_normal((shape[0] + 50, *shape[1:]))
    return (lfilter([1.0], [1.0, -phi], e, axis=0)[50:] * np.sqrt(1 - phi**2)).astype(np.float32)


def simulate(rng, n_runs=4, n_scans=150, n_voxels=400, n_signal=0, r=0.35, phi=0.8):
    """Predictions and BOLD, both autocorrelated; the first ``n_signal`` voxels correlate ~``r``."""
    preds, ys = [], []
    for _ in range(n_runs):
        pred = ar1(rng, (n_scans, n_voxels), phi)
        y = ar1(rng, (n_scans, n_voxels), phi)
        y[:, :n_signal] = r * pred[:, :n_signal] + np.sqrt(1 - r**2) * y[:, :n_signal]
        preds.append(pred)
        ys.append(y)
    return ys, preds


def test_shifted_correlations_match_direct_rolls():
    rng = np.random.default_rng(0)
    y, p = rng.standard_normal((37, 5)), rng.standard_normal((37, 5))
    p[:, 4] = 1.0  # constant prediction: r is 0, not NaN
    corr = shifted_correlations(y, p)
    for k in (0, 1, 5, 36):
        np.testing.assert_allclose(corr[k], pearson_r(y, np.roll(p, k, axis=0)), atol=1e-5)


def test_fdr_controlled_on_autocorrelated_null_where_shuffles_fail():
    q, n_sims = 0.1, 25
    fdp, uncorrected, shuffled = [], [], []
    for sim in range(n_sims):
        rng = np.random.default_rng(100 + sim)
        ys, preds = simulate(rng, n_signal=80)  # 80 signal voxels make rejections possible, 320 null
        observed, p = circular_shift_pvalues(ys, preds, 500, seed=sim)
        significant = bh_fdr(p) <= q
        fdp.append(significant[80:].sum() / max(1, significant.sum()))
        uncorrected.append(np.mean(p[80:] <= 0.05))
        # the naive alternative: shuffle scans within runs (ignores autocorrelation)
        null = np.mean([[pearson_r(y, pr[rng.permutation(len(pr))])[80:] for y, pr in zip(ys, preds)]
                        for _ in range(100)], axis=1)  # (100, n_null)
        shuffled.append(np.mean((1 + (null >= observed[80:]).sum(0)) / 101 <= 0.05))
    assert np.mean(fdp) <= q  # the false discovery rate is controlled
    assert np.mean(uncorrected) <= 0.05 + 0.01  # each null voxel: a valid 5% test
    assert np.mean(shuffled) > 0.15  # the shuffle test would reject far too often on this data


def test_planted_signal_is_detected():
    rng = np.random.default_rng(7)
    ys, preds = simulate(rng, n_runs=9, n_scans=200, n_voxels=1000, n_signal=100, r=0.3, phi=0.7)
    observed, p = circular_shift_pvalues(ys, preds, 1000, seed=1)
    significant = bh_fdr(p) <= 0.05
    assert significant[:100].mean() > 0.9  # power
    assert significant[100:].mean() < 0.02
    assert observed[:100].mean() == pytest.approx(0.3, abs=0.03)


def test_strong_voxels_get_gaussian_tail_pvalues_below_the_permutation_floor(monkeypatch):
    """With signal in few voxels among many, the empirical floor 1/(1+N) keeps BH from passing
    any (q = floor x n_voxels / n_signal); where fewer than TAIL_EXCEEDANCES draws reach the
    observed r the p-value is the Gaussian tail of the exact null moments instead."""
    from scipy.stats import norm

    from mtbench.significance import TAIL_EXCEEDANCES, shift_null_moments

    rng = np.random.default_rng(3)
    ys, preds = simulate(rng, n_runs=9, n_scans=200, n_voxels=3000, n_signal=30, r=0.5, phi=0.7)
    n_perm = 200
    observed, p = circular_shift_pvalues(ys, preds, n_perm, seed=2)
    import mtbench.significance as significance

    monkeypatch.setattr(significance, "TAIL_EXCEEDANCES", 0)  # the permutation p-values alone, same draws
    _, empirical = circular_shift_pvalues(ys, preds, n_perm, seed=2)
    monkeypatch.undo()
    _, mean, sd = shift_null_moments(ys, preds)
    z = (observed - mean) / sd
    tail = np.round(empirical * (1 + n_perm)) - 1 < TAIL_EXCEEDANCES  # fewer than 10 draws reached it
    assert tail[:30].all() and tail[30:].mean() < 0.06
    np.testing.assert_allclose(p[tail], norm.sf(z[tail]), rtol=1e-4)
    np.testing.assert_array_equal(p[~tail], empirical[~tail])  # the rest: the permutation p-value
    assert p[:30].max() < 1e-6 < 1 / (1 + n_perm)
    assert (bh_fdr(p) <= 0.05)[:30].all()  # found; with the floor q would be 0.5 for all of them
    assert (bh_fdr(np.maximum(p, 1 / (1 + n_perm))) > 0.05).all()
    assert (bh_fdr(p) <= 0.05)[30:].mean() < 0.01
    # under the null the tail p-values stay calibrated: the share below 0.01 is ~0.01
    ys0, preds0 = simulate(np.random.default_rng(4), n_runs=9, n_scans=200, n_voxels=4000, phi=0.7)
    _, p0 = circular_shift_pvalues(ys0, preds0, n_perm, seed=5)
    assert 0.004 < np.mean(p0 < 0.01) < 0.02 and 0.002 < np.mean(p0 < 0.005) < 0.011


def test_pvalues_from_fit_predictions_and_errors():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((60, 8)).astype(np.float32) for _ in range(4)]
    w = np.zeros((8, 30), dtype=np.float32)
    w[:, :10] = rng.standard_normal((8, 10))
    ys = [(x @ w + rng.standard_normal((60, 30))).astype(np.float32) for x in xs]
    ys = [(y - y.mean(0)) / y.std(0) for y in ys]
    result = fit_nested_loro(xs, ys, np.logspace(-1, 3, 5), return_predictions=True)
    assert fit_nested_loro(xs, ys, np.logspace(-1, 3, 5)).predictions is None
    for r, (y, pred) in enumerate(zip(ys, result.predictions)):
        np.testing.assert_allclose(pearson_r(y, pred), result.test_per_run[r], atol=1e-5)
    observed, p = circular_shift_pvalues(ys, result.predictions, 200)
    np.testing.assert_allclose(observed, result.test, atol=1e-5)
    assert p[:10].max() < 0.01 and np.median(p[10:]) > 0.2
    with pytest.raises(MtbenchError, match="too few for circular shifts"):
        circular_shift_pvalues([y[:15] for y in ys], [p_[:15] for p_ in result.predictions], 10, min_shift=8)
    with pytest.raises(MtbenchError, match="run 1 has BOLD"):
        circular_shift_pvalues(ys, [result.predictions[0], result.predictions[1][:, :3], *result.predictions[2:]], 10)
    with pytest.raises(MtbenchError, match="4 BOLD runs but 2 prediction runs"):
        circular_shift_pvalues(ys, result.predictions[:2], 10)


def test_run_confidence_interval_covers_truth():
    """Independent runs (no shared training data): the plain t interval over runs."""
    rho, n_sims, covered, widths = 0.25, 300, 0, []
    for sim in range(n_sims):
        rng = np.random.default_rng(1000 + sim)
        ys, preds = simulate(rng, n_runs=9, n_scans=120, n_voxels=20, n_signal=20, r=rho, phi=0.6)
        per_run = np.array([pearson_r(y, p).mean() for y, p in zip(ys, preds)])  # parcel mean per test run
        low, high = run_confidence_interval(per_run, cross_fitted=False)
        covered += low <= rho <= high
        widths.append(high - low)
    assert 0.91 <= covered / n_sims <= 0.99
    assert np.mean(widths) < 0.1
    low, high = run_confidence_interval(np.array([[0.1, 0.2]]))
    assert np.isnan(low).all() and np.isnan(high).all()


def _zscore(a):
    return ((a - a.mean(0)) / a.std(0)).astype(np.float32)


def _cross_fitted(rng, n_scans, n_features, n_null, n_signal, gain, w=None):
    """Smooth features and AR(1) BOLD of 9 runs; the first ``n_signal`` voxels depend on the features."""
    xs = [_zscore(lfilter([1], [1, -0.5], rng.standard_normal((n_scans, n_features)), axis=0)) for _ in range(9)]
    w = rng.standard_normal((n_features, n_signal)) if w is None else w
    ys = []
    for x in xs:
        y = lfilter([1], [1, -0.4], rng.standard_normal((n_scans, n_null + n_signal)), axis=0)
        y[:, :n_signal] += gain * (x @ w) / np.sqrt(n_features)
        ys.append(_zscore(y))
    return xs, ys


def test_cross_fitted_scores_need_the_fold_dependence_calibration():
    """The held-out predictions of nested LORO share training runs: the per-run shift null
    alone rejects ~13% of null voxels at p < 0.05; spread by the measured fold dependence, the
    test holds its level and BH its FDR, and planted voxels are still found."""
    alphas, raw, calibrated, fdp, power = np.logspace(-1, 5, 7), [], [], [], []
    for sim in range(3):
        xs, ys = _cross_fitted(np.random.default_rng(sim), 150, 24, n_null=1500, n_signal=150, gain=0.25)
        inflation = fold_dependence(lambda y: fit_nested_loro(xs, y, alphas, return_predictions=True).predictions,
                                    ys, seed=sim)
        assert 1.5 < inflation < 2.6  # about 1 + 8 * 0.12: nine folds correlated ~0.12
        predictions = fit_nested_loro(xs, ys, alphas, return_predictions=True).predictions
        raw.append(np.mean(run_pvalues(ys, predictions, 500, seed=sim)[150:] < 0.05))
        p = run_pvalues(ys, predictions, 500, seed=sim, inflation=inflation)
        calibrated.append(np.mean(p[150:] < 0.05))
        significant = bh_fdr(p) <= 0.1
        fdp.append(significant[150:].sum() / max(1, significant.sum()))
        power.append(significant[:150].mean())
    assert np.mean(raw) > 0.09  # uncalibrated: anti-conservative
    assert np.mean(calibrated) <= 0.06
    assert np.mean(fdp) <= 0.1
    assert np.mean(power) > 0.8


def test_fold_dependence_is_one_for_independent_predictions():
    """Predictions that were not cross-fitted (independent per run): nothing to correct."""
    rng = np.random.default_rng(8)
    ys, preds = simulate(rng, n_runs=9, n_scans=120, n_voxels=2000, phi=0.6)
    observed, mean, sd = shift_null_moments(ys, preds)
    z = (observed - mean) / sd
    assert abs(np.mean(z**2) - 1) < 0.1
    inflation = fold_dependence(lambda shifted: preds, ys, seed=1)  # "refit" ignores the BOLD
    assert 1.0 <= inflation < 1.1
    with pytest.raises(MtbenchError, match="inflation must be a positive number"):
        circular_shift_pvalues(ys, preds, 10, inflation=float("nan"))


def test_cross_fitted_confidence_interval_covers_the_expected_score():
    """Cross-fitted folds: the plain t interval is too narrow (the folds' scores correlate);
    the Nadeau-Bengio corrected one covers the expected held-out score."""
    w = np.random.default_rng(7).standard_normal((10, 20))
    means, corrected, plain = [], [], []
    for sim in range(200):
        xs, ys = _cross_fitted(np.random.default_rng(1000 + sim), 100, 10, n_null=0, n_signal=20, gain=0.3, w=w)
        per_run = fit_nested_loro(xs, ys, np.logspace(-1, 5, 7)).test_per_run.mean(1)  # parcel mean per run
        means.append(per_run.mean())
        corrected.append(run_confidence_interval(per_run))
        plain.append(run_confidence_interval(per_run, cross_fitted=False))
    truth = np.mean(means)  # the expected score of this model, +-0.001
    assert 0.93 <= np.mean([low <= truth <= high for low, high in corrected]) <= 0.995
    assert np.mean([low <= truth <= high for low, high in plain]) < 0.92


def test_ceiling_from_split_half_is_the_best_achievable_r():
    rng = np.random.default_rng(5)
    n_scans, n_subjects, n_voxels = 4000, 20, 6
    signal = rng.standard_normal((n_scans, n_voxels))
    noise_sd = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 1e3])
    subjects = signal[None] + noise_sd * rng.standard_normal((n_subjects, n_scans, n_voxels))
    half = pearson_r(subjects[::2].mean(0), subjects[1::2].mean(0))
    ceiling = ceiling_from_split_half(half)
    best = pearson_r(subjects.mean(0), signal)  # a perfect model of the repeatable signal
    np.testing.assert_allclose(ceiling[:5], best[:5], atol=0.03)
    assert ceiling[5] < 0.25  # no repeatable signal (sqrt magnifies the sampling noise of r_half ~0.01)
    normalized = normalize_by_ceiling(np.stack([best, best / 2]), ceiling)
    np.testing.assert_allclose(normalized[0, :5], 1.0, atol=0.05)
    np.testing.assert_allclose(normalized[1, :5], 0.5, atol=0.03)
    assert np.isnan(normalize_by_ceiling(np.array([0.3, 0.3]), np.array([0.0, 0.04]))).all()
    with pytest.raises(MtbenchError, match="ceiling has shape"):
        normalize_by_ceiling(best, ceiling[:3])
    with pytest.raises(MtbenchError, match="split-half"):
        ceiling_from_split_half(np.array([0.5, np.nan]))


def test_runs_as_views_of_one_array_fit_identically_without_a_copy():
    from mtbench.encoding.eigen_parts import concatenated_rows as _concatenated_rows

    rng = np.random.default_rng(4)
    x_all = rng.standard_normal((150, 6)).astype(np.float32)
    y_all = (x_all @ rng.standard_normal((6, 12)) + rng.standard_normal((150, 12))).astype(np.float32)
    y_before = y_all.copy()
    edges = [0, 40, 90, 150]
    xs = [x_all[a:b] for a, b in zip(edges[:-1], edges[1:])]
    ys = [y_all[a:b] for a, b in zip(edges[:-1], edges[1:])]
    assert np.shares_memory(_concatenated_rows(ys), y_all)
    assert not np.shares_memory(_concatenated_rows([ys[0], ys[2]]), y_all)  # not consecutive: a copy
    np.testing.assert_array_equal(_concatenated_rows([ys[0], ys[2]]), np.concatenate([ys[0], ys[2]]))
    views = fit_nested_loro(xs, ys, np.logspace(-1, 3, 5), precision="float32")
    copies = fit_nested_loro([x.copy() for x in xs], [y.copy() for y in ys], np.logspace(-1, 3, 5), precision="float32")
    np.testing.assert_array_equal(views.test_per_run, copies.test_per_run)
    np.testing.assert_array_equal(views.alpha, copies.alpha)
    np.testing.assert_array_equal(y_all, y_before)  # the shared buffer is only read


def test_pvalues_block_by_block_equal_the_whole_fit(monkeypatch):
    """on_predictions hands out the held-out predictions per voxel block: p-values computed there
    equal those of all predictions at once (same shifts for every voxel), and match the fit's r."""
    import mtbench.encoding.limits as engine

    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((60, 12)).astype(np.float32) for _ in range(4)]
    w = rng.standard_normal((12, 300)).astype(np.float32)
    ys = [(x @ w) * 0.3 + rng.standard_normal((60, 300)).astype(np.float32) for x in xs]
    ys = [(y - y.mean(0)) / y.std(0) for y in ys]
    whole = fit_nested_loro(xs, ys, np.logspace(-1, 3, 5), return_predictions=True)
    expected = run_pvalues(ys, whole.predictions, 200, seed=4)
    got = np.full(300, np.nan, dtype=np.float32)
    seen = []

    def per_block(c0, c1, preds):
        seen.append((c0, c1))
        assert [p.shape for p in preds] == [(60, c1 - c0)] * 4
        got[c0:c1] = run_pvalues([y[:, c0:c1] for y in ys], preds, 200, seed=4)

    monkeypatch.setattr(engine, "MAX_BLOCK", 64)
    monkeypatch.setattr(engine, "MIN_BLOCK", 64)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)  # chunks of one block: predictions handed out per 64 voxels
    fit_nested_loro(xs, ys, np.logspace(-1, 3, 5), on_predictions=per_block)
    assert seen[0] == (0, 64) and seen[-1] == (256, 300) and len(seen) == 5
    # the refit multiplies each alpha's voxels as one product: with other voxels beside them the
    # float32 predictions may round differently (the Gaussian-tail p-values then by ~1e-6 relative)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert (expected[:150] < 0.05).mean() > 0.5  # signal everywhere: most voxels significant


def test_calibration_columns_ride_along_in_the_real_fit(monkeypatch):
    """The runner fits the null calibration columns with the real voxels (per-voxel alpha: the
    voxels are independent): same scores as a fit without them, same inflation as a refit of
    the columns alone, and p-values equal to testing the whole fit at once with it."""
    import mtbench.encoding.limits as engine
    from mtbench.significance import ShiftTest, calibration_columns

    xs, ys = _cross_fitted(np.random.default_rng(5), 120, 16, n_null=300, n_signal=60, gain=0.3)
    alphas = np.logspace(-1, 5, 7)
    cal = calibration_columns(ys, 200, seed=2)
    assert [c.shape for c in cal] == [(120, 200)] * 9
    targets = [np.concatenate([c, y], axis=1) for c, y in zip(cal, ys)]
    monkeypatch.setattr(engine, "MAX_BLOCK", 64)
    monkeypatch.setattr(engine, "MIN_BLOCK", 64)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)  # blocks of 64: one straddles calibration and real columns
    test = ShiftTest(targets, 200, 300, seed=3)
    together = fit_nested_loro(xs, targets, alphas, on_predictions=test)
    alone = fit_nested_loro(xs, ys, alphas, return_predictions=True)
    np.testing.assert_allclose(together.test[200:], alone.test, atol=1e-5)
    np.testing.assert_array_equal(together.alpha[200:], alone.alpha)
    refit = fold_dependence(lambda y: fit_nested_loro(xs, y, alphas, return_predictions=True).predictions, ys,
                            200, seed=2)
    assert test.inflation == pytest.approx(refit, rel=1e-4) and test.inflation > 1.2
    np.testing.assert_allclose(test.p_values, run_pvalues(ys, alone.predictions, 300, 3, test.inflation), atol=0.01)
    assert np.median(test.p_values[:60]) < 0.01 < np.median(test.p_values[60:])

    with pytest.raises(RuntimeError, match="out of order"):  # real voxels before all calibration columns
        ShiftTest(targets, 200, 10)(64, 300, [t[:, 64:300] for t in targets])
    with pytest.raises(ValueError, match="either calibration columns or a known inflation"):
        ShiftTest(targets, 200, 10, inflation=2.0)


@pytest.mark.parametrize("max_bytes", [64 * 2**20, 0], ids=["spectra-kept", "too-large-to-keep"])
def test_bold_spectra_made_once_give_the_same_pvalues(monkeypatch, max_bytes):
    """The BOLD's centered norms and spectra, made once per run (:class:`BoldSpectra`) and shared by
    every fit's ShiftTest, give bit-identical inflation and p-values, calibration blocks included;
    above ``max_bytes`` none are kept and each test makes its own."""
    import mtbench.encoding.limits as engine
    import mtbench.significance as significance
    from mtbench.significance import BoldSpectra, ShiftTest, calibration_columns

    xs, ys = _cross_fitted(np.random.default_rng(8), 100, 12, n_null=200, n_signal=40, gain=0.3)
    targets = [np.concatenate([c, y], axis=1) for c, y in zip(calibration_columns(ys, 150, seed=1), ys)]
    monkeypatch.setattr(engine, "MAX_BLOCK", 64)
    monkeypatch.setattr(engine, "MIN_BLOCK", 64)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)  # blocks of 64: one straddles calibration and real columns
    alphas = np.logspace(-1, 5, 5)
    plain = ShiftTest(targets, 150, 200, seed=3)
    fit_nested_loro(xs, targets, alphas, on_predictions=plain)
    spectra = BoldSpectra(targets, max_bytes=max_bytes)
    assert (spectra.runs is None) == (max_bytes == 0)
    made, correlated = [], []
    real, real_correlations = significance.bold_spectra, significance.shifted_correlations
    monkeypatch.setattr(significance, "bold_spectra", lambda y: made.append(y.shape) or real(y))
    monkeypatch.setattr(significance, "shifted_correlations",
                        lambda *a: correlated.append(1) or real_correlations(*a))
    shared = ShiftTest(targets, 150, 200, seed=3, spectra=spectra)
    fit_nested_loro(xs, targets, alphas, on_predictions=shared)
    # kept: only the predictions' spectra are made per block; else the BOLD's too
    assert correlated and len(made) == len(correlated) * (2 if max_bytes == 0 else 1)
    assert shared.inflation == plain.inflation
    np.testing.assert_array_equal(shared.p_values, plain.p_values)


def test_shared_alpha_null_columns_are_refitted_with_the_fits_alphas():
    """One alpha for all voxels (``--shared-alpha``, the mindtransformer protocol): the null
    columns cannot ride along (they would vote for the alpha), so they are refitted with the
    alphas the real fit chose, as a null voxel of that fit is, without an alpha search. The
    test then holds its level, BH its FDR, and planted voxels are found."""
    from mtbench.settings import RunSettings
    from mtbench_plugins.analyses.mode1.fit import shared_alpha_test

    alphas, calibrated, fdp, power = np.logspace(-1, 5, 7), [], [], []
    for sim in range(3):
        xs, ys = _cross_fitted(np.random.default_rng(10 + sim), 150, 24, n_null=1500, n_signal=150, gain=0.25)
        calls = []

        def fit(y_runs, **kwargs):
            calls.append(kwargs)
            return fit_nested_loro(xs, y_runs, alphas, shared_alpha=True, **kwargs)

        result = fit(ys, return_predictions=True)
        predictions = result.predictions
        test = shared_alpha_test(fit, result, ys, RunSettings(model="m", dataset="d", states=["s"],
                                                                    permutations=500, seed=sim))
        refit = calls[1]["alpha_per_run"]  # the null columns' refit: every column gets the fit's alpha
        assert refit.shape == (9, 1000) and (refit == result.alpha_per_run[:, :1]).all()
        assert 1.5 < test.inflation < 2.6
        np.testing.assert_allclose(test.p_values, run_pvalues(ys, predictions, 500, sim, test.inflation), atol=0)
        calibrated.append(np.mean(test.p_values[150:] < 0.05))
        significant = bh_fdr(test.p_values) <= 0.1
        fdp.append(significant[150:].sum() / max(1, significant.sum()))
        power.append(significant[:150].mean())
    assert np.mean(calibrated) <= 0.06
    assert np.mean(fdp) <= 0.1
    assert np.mean(power) > 0.8
