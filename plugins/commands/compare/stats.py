"""Paired tests of two fits' held-out scores on the same scans, per voxel and parcel.

Two fits A and B predict the same BOLD ``y`` (held-out predictions of nested leave-one-run-out,
one array per test run). Their score per voxel is Pearson r per run, averaged over runs (what a
run reports as ``test``); the difference is

    Δr = mean_runs (r(y_o, a_o) - r(y_o, b_o)).

Two standard errors (:class:`PairedTest`, ``docs/compare.md``):

- ``corrected-t`` (default): across the test runs, Nadeau & Bengio's corrected resampled t-test
  of the per-run ``Δr_o``: it counts the training noise of both fits as well as the test noise
  (the question "do A's features explain the voxel better?").
- ``flat-top`` / ``block-bootstrap``: the fitted predictions taken as given, only the test
  scans' noise, which is autocorrelated in time (HRF, drifts): resampling single scans (the
  i.i.d. bootstrap) makes it look white and the interval too narrow. The flat-top lag window of
  Δr's influence series within runs (calibrated), or a circular block bootstrap of each run's
  scans (Politis & Romano; liberal, for reference): same resampling for both fits (paired) and for
  every voxel (so a parcel mean keeps the spatial correlation of its voxels).

Intervals are Δr ± t SE and p-values (H0: Δr = 0) the two-sided t ones, so they agree and are
continuous (what BH-FDR across tens of thousands of voxels needs). For the bootstrap, every draw is
a weight vector (how often each scan is drawn), so a run's resampled Pearson r of all voxels comes
from weighted sums, (B, n) @ (n, 5 * voxels) per chunk: no resampled copy of the data is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtbench.errors import MtbenchError

#: voxels per chunk: the moments of a chunk are (n_boot, 8 * CHUNK) float32 (33 MB at 1,000 draws)
CHUNK = 1024
#: voxels whose autocorrelation chooses the block length (a sample: the choice is one number)
BLOCK_SAMPLE = 512
#: correlation of the influence series below which lags are taken as independent
DEPENDENCE_THRESHOLD = 0.01


@dataclass
class PairedResult:
    """Per-voxel paired difference of two fits, and its bootstrap draws' summaries.

    Attributes
    ----------
    r_a, r_b : ndarray, shape (n_voxels,)
        Run-averaged held-out Pearson r of each fit.
    delta : ndarray, shape (n_voxels,)
        ``r_a - r_b``.
    se : ndarray, shape (n_voxels,)
        Bootstrap standard error of ``delta``.
    ci_low, ci_high : ndarray, shape (n_voxels,)
        ``delta ∓ z SE`` at ``level``.
    p_value : ndarray, shape (n_voxels,)
        Two-sided, H0: the two fits' held-out r are equal (1 where undefined: constant predictions).
    q_value : ndarray, shape (n_voxels,)
        Benjamini-Hochberg adjusted across voxels.
    parcels : list of dict
        Per parcel (whole brain first): ``parcel_id, parcel, n_voxels, delta, se, ci_low, ci_high,
        p_value, p_holm, q_value``: the test of the parcel's mean Δr (bootstrap of the mean, so the
        correlation of its voxels is kept), Holm (family-wise) and BH across parcels.
    lags : int
        Dependence range in scans (bandwidth or block length: twice that).
    method : str
    n_boot : int
        Bootstrap draws (0 for ``flat-top``).
    level : float
    """

    r_a: np.ndarray
    r_b: np.ndarray
    delta: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    parcels: list
    lags: int
    method: str
    n_boot: int
    level: float


def circular_block_weights(n: int, block_length: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` scans is drawn by each circular-block bootstrap draw.

    ``ceil(n / block_length)`` blocks start at uniform positions and wrap around the run's end;
    the concatenation is cut to ``n`` scans, so every scan has the same chance to be drawn.

    Returns
    -------
    ndarray of float32, shape (n_boot, n)
        Counts; each row sums to ``n``.
    """
    if not 1 <= block_length <= n:
        raise MtbenchError(f"block length {block_length} must be between 1 and the run's {n} scans")
    n_blocks = -(-n // block_length)
    starts = rng.integers(0, n, size=(n_boot, n_blocks))
    index = (starts[:, :, None] + np.arange(block_length)).reshape(n_boot, -1)[:, :n] % n
    weights = np.zeros((n_boot, n), dtype=np.float32)
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), index.ravel()), 1.0)
    return weights


