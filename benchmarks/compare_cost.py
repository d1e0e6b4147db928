"""Cost of `mtbench compare` at LPP scale against one fit, measured in the same process, and the
calibration tables of docs/compare.md.

Cost (default): the real English LPP timing (9 runs: 282, 298, 340, 303, 265, 343, 325, 292, 368
scans), 25,870 voxels, features of SmolLM2-135M's per-head query width (576), 9 alphas; BOLD and
features simulated (no real BOLD here). Times

- one fit: ``fit_nested_loro`` (the alpha search, what `mtbench run` does per (layer, state));
- one comparison: the two refits with stored alphas and their held-out predictions
  (``alpha_per_run``, ``return_predictions``), then ``PairedTest`` (the default corrected-t, which
  makes the same pass over the scans as flat-top, 48 parcels), and
  the same with ``block-bootstrap`` (1,000 draws) for reference;

and prints their ratio. ``--calibration`` instead prints the null rejection rate, coverage and power
tables (each voxel a repetition, binomial 95% intervals).

    OPENBLAS_NUM_THREADS=1 python benchmarks/compare_cost.py            # cost, ~1-2 min on 2 vCPUs
    python benchmarks/compare_cost.py --calibration                     # the tables of docs/compare.md
    python benchmarks/compare_cost.py --group                           # the group test's table
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

LPP_EN_SCANS = [282, 298, 340, 303, 265, 343, 325, 292, 368]


def binomial_interval(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def cost(n_voxels: int, dim: int, seed: int = 0) -> None:
    from mtbench_plugins.commands.compare.stats import PairedTest

    from mtbench.encoding import fit_nested_loro

    rng = np.random.default_rng(seed)
    alphas = np.logspace(0, 8, 9)
    x_a = [rng.standard_normal((n, dim)).astype(np.float32) for n in LPP_EN_SCANS]
    x_b = [rng.standard_normal((n, dim)).astype(np.float32) for n in LPP_EN_SCANS]
    weights = rng.standard_normal((dim, n_voxels)).astype(np.float32) / np.sqrt(dim)
    y = [(xa @ weights * 0.3 + rng.standard_normal((xa.shape[0], n_voxels))).astype(np.float32) for xa in x_a]
    y = [(v - v.mean(0)) / v.std(0) for v in y]
    labels = rng.integers(1, 49, n_voxels)
    names = {i: f"parcel {i}" for i in range(1, 49)}

    start = time.perf_counter()
    fit_a = fit_nested_loro(x_a, y, alphas)
    t_fit = time.perf_counter() - start
    fit_b = fit_nested_loro(x_b, y, alphas)  # not timed: the second run's own fit

    start = time.perf_counter()
    refit_a = fit_nested_loro(x_a, y, alphas, alpha_per_run=fit_a.alpha_per_run, return_predictions=True)
    refit_b = fit_nested_loro(x_b, y, alphas, alpha_per_run=fit_b.alpha_per_run, return_predictions=True)
    t_refit = time.perf_counter() - start
    start = time.perf_counter()
    result = PairedTest().fit(y, refit_a.predictions, refit_b.predictions, labels, names)
    t_test = time.perf_counter() - start
    start = time.perf_counter()
    PairedTest(method="block-bootstrap", n_boot=1000).fit(y, refit_a.predictions, refit_b.predictions, labels, names)
    t_boot = time.perf_counter() - start
    assert np.allclose(refit_a.test_per_run, fit_a.test_per_run, atol=2e-3)  # the refit is the fit
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs")
    print(f"{len(LPP_EN_SCANS)} runs, {sum(LPP_EN_SCANS)} scans, {n_voxels} voxels, {dim} features, 9 alphas")
    print(f"one fit (alpha search):          {t_fit:7.1f} s")
    print(f"two refits with stored alphas:   {t_refit:7.1f} s")
    print(f"paired test, corrected-t (one flat-top pass, lags {result.lags}): {t_test:7.1f} s")
    print(f"compare = refits + test:         {t_refit + t_test:7.1f} s  ratio to one fit {(t_refit + t_test) / t_fit:.2f}")
    print(f"(block-bootstrap, 1,000 draws:   {t_boot:7.1f} s; with the refits, ratio {(t_refit + t_boot) / t_fit:.2f})")


def _row(label, res, delta, n_voxels):
    rejected = int(np.sum(res.p_value < 0.05))
    covered = int(np.sum((res.ci_low <= delta) & (res.ci_high >= delta)))
    lo, hi = binomial_interval(rejected, n_voxels)
    clo, chi = binomial_interval(covered, n_voxels)
    return (f"| {label} | {delta} | {rejected / n_voxels:.4f} [{lo:.4f}, {hi:.4f}] | "
            f"{covered / n_voxels:.4f} [{clo:.4f}, {chi:.4f}] | {np.mean(res.q_value <= 0.05):.4f} |")


def calibration(n_voxels: int = 4000, seed: int = 0) -> None:
    """Average subject: each voxel one repetition. Ceiling 0.5 (a weak voxel) and 0.73 (the LPP
    simulation's planted voxels: snr = 2 r / (1 - r) at the real mean ISC r = 0.365)."""
    from mtbench_plugins.commands.compare.simulate import paired_predictions
    from mtbench_plugins.commands.compare.stats import PairedTest

    runs = LPP_EN_SCANS
    print(f"average subject: {len(runs)} runs of the LPP scan counts, {n_voxels} voxels (repetitions) per row; BOLD "
          "noise AR(1) phi 0.4, signal and predictions phi 0.8")
    print("| method, ceiling, r of B | planted Δr | rejected at p < 0.05 [95% CI] | 95% interval covers Δr [95% CI] "
          "| BH q <= 0.05 |")
    print("|---|---:|---|---|---:|")
    for method, ceiling, r_b in (("flat-top", 0.5, 0.2), ("flat-top", 0.73, 0.3), ("block-bootstrap", 0.5, 0.2)):
        for k, delta in enumerate((0.0, 0.02, 0.05, 0.1)):
            y, a, b = paired_predictions(np.random.default_rng([seed, k]), runs, n_voxels, r_b, delta, phi=0.4,
                                         phi_signal=0.8, noise_ceiling=ceiling)
            res = PairedTest(method=method, n_boot=500).fit(y, a, b)
            print(_row(f"{method} (lags {res.lags}), {ceiling}, {r_b}", res, delta, n_voxels))


def group_calibration(n_subjects: int = 20, n_voxels: int = 1000, seed: int = 1) -> None:
    """Group test over simulated subjects at the LPP per-subject SNR (the average's / 49: ceiling 0.15)."""
    from mtbench_plugins.commands.compare.compare import SubjectComparison, group_test
    from mtbench_plugins.commands.compare.simulate import paired_predictions
    from mtbench_plugins.commands.compare.stats import PairedTest

    print(f"group: {n_subjects} subjects, {len(LPP_EN_SCANS)} LPP runs each, {n_voxels} voxels (repetitions) per row; "
          "per-subject ceiling 0.15 (LPP: snr 1.15 / 49), r of B 0.03; one-sample t-test across subjects")
    print("| test | planted Δr | rejected at p < 0.05 [95% CI] | 95% interval covers Δr [95% CI] | BH q <= 0.05 |")
    print("|---|---:|---|---|---:|")
    for k, delta in enumerate((0.0, 0.02, 0.05, 0.1)):
        subjects = []
        for s in range(n_subjects):
            y, a, b = paired_predictions(np.random.default_rng([seed, k, s]), LPP_EN_SCANS, n_voxels, 0.03, delta,
                                         phi=0.4, phi_signal=0.8, noise_ceiling=0.15)
            subjects.append(SubjectComparison(str(s), PairedTest().fit(y, a, b)))
        voxels, _ = group_test(subjects, 0.95)
        single = np.mean([np.mean(c.result.p_value < 0.05) for c in subjects])

        class Res:  # the group's columns, shaped like a PairedResult for _row
            p_value, ci_low, ci_high, q_value = voxels["p_value"], voxels["ci_low"], voxels["ci_high"], voxels["q_value"]

        print(_row(f"group t (one subject alone rejects {single:.3f})", Res, delta, n_voxels))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=25870)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--calibration", action="store_true")
    parser.add_argument("--group", action="store_true", help="the group test's table")
    args = parser.parse_args()
    if args.calibration:
        calibration()
    elif args.group:
        group_calibration()
    else:
        cost(args.voxels, args.dim)