def _standardize(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    sd = a.std(0)
    return a / np.where(sd > 0, sd, 1.0)


def influence(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-scan influence of each scan on ``r(y, a) - r(y, b)`` (its first-order expansion), and the two r.

    With ``z`` the columns standardized over the run, ``r`` is the mean of ``zy zp`` and its
    influence ``zy zp - r (zy² + zp²) / 2``: the mean of the series is 0 and its long-run
    variance over ``n`` is the variance of r, whatever the autocorrelation.

    Returns
    -------
    d : ndarray, shape (n, n_voxels), float64
    r_a, r_b : ndarray, shape (n_voxels,)
    """
    zy, za, zb = (_standardize(np.asarray(m, dtype=np.float64)) for m in (y, a, b))
    r_a, r_b = (zy * za).mean(0), (zy * zb).mean(0)
    d = zy * (za - zb) - r_a * (zy ** 2 + za ** 2) / 2 + r_b * (zy ** 2 + zb ** 2) / 2
    for r, z in ((r_a, za), (r_b, zb)):  # constant predictions: r undefined
        flat = ~(z.std(0) > 0)
        r[flat] = np.nan
    return d, r_a, r_b


def autocovariances(d: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocovariances at lags 0..max_lag of each column about its mean, each lag's sum over its
    ``n - k`` products divided by ``n - k``: (max_lag + 1, n_series)."""
    n = d.shape[0]
    d = d - d.mean(0)
    return np.stack([(d[: n - k] * d[k:]).sum(0) / (n - k) for k in range(max_lag + 1)])


def flat_top_variance(gamma: np.ndarray, bandwidth: int, n: int) -> np.ndarray:
    """Long-run variance ``Σ_k λ(k / M) γ(k)`` with the trapezoidal flat-top window (Politis & Romano 1995),
    corrected for the centring of a series of ``n`` scans.

    ``λ = 1`` up to half the bandwidth ``M`` and falls linearly to 0 at ``M``: lags inside the
    dependence range count fully, so the window adds no first-order bias (a block bootstrap's
    variance is the Bartlett window's, biased down by ``Σ |k| γ(k) / L``). Autocovariances about
    the sample mean (and the influence series of r sums to 0 by construction) are each low by
    about the long-run variance over ``n``, so the sum is low by the factor ``1 - Σ_k λ(k/M) / n``;
    it is divided by that factor. Where the estimate is below the Bartlett window's (it can be
    negative), that one is kept.
    """
    lags = np.arange(gamma.shape[0])[:, None]
    t = lags / max(bandwidth, 1)
    flat = np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2.0 * (1.0 - t), 0.0))
    bartlett = np.clip(1.0 - t, 0.0, None)
    two_sided = np.where(lags == 0, 1.0, 2.0)
    centring = 1.0 - (two_sided * flat).sum() / n
    return np.maximum((two_sided * flat * gamma).sum(0), (two_sided * bartlett * gamma).sum(0)) / max(centring, 0.25)


def degrees_of_freedom(run_scans: Sequence[int], bandwidth: int) -> float:
    """Degrees of freedom of the flat-top variance estimate, summed over runs: a lag-window estimate
    of bandwidth ``M`` from ``n`` scans has relative variance ``2 (M / n) ∫λ²`` (Priestley), with
    ``∫λ² = 4/3`` for the trapezoid, hence ``n / (4/3 M)`` degrees of freedom per run."""
    return float(sum(n / (4.0 / 3.0 * max(bandwidth, 1)) for n in run_scans))


def dependence_range(y_runs, a_runs, b_runs, seed: int = 0, threshold: float = DEPENDENCE_THRESHOLD) -> int:
    """Lags over which the influence series of Δr stay correlated, for every voxel: twice the first lag
    after which the correlogram pooled over a sample of voxels and all runs stays below
    ``threshold`` for 5 lags, at least ``2 n^(1/3)`` and at most a quarter of the shortest run
    (``n`` scans). Measured calibration against the choice: ``docs/compare.md``.

    Pooling makes the correlogram exact to about ``1 / sqrt(n_scans x n_sample)`` (0.001 at LPP
    scale), so the range is not the noisy per-voxel one of Politis & White's rule.
    """
    rng = np.random.default_rng(seed)
    n_vox = y_runs[0].shape[1]
    cols = np.sort(rng.choice(n_vox, size=min(BLOCK_SAMPLE, n_vox), replace=False))
    shortest = min(y.shape[0] for y in y_runs)
    cap = max(shortest // 4, 1)
    lags = min(cap + 5, shortest - 1)
    pooled, weight, ok_series = np.zeros(lags + 1), 0, 0
    for y, a, b in zip(y_runs, a_runs, b_runs):
        d, _, _ = influence(y[:, cols], a[:, cols], b[:, cols])
        gamma = autocovariances(d, lags)
        ok = gamma[0] > 0
        pooled += (gamma[:, ok] / gamma[0, ok]).sum(1) * y.shape[0]
        weight += ok.sum() * y.shape[0]
        ok_series += ok.sum()
    if weight == 0:  # every sampled series constant (identical fits): nothing to measure
        return int(min(max(int(np.ceil(2 * shortest ** (1 / 3))), 1), cap))
    rho = pooled / weight
    # about the sample mean, each autocorrelation is low by about (1 + 2 Σ rho) / n: added back
    rho = rho + (1.0 + 2.0 * np.clip(rho[1:], 0, None).sum()) / (weight / ok_series)
    found = next((m for m in range(1, lags - 4) if np.all(np.abs(rho[m + 1:m + 6]) < threshold)), cap)
    # twice the range, and at least 2 n^(1/3) (the usual bandwidth rate): a longer window costs
    # degrees of freedom (counted in the t reference), a shorter one biases the variance down
    return int(min(max(2 * found, int(np.ceil(2 * shortest ** (1 / 3)))), cap))


def _weighted_r(weights: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pearson r of every column pair under every weight row: (B, n), (n, V), (n, V) -> (B, V)."""
    n = float(weights.shape[1])
    v = y.shape[1]
    moments = weights @ np.concatenate([y, y * y, p, p * p, y * p], axis=1)  # (B, 5V)
    my, myy, mp, mpp, myp = (moments[:, i * v:(i + 1) * v] / n for i in range(5))
    cov = myp - my * mp
    var = np.maximum(myy - my * my, 0.0) * np.maximum(mpp - mp * mp, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)


def _pearson(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    y = y - y.mean(0)
    p = p - p.mean(0)
    den = np.sqrt((y * y).sum(0) * (p * p).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (y * p).sum(0) / den, np.nan)


METHODS = ("corrected-t", "flat-top", "block-bootstrap")


class PairedTest:
    """Paired test of the held-out Δr of two fits on the same scans, per voxel and per parcel.

    Parameters
    ----------
    method : {"corrected-t", "flat-top", "block-bootstrap"}
        How the standard error of Δr is estimated. ``corrected-t`` (default): across the test
        runs, from the per-run differences ``Δr_o`` with the Nadeau & Bengio (2003) correction
        for cross-validation, ``Var = s² (1/R + 1/(R - 1))`` (the folds' models share training
        runs), Student t with ``R - 1`` degrees of freedom: it counts the training noise of the
        two fits as well as the test noise (each run's autocorrelation is inside its ``Δr_o``).
        The others condition on the fitted predictions (test noise only). ``flat-top``: the long-run variance of Δr's influence series per run with the flat-top
        lag window (:func:`flat_top_variance`), bandwidth twice the dependence range; no random
        draws. ``block-bootstrap``: the standard deviation of Δr over circular-block bootstrap
        draws of each run's scans (:func:`circular_block_weights`; same draws for both fits and
        every voxel), blocks of twice the dependence range. Measured calibration of both:
        ``docs/compare.md``.
    n_boot : int
        Bootstrap draws (``block-bootstrap``; the SE's relative error is ``1 / sqrt(2 n_boot)``).
    lags : int or None
        Dependence range in scans; None: :func:`dependence_range` (from the data).
    level : float
        Confidence level of the intervals.
    seed : int
    chunk : int
        Voxels per chunk (memory: ``n_scans x chunk`` float64 per series, ``n_boot x 5 x chunk``
        float32 per fit for the bootstrap).

    Examples
    --------
    >>> result = PairedTest().fit(y_runs, a_runs, b_runs, labels, names)
    >>> result.delta, result.ci_low, result.q_value, result.parcels[0]
    """

    def __init__(self, method: str = "corrected-t", n_boot: int = 1000, lags: int | None = None, level: float = 0.95,
                 seed: int = 0, chunk: int = CHUNK):
        if method not in METHODS:
            raise MtbenchError(f"unknown comparison method {method!r}: choose one of {', '.join(METHODS)}")
        if method == "block-bootstrap" and n_boot < 50:
            raise MtbenchError(f"--bootstraps {n_boot} is too few for a standard error; give at least 50 (1000 is "
                               "the default)")
        if not 0.5 < level < 1:
            raise MtbenchError(f"confidence level {level} must be between 0.5 and 1 (e.g. 0.95)")
        if lags is not None and lags < 1:
            raise MtbenchError(f"--lags {lags} must be at least 1 (scans over which the noise stays correlated)")
        self.method, self.n_boot, self.lags, self.level, self.seed, self.chunk = method, n_boot, lags, level, seed, chunk

    def fit(self, y_runs, a_runs, b_runs, labels: np.ndarray | None = None, names: dict | None = None) -> PairedResult:
        """Per-voxel and per-parcel tests.

        Parameters
        ----------
        y_runs, a_runs, b_runs : list of ndarray, each shape (n_scans_r, n_voxels)
            BOLD and the two fits' held-out predictions, per test run.
        labels : ndarray of int, shape (n_voxels,), optional
        names : dict of int to str, optional
            The parcels (as a dataset's); None: the whole brain only.

        Returns
        -------
        PairedResult
        """
        from mtbench.results import parcel_groups

        y_runs, a_runs, b_runs = _check(y_runs, a_runs, b_runs)
        n_vox = y_runs[0].shape[1]
        lags = self.lags or dependence_range(y_runs, a_runs, b_runs, self.seed)
        shortest = min(y.shape[0] for y in y_runs)
        if lags > shortest // 2:
            raise MtbenchError(f"--lags {lags} is more than half the shortest run ({shortest} scans); give fewer")
        labels = np.zeros(n_vox, dtype=np.int64) if labels is None else np.asarray(labels)
        groups = parcel_groups(labels, names or {})
        member = np.zeros((n_vox, len(groups)))  # voxel -> parcel mean
        for g, (_, _, idx) in enumerate(groups):
            member[idx, g] = 1.0 / idx.size
        n_runs = len(y_runs)
        if self.method == "block-bootstrap":
            r_a, r_b, var, parcel_var = self._bootstrap(y_runs, a_runs, b_runs, member, min(2 * lags, shortest))
            df = np.inf
        else:
            r_a, r_b, var, parcel_var, per_run = self._flat_top(y_runs, a_runs, b_runs, member, 2 * lags)
            df = degrees_of_freedom([y.shape[0] for y in y_runs], 2 * lags)
        if self.method == "corrected-t":
            if n_runs < 3:
                raise MtbenchError(f"the corrected t-test across runs needs at least 3 test runs, got {n_runs}; use "
                                   "--method flat-top")
            var, parcel_var = corrected_variance(per_run), corrected_variance(np.nan_to_num(per_run) @ member)
            df = n_runs - 1
        delta = r_a - r_b
        se = np.sqrt(var)
        p_value, low, high = normal_test(delta, se, self.level, df)
        parcel_delta = np.nan_to_num(delta) @ member
        parcel_se = np.sqrt(parcel_var)
        pp, plo, phi = normal_test(parcel_delta, parcel_se, self.level, df)
        holm, q_parcel = holm_adjust(pp[1:]), bh(pp[1:])  # across parcels; the whole brain is its own test
        rows = []
        for g, (pid, name, idx) in enumerate(groups):
            rows.append({"parcel_id": int(pid), "parcel": name, "n_voxels": int(idx.size),
                         "delta": float(parcel_delta[g]), "se": float(parcel_se[g]), "ci_low": float(plo[g]),
                         "ci_high": float(phi[g]), "p_value": float(pp[g]),
                         "p_holm": float(pp[0] if g == 0 else holm[g - 1]),
                         "q_value": float(pp[0] if g == 0 else q_parcel[g - 1])})
        return PairedResult(r_a=r_a, r_b=r_b, delta=delta, se=se, ci_low=low, ci_high=high, p_value=p_value,
                            q_value=bh(p_value), parcels=rows, lags=int(lags), method=self.method,
                            n_boot=self.n_boot if self.method == "block-bootstrap" else 0, level=self.level)

    def _flat_top(self, y_runs, a_runs, b_runs, member, bandwidth):
        """Run-averaged r of both fits, Var(Δr) per voxel and per parcel from the influence series."""
        n_vox, n_runs = y_runs[0].shape[1], len(y_runs)
        r_a, r_b, var = np.zeros(n_vox), np.zeros(n_vox), np.zeros(n_vox)
        parcel_var = np.zeros(member.shape[1])
        per_run = np.zeros((n_runs, n_vox))  # Δr of each test run
        for o, (y, a, b) in enumerate(zip(y_runs, a_runs, b_runs)):
            n = y.shape[0]
            parcel_d = np.zeros((n, member.shape[1]))
            for start in range(0, n_vox, self.chunk):
                sl = slice(start, min(start + self.chunk, n_vox))
                d, ra, rb = influence(y[:, sl], a[:, sl], b[:, sl])
                r_a[sl] += ra / n_runs
                r_b[sl] += rb / n_runs
                per_run[o, sl] = ra - rb
                var[sl] += flat_top_variance(autocovariances(d, bandwidth), bandwidth, n) / n / n_runs ** 2
                parcel_d += np.where(np.isfinite(ra - rb), 1.0, 0.0) * d @ member[sl]
            parcel_var += flat_top_variance(autocovariances(parcel_d, bandwidth), bandwidth, n) / n / n_runs ** 2
        return r_a, r_b, var, parcel_var, per_run

    def _bootstrap(self, y_runs, a_runs, b_runs, member, block):
        """The same from circular-block bootstrap draws (same draws for both fits and every voxel)."""
        rng = np.random.default_rng(self.seed)
        weights = [circular_block_weights(y.shape[0], block, self.n_boot, rng) for y in y_runs]
        n_vox, n_runs = y_runs[0].shape[1], len(y_runs)
        r_a, r_b, var = np.zeros(n_vox), np.zeros(n_vox), np.zeros(n_vox)
        parcel_star = np.zeros((self.n_boot, member.shape[1]))
        for start in range(0, n_vox, self.chunk):
            sl = slice(start, min(start + self.chunk, n_vox))
            star = np.zeros((self.n_boot, sl.stop - start))
            for w, y, a, b in zip(weights, y_runs, a_runs, b_runs):
                ys, as_, bs = (_center(m[:, sl]) for m in (y, a, b))
                star += (_weighted_r(w, ys, as_) - _weighted_r(w, ys, bs)) / n_runs
                r_a[sl] += _pearson(ys, as_) / n_runs
                r_b[sl] += _pearson(ys, bs) / n_runs
            var[sl] = np.var(star, axis=0, ddof=1)
            parcel_star += np.nan_to_num(star) @ member[sl]
        return r_a, r_b, var, np.var(parcel_star, axis=0, ddof=1)


def corrected_variance(per_run: np.ndarray) -> np.ndarray:
    """Nadeau & Bengio's corrected variance of the mean of ``R`` cross-validated differences:
    ``s² (1/R + n_test/n_train)``, with ``n_test/n_train = 1/(R - 1)`` for leave-one-run-out.

    Parameters
    ----------
    per_run : ndarray, shape (R, K)

    Returns
    -------
    ndarray, shape (K,)
    """
    r = per_run.shape[0]
    return np.var(per_run, axis=0, ddof=1) * (1.0 / r + 1.0 / (r - 1))


def _center(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    return m - m.mean(0, dtype=np.float64).astype(np.float32)


def _check(y_runs, a_runs, b_runs):
    y_runs, a_runs, b_runs = list(y_runs), list(a_runs), list(b_runs)
    if not (len(y_runs) == len(a_runs) == len(b_runs)) or not y_runs:
        raise MtbenchError(f"BOLD has {len(y_runs)} runs, fit A {len(a_runs)} and fit B {len(b_runs)}; pass the "
                           "held-out predictions of every test run of both fits")
    for r, (y, a, b) in enumerate(zip(y_runs, a_runs, b_runs), start=1):
        if not (np.shape(y) == np.shape(a) == np.shape(b)) or np.ndim(y) != 2:
            raise MtbenchError(f"run {r}: BOLD {np.shape(y)}, fit A {np.shape(a)}, fit B {np.shape(b)}; the "
                               "predictions must be (n_scans, n_voxels) like the BOLD of the same run")
    return y_runs, a_runs, b_runs


def normal_test(delta: np.ndarray, se: np.ndarray, level: float, df: float = np.inf):
    """Two-sided p-value of H0: 0 and the interval ``delta ∓ t se`` (Student t with ``df`` degrees of
    freedom: the standard error is itself estimated); p = 1 and NaN interval where undefined."""
    from scipy.stats import t as student

    delta, se = np.asarray(delta, dtype=np.float64), np.asarray(se, dtype=np.float64)
    ok = np.isfinite(delta) & np.isfinite(se) & (se > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(ok, 2.0 * student.sf(np.abs(delta) / np.where(ok, se, 1.0), df), 1.0)
    z = student.ppf(0.5 + level / 2, df)
    return p, np.where(ok, delta - z * se, np.nan), np.where(ok, delta + z * se, np.nan)


def bh(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``); empty stays empty."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    return false_discovery_control(p, method="bh") if p.size else p


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control across the tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum((m - np.arange(m)) * p[order], 1.0))
    out = np.empty(m)
    out[order] = adjusted
    return out


#: tests across subjects of their per-subject Δr (``--group-test``)
GROUP_TESTS = ("t", "sign-flip")


def one_sample_t(values: np.ndarray, level: float = 0.95):
    """One-sample t-test of each column against 0: (n_subjects, K) -> mean, se, p, ci_low, ci_high (each (K,))."""
    from scipy.stats import t as student

    n = values.shape[0]
    mean = values.mean(0)
    se = values.std(0, ddof=1) / np.sqrt(n)
    ok = np.isfinite(mean) & (se > 0)
    tval = np.where(ok, mean / np.where(ok, se, 1.0), 0.0)
    p = np.where(ok, 2 * student.sf(np.abs(tval), n - 1), 1.0)
    half = student.ppf(0.5 + level / 2, n - 1) * se
    return mean, se, p, mean - half, mean + half


def sign_flip_pvalues(values: np.ndarray, n_perm: int = 10000, seed: int = 0, chunk: int = CHUNK) -> np.ndarray:
    """Two-sided sign-flip permutation p-value of each column's one-sample t statistic.

    Under H0 each subject's difference is symmetric about 0, so flipping signs leaves its
    distribution unchanged (no normality assumed). All ``2^S`` flips when there are at most
    ``n_perm`` (exact: the smallest p is ``2 / 2^S``), else ``n_perm`` random ones plus the
    identity, ``p = (1 + #{|t*| >= |t|}) / (n_perm + 1)``.

    Parameters
    ----------
    values : ndarray, shape (n_subjects, K)

    Returns
    -------
    ndarray, shape (K,)
    """
    n = values.shape[0]
    if 2 ** n <= n_perm:
        flips = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    else:
        rng = np.random.default_rng(seed)
        flips = np.vstack([np.ones(n), rng.choice([-1.0, 1.0], size=(n_perm, n))])
    values = np.asarray(values, dtype=np.float64)
    p = np.ones(values.shape[1])
    for start in range(0, values.shape[1], chunk):
        v = values[:, start:start + chunk]
        square = (v ** 2).sum(0)
        mean = flips @ v / n  # (n_flips, chunk): the identity flip is row 0
        var = np.maximum(square - n * mean ** 2, 0.0) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(mean / np.sqrt(var / n))
        t = np.nan_to_num(t, nan=0.0, posinf=np.finfo(float).max)
        p[start:start + chunk] = np.mean(t >= t[0] * (1 - 1e-12), axis=0)
    return p
