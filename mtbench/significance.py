"""Per-voxel significance of held-out scores, FDR across voxels, parcel confidence intervals.

Null distribution: circular shifts of the held-out predictions within each test run (no refit
per permutation). A shift keeps a run's autocorrelation (and its mean and norm, hence the
denominator of Pearson r) and breaks only its alignment with the BOLD, so the null respects
the temporal autocorrelation of both series; shuffling scans would not. Every shift of a run
is drawn, the identity included: for circularly stationary series the observed r is then
exchangeable with the shifted ones (excluding short shifts makes the test anti-conservative).
For every test run the Pearson r of every shift is one FFT cross-correlation per voxel; a
permutation draws one shift per run (the same draws for all voxels) and averages the runs' r,
like the observed score.

The statistic is the mean over test runs of the per-run Pearson r, whatever ``--metric`` is.
The runs' held-out predictions come from cross-fitted models that share training runs, so
under the null their r are positively correlated and the mean varies more than independent
per-run shifts assume. Each fit therefore measures that inflation (:func:`fold_dependence`:
null voxels fitted alongside) and every null draw is spread around its voxel's null mean by its
square root. p-values are ``(1 + #{null >= observed}) / (1 + n_permutations)`` (one-sided);
where fewer than ``TAIL_EXCEEDANCES`` draws reach the observed r, the Gaussian tail of the null's
exact moments instead; then Benjamini-Hochberg across the voxels of one fit.

Parcel confidence intervals: the outer folds' test runs are the units (voxels of one run share
its noise); the interval of a parcel-mean score is a Student t interval over the per-run parcel
means, its variance corrected for the folds' shared training data as Nadeau & Bengio (2003)
propose.

The false-positive rates, FDR, coverage and costs measured for each of these choices (and the
alternatives rejected) are in ``docs/encoding.md`` ("Significance per voxel").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import MtbenchError
from .memory import check_fits, usable_cpus

__all__ = ["DEFAULT_MIN_SHIFT", "BoldSpectra", "ShiftTest", "bh_fdr", "bold_spectra", "calibration_columns", "circular_shift_pvalues",
           "fold_dependence", "inflation_from_null_fit", "run_confidence_interval", "run_pvalues",
           "shift_null_moments", "shifted_correlations"]

DEFAULT_MIN_SHIFT = 0
# Voxels per block: all-shift correlations of one run (n_scans x block) and the null
# (n_permutations x block) stay in tens of MB.
_BLOCK = 2048
_FFT_WORKERS = min(2, usable_cpus())
_GATHER = 256  # columns per gather of the null draws (cache-sized working set)
# Fewer null draws than this at or above the observed r: the empirical p is too coarse (its
# floor, 1 / (1 + n_permutations), keeps BH across ~26,000 voxels from passing a fit whose
# signal is confined to a few hundred of them), so it is replaced by the Gaussian tail of the
# null's exact moments (Knijnenburg et al. 2009 use the same threshold for their tail fit).
TAIL_EXCEEDANCES = 10


def bold_spectra(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`shifted_correlations` computes from the BOLD alone.

    Parameters
    ----------
    y : ndarray, shape (n_scans, n_voxels)

    Returns
    -------
    sum_of_squares : ndarray, shape (n_voxels,), float64
        Of each centered column.
    spectrum : ndarray, shape (n_scans // 2 + 1, n_voxels), complex64
        Real FFT of the centered columns along the scans.
    """
    import scipy.fft

    # float32 FFTs (scipy computes them natively in single precision, ~2x faster): r to ~1e-6
    y = np.asarray(y, dtype=np.float32)
    yc = y - y.mean(0, dtype=np.float64).astype(np.float32)
    return (yc * yc).sum(0, dtype=np.float64), scipy.fft.rfft(yc, axis=0, workers=_FFT_WORKERS)


def shifted_correlations(y: np.ndarray, pred: np.ndarray,
                         y_spectra: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Pearson r of ``y`` with every circular shift of ``pred``.

    Parameters
    ----------
    y, pred : ndarray, shape (n_scans, n_voxels)
    y_spectra : tuple, optional
        :func:`bold_spectra` of ``y``, when already made (:class:`BoldSpectra`).

    Returns
    -------
    ndarray, shape (n_scans, n_voxels), float32
        Row ``k``: r between ``y`` and ``np.roll(pred, k, axis=0)``; row 0 is the observed r.
        0 where either column is constant.
    """
    import scipy.fft

    n = y.shape[0]
    y_sum_of_squares, y_spectrum = bold_spectra(y) if y_spectra is None else y_spectra
    _, spectrum = pred_spectra = bold_spectra(pred)
    denom = np.sqrt(y_sum_of_squares * pred_spectra[0])
    inverse = np.divide(1.0, denom, out=np.zeros_like(denom), where=denom > 0).astype(np.float32)
    # sum_t pred[t - k] y[t] for all k: inverse FFT of conj(P) Y
    np.conjugate(spectrum, out=spectrum)
    spectrum *= y_spectrum
    cross = scipy.fft.irfft(spectrum, n=n, axis=0, workers=_FFT_WORKERS)
    cross *= inverse  # 0 where either column is constant
    return cross


class BoldSpectra:
    """:func:`bold_spectra` of every run of a fit's targets, made once for all the fits on them.

    Every fit of a run tests its predictions against the same BOLD (the main job: 390 fits), and
    the BOLD's part of :func:`shifted_correlations` is a third of its FFTs. Kept only up to
    ``max_bytes``; above (e.g. LPP scale: ~280 MB) ``columns`` gives None and each test makes
    its blocks' own, as without it.

    Parameters
    ----------
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    max_bytes : int
    """

    def __init__(self, y_runs: Sequence[np.ndarray], max_bytes: int = 64 * 2**20):
        size = sum((len(y) // 2 + 1) * y.shape[1] * 8 + y.shape[1] * 8 for y in y_runs)
        self.runs = [bold_spectra(y) for y in y_runs] if size <= max_bytes else None

    def columns(self, c0: int, c1: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Per run, the spectra of columns c0:c1 (None when none are kept)."""
        if self.runs is None:
            return None
        return [(squares[c0:c1], spectrum[:, c0:c1]) for squares, spectrum in self.runs]


def shift_test_bytes(n_permutations: int, n_runs: int = 1) -> int:
    """Memory :func:`circular_shift_pvalues` holds at once for ``n_permutations`` draws over ``n_runs`` runs.

    Per permutation: the drawn shifts (int64 per run, each run's draw and their stacked copy,
    plus the draw being made) and two ``(n_permutations, _GATHER)`` float32 buffers with the
    boolean temporary of their comparison. The rest is per voxel block and does not grow with
    the permutations.
    """
    return int(n_permutations) * (8 * (2 * n_runs + 1) + _GATHER * (4 + 4 + 1))


def check_permutations(n_permutations: int, n_runs: int = 1) -> None:
    """One line when the null draws of ``n_permutations`` cannot fit in the memory available
    (:func:`mtbench.memory.check_fits`), instead of an allocation the kernel kills without a word.

    Called with the run count unknown (1, a lower bound) before a run loads anything, and with the
    real count before the draws are allocated.
    """
    check_fits(shift_test_bytes(n_permutations, n_runs), f"--permutations {n_permutations}",
               "lower --permutations (the default 1000 resolves p down to 0.001; smaller p-values come from the "
               "null's Gaussian tail), or --permutations 0 for no significance")


def circular_shift_pvalues(
    y_runs: Sequence[np.ndarray],
    pred_runs: Sequence[np.ndarray],
    n_permutations: int = 1000,
    *,
    min_shift: int = DEFAULT_MIN_SHIFT,
    seed: int = 0,
    inflation: float = 1.0,
    y_spectra: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation p-values of the run-averaged Pearson r, from circular shifts within runs.

    Parameters
    ----------
    y_runs, pred_runs : list of ndarray, each shape (n_scans_r, n_voxels)
        Held-out BOLD and the predictions of the model that never saw that run.
    n_permutations : int
        Null draws; each draws one shift per run, shared by all voxels.
    min_shift : int
        Shifts ``k`` with ``0 < k < min_shift`` or ``k > n_scans_r - min_shift`` and the
        identity are never drawn when positive. Keep 0 (every shift): excluding neighbours
        makes the test anti-conservative (see the module docstring).
    seed : int
    inflation : float
        Variance inflation of the run-averaged r under the null relative to independent
        runs (:func:`fold_dependence`): every null draw is spread around the voxel's null
        mean by ``sqrt(inflation)``. 1 treats the runs' scores as independent, which is
        right only when the predictions were not cross-fitted.
    y_spectra : list of tuple, optional
        :func:`bold_spectra` of each run of ``y_runs`` (:meth:`BoldSpectra.columns`), when made.

    Returns
    -------
    observed : ndarray, shape (n_voxels,), float32
        Mean over runs of the per-run Pearson r.
    p_values : ndarray, shape (n_voxels,), float64
        One-sided. ``(1 + #{null >= observed}) / (1 + n_permutations)``, except where fewer
        than ``TAIL_EXCEEDANCES`` draws reach the observed r: there the Gaussian tail of the
        null (its exact mean and standard deviation over every shift, the latter widened by
        ``sqrt(inflation)``), which goes below ``1 / (1 + n_permutations)``.

    Raises
    ------
    MtbenchError
        Mismatched shapes, NaN/inf, too few permutations, or runs too short for ``min_shift``.
    """
    if len(y_runs) != len(pred_runs) or not y_runs:
        raise MtbenchError(f"significance: {len(y_runs)} BOLD runs but {len(pred_runs)} prediction runs")
    if n_permutations < 1:
        raise MtbenchError(f"significance needs at least 1 permutation, got {n_permutations}; use --permutations 1000")
    if not (np.isfinite(inflation) and inflation > 0):
        raise MtbenchError(f"significance: null variance inflation must be a positive number, got {inflation}")
    n_voxels = y_runs[0].shape[1]
    for r, (y, p) in enumerate(zip(y_runs, pred_runs)):
        if y.shape != p.shape or y.shape[1] != n_voxels:
            raise MtbenchError(f"significance: run {r} has BOLD {y.shape} but predictions {p.shape}")
        if not (np.isfinite(y).all() and np.isfinite(p).all()):
            raise MtbenchError(f"significance: run {r} contains NaN/inf; clean the data first")
        if y.shape[0] <= 2 * min_shift:
            raise MtbenchError(f"significance: run {r} has {y.shape[0]} scans, too few for circular shifts of "
                               f"at least {min_shift} scans; lower min_shift")
    check_permutations(n_permutations, len(y_runs))  # before the draws are allocated
    from scipy.special import ndtr

    rng = np.random.default_rng(seed)
    # one shift per (permutation, run), uniform over the allowed shifts min_shift..n-min_shift
    shifts = np.stack([(rng.integers(0, y.shape[0] - 2 * min_shift + 1, n_permutations) + min_shift) % y.shape[0]
                       if min_shift else rng.integers(0, y.shape[0], n_permutations) for y in y_runs], axis=1)
    observed = np.zeros(n_voxels, dtype=np.float64)
    exceed = np.zeros(n_voxels, dtype=np.int64)
    tail_p = np.full(n_voxels, np.nan)
    n_runs = len(y_runs)
    spread = np.float32(np.sqrt(inflation))
    null = np.empty((n_permutations, _GATHER), dtype=np.float32)
    drawn = np.empty_like(null)
    for c0 in range(0, n_voxels, _BLOCK):
        c1 = min(n_voxels, c0 + _BLOCK)
        corrs = [shifted_correlations(y[:, c0:c1], p[:, c0:c1], _columns(y_spectra, r, c0, c1))
                 for r, (y, p) in enumerate(zip(y_runs, pred_runs))]
        obs = sum(corr[0].astype(np.float64) for corr in corrs) / n_runs
        observed[c0:c1] = obs
        # exact moments of the null (every shift of every run equally likely, runs independent)
        exact_mean = sum(corr.mean(0, dtype=np.float64) for corr in corrs) / n_runs
        exact_sd = np.sqrt(sum(corr.var(0, dtype=np.float64) for corr in corrs) * inflation) / n_runs
        null_mean = exact_mean.astype(np.float32)
        # gather the drawn shifts in narrow column blocks into preallocated buffers: the
        # (n_permutations, width) working set stays in cache (10x faster than one fancy index)
        for g0 in range(0, c1 - c0, _GATHER):
            g1 = min(c1 - c0, g0 + _GATHER)
            width = g1 - g0
            block_null, block_drawn = null[:, :width], drawn[:, :width]
            block_null.fill(0.0)
            for r, corr in enumerate(corrs):
                np.take(np.ascontiguousarray(corr[:, g0:g1]), shifts[:, r], axis=0, out=block_drawn)
                block_null += block_drawn
            block_null /= n_runs
            if inflation != 1.0:
                block_null -= null_mean[None, g0:g1]
                block_null *= spread
                block_null += null_mean[None, g0:g1]
            # a tolerance so that float32 rounding never counts a draw equal to the observed as smaller
            threshold = obs[g0:g1].astype(np.float32)[None, :] - 1e-6
            exceed[c0 + g0:c0 + g1] = (block_null >= threshold).sum(0)
        tail = (exceed[c0:c1] < TAIL_EXCEEDANCES) & (exact_sd > 0)
        if tail.any():
            z = (obs[tail] - exact_mean[tail]) / exact_sd[tail]
            tail_p[c0:c1][tail] = ndtr(-z)
    p_values = (1.0 + exceed) / (1.0 + n_permutations)
    return observed.astype(np.float32), np.where(np.isnan(tail_p), p_values, tail_p)


def _columns(y_spectra, run: int, c0: int, c1: int):
    """Run ``run``'s spectra of columns c0:c1, or None."""
    if y_spectra is None:
        return None
    squares, spectrum = y_spectra[run]
    return squares[c0:c1], spectrum[:, c0:c1]


def bh_fdr(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) across voxels.

    Parameters
    ----------
    p_values : ndarray, shape (n_voxels,)

    Returns
    -------
    ndarray, shape (n_voxels,)
        A voxel is significant at FDR ``q`` when its adjusted value is ``<= q``.
    """
    from scipy.stats import false_discovery_control

    p_values = np.asarray(p_values, dtype=np.float64)
    if p_values.size == 0:
        return p_values
    return false_discovery_control(p_values, method="bh")


def run_confidence_interval(per_run: np.ndarray, level: float = 0.95, *,
                            cross_fitted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Student t confidence interval of a mean over test runs (outer folds).

    Cross-fitted folds share training runs, so their test scores are positively correlated
    and ``s^2 / K`` underestimates the variance of their mean. The interval uses the
    corrected variance of Nadeau & Bengio (2003, "Inference for the generalization error"),
    ``s^2 (1/K + n_test/n_train)`` with ``n_test/n_train = 1/(K-1)`` for leave-one-run-out;
    it assumes a fold correlation of ``1/K``, close to the 0.12 measured between LORO folds
    on null data (``benchmarks/significance_null.py``).

    Parameters
    ----------
    per_run : ndarray, shape (n_runs, ...)
        One value per outer fold (e.g. the parcel-mean test r of each test run).
    level : float
    cross_fitted : bool
        False for scores of independent runs (no shared training data): plain ``s^2 / K``.

    Returns
    -------
    low, high : ndarray, shape (...)
        NaN with fewer than 2 runs.
    """
    from scipy.stats import t

    per_run = np.asarray(per_run, dtype=np.float64)
    n = per_run.shape[0]
    mean = per_run.mean(0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return nan, nan
    variance_factor = 1 / n + 1 / (n - 1) if cross_fitted else 1 / n
    half = t.ppf(0.5 + level / 2, n - 1) * per_run.std(0, ddof=1) * np.sqrt(variance_factor)
    return mean - half, mean + half


def shift_null_moments(y_runs: Sequence[np.ndarray], pred_runs: Sequence[np.ndarray], y_spectra=None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-averaged r and the exact mean and standard deviation of its circular-shift null.

    With one shift per run drawn uniformly and independently, the null of the mean r over
    ``K`` runs has mean ``sum_k m_k / K`` and variance ``sum_k v_k / K^2`` (``m_k``, ``v_k``:
    mean and variance of run ``k``'s r over all its shifts); no draws needed.

    Parameters
    ----------
    y_runs, pred_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    y_spectra : list of tuple, optional
        :func:`bold_spectra` of each run of ``y_runs``, when made.

    Returns
    -------
    observed, null_mean, null_sd : ndarray, shape (n_voxels,), float64
    """
    n_voxels, n_runs = y_runs[0].shape[1], len(y_runs)
    observed, null_mean, null_var = (np.zeros(n_voxels) for _ in range(3))
    for c0 in range(0, n_voxels, _BLOCK):
        c1 = min(n_voxels, c0 + _BLOCK)
        for r, (y, p) in enumerate(zip(y_runs, pred_runs)):
            corr = shifted_correlations(y[:, c0:c1], p[:, c0:c1], _columns(y_spectra, r, c0, c1)).astype(np.float64)
            observed[c0:c1] += corr[0] / n_runs
            null_mean[c0:c1] += corr.mean(0) / n_runs
            null_var[c0:c1] += corr.var(0) / n_runs**2
    return observed, null_mean, np.sqrt(null_var)


def calibration_columns(y_runs: Sequence[np.ndarray], n_voxels: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Null BOLD for :func:`fold_dependence`: a random subset of voxels, each run of each voxel
    circularly rolled by its own random shift of a quarter to three quarters of the run.

    The rolled series keep their autocorrelation but lose their alignment with the features,
    and with many independent shifts the estimate averages over many shift configurations.

    Parameters
    ----------
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels_total)
    n_voxels : int
        Calibration voxels (all when there are fewer).
    seed : int

    Returns
    -------
    list of ndarray, each shape (n_scans_r, min(n_voxels, n_voxels_total)), float32
    """
    rng = np.random.default_rng([seed, 20261123])
    total = y_runs[0].shape[1]
    subset = np.sort(rng.choice(total, size=min(n_voxels, total), replace=False))
    columns = np.arange(subset.size)[None, :]
    out = []
    for y in y_runs:
        n = len(y)
        shifts = rng.integers(n // 4, 3 * n // 4 + 1, subset.size)
        rows = (np.arange(n)[:, None] - shifts[None, :]) % n
        out.append(np.ascontiguousarray(np.asarray(y[:, subset], dtype=np.float32)[rows, columns]))
    return out


def inflation_from_null_fit(y_runs: Sequence[np.ndarray], pred_runs: Sequence[np.ndarray], y_spectra=None
                            ) -> np.ndarray:
    """Squared standardized scores of null voxels (their mean is the null variance inflation).

    Parameters
    ----------
    y_runs, pred_runs : list of ndarray, each shape (n_scans_r, n_voxels)
        :func:`calibration_columns` and the held-out predictions of their nested fit.
    y_spectra : list of tuple, optional
        :func:`bold_spectra` of each run of ``y_runs``, when made.

    Returns
    -------
    ndarray, shape (n_valid,)
        ``z^2`` per voxel, ``z = (mean r - null mean) / null sd`` (:func:`shift_null_moments`);
        voxels without a defined null (constant series) are left out.
    """
    observed, null_mean, null_sd = shift_null_moments(y_runs, pred_runs, y_spectra)
    valid = null_sd > 0
    return ((observed[valid] - null_mean[valid]) / null_sd[valid]) ** 2


def _inflation(z2: np.ndarray) -> float:
    return max(1.0, float(np.mean(z2))) if z2.size else 1.0


def fold_dependence(
    fit_predictions: Callable[[list[np.ndarray]], list[np.ndarray]],
    y_runs: Sequence[np.ndarray],
    n_voxels: int = 1000,
    seed: int = 0,
) -> float:
    """Null variance inflation of the run-averaged r caused by cross-fitting.

    The outer folds of leave-one-run-out share training runs, so under the null their
    held-out r are positively correlated (fold ``i``'s prediction of run ``i`` and fold
    ``j``'s of run ``j`` share the term ``y_i' X_i A X_j' y_j``) and the mean r varies more
    than the independent per-run shifts assume. This refits the model on null BOLD
    (:func:`calibration_columns`), standardizes each voxel's mean r by the exact mean and
    standard deviation of its shift null (:func:`shift_null_moments`), and returns the mean
    square of that z (1 if smaller). With ``n_voxels`` voxels its relative standard error
    is about ``sqrt(2 / n_voxels)`` (4.5% for 1,000).

    ``mtbench run`` gets the same number without a second fit: it appends the calibration
    columns to the BOLD of the real fit (:class:`ShiftTest`); this function serves fits
    whose voxels are not independent (one alpha shared by all voxels), where the runner
    refits the columns with the alphas the real fit chose (``alpha_per_run``).

    Parameters
    ----------
    fit_predictions : callable
        ``fit_predictions(y_runs) -> held-out predictions`` per run, with the same features,
        settings and nested cross-validation as the real fit.
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels_total)
    n_voxels : int
        Calibration voxels (a random subset; all when there are fewer).
    seed : int

    Returns
    -------
    float
        ``lambda >= 1``; pass it as ``inflation`` to :func:`circular_shift_pvalues`.
    """
    shifted = calibration_columns(y_runs, n_voxels, seed)
    return _inflation(inflation_from_null_fit(shifted, fit_predictions(shifted)))


class ShiftTest:
    """The per-voxel test of one fit, fed block by block through ``on_predictions``.

    The fit's targets are the real voxels followed by ``n_calibration`` null columns
    (:func:`calibration_columns`), all fitted by the same nested cross-validation (they
    share every decomposition, and voxels are fitted independently when each has its own
    alpha). The calibration columns must come first: their blocks give the null variance
    inflation (:func:`inflation_from_null_fit`) before the real voxels' p-values are drawn
    (:func:`circular_shift_pvalues` with that inflation). With ``inflation`` given (e.g. from
    :func:`fold_dependence`) there are no calibration columns.

    Parameters
    ----------
    y_runs : list of ndarray, each shape (n_scans_r, n_calibration + n_voxels)
        The fit's targets, calibration columns first.
    n_calibration : int
    n_permutations : int
    seed : int
    inflation : float, optional
        Known inflation (then ``n_calibration`` must be 0).
    spectra : BoldSpectra, optional
        Of ``y_runs``, shared by every fit on them.

    Attributes
    ----------
    p_values : ndarray, shape (n_voxels,), float32
    inflation : float or None
        Known once the calibration blocks are in.
    """

    def __init__(self, y_runs: Sequence[np.ndarray], n_calibration: int, n_permutations: int, seed: int = 0,
                 inflation: float | None = None, spectra: BoldSpectra | None = None):
        if (inflation is None) == (n_calibration == 0):
            raise ValueError("give either calibration columns or a known inflation")
        self._y, self._n_cal, self._n_perm, self._seed = y_runs, n_calibration, n_permutations, seed
        self._spectra = spectra
        self._z2: list[np.ndarray] = []
        self._seen = 0
        self.inflation = inflation
        self.p_values = np.ones(y_runs[0].shape[1] - n_calibration, dtype=np.float32)

    def __call__(self, c0: int, c1: int, preds: list[np.ndarray]) -> None:
        if self._seen < self._n_cal and c0 != self._seen:  # the fit hands out blocks in column order
            raise RuntimeError(f"calibration columns arrived out of order (column {c0} after {self._seen})")
        if c0 < self._n_cal:  # calibration columns
            stop = min(c1, self._n_cal)
            self._z2.append(inflation_from_null_fit([y[:, c0:stop] for y in self._y],
                                                    [p[:, : stop - c0] for p in preds], self._columns(c0, stop)))
            self._seen = stop
            if stop == self._n_cal:
                self.inflation = _inflation(np.concatenate(self._z2))
        if c1 <= self._n_cal:
            return
        start = max(c0, self._n_cal)
        preds = [p[:, start - c0:] for p in preds]
        self.p_values[start - self._n_cal:c1 - self._n_cal] = run_pvalues(
            [y[:, start:c1] for y in self._y], preds, self._n_perm, self._seed, self.inflation,
            self._columns(start, c1))

    def _columns(self, c0: int, c1: int):
        return None if self._spectra is None else self._spectra.columns(c0, c1)


def run_pvalues(y_runs: Sequence[np.ndarray], pred_runs: Sequence[np.ndarray], n_permutations: int,
                seed: int = 0, inflation: float = 1.0, y_spectra=None) -> np.ndarray:
    """p-values of one fit as the runner computes them (every circular shift drawn, the null
    spread by the fit's :func:`fold_dependence`). ``y_spectra``: as in :func:`circular_shift_pvalues`.

    Returns
    -------
    ndarray, shape (n_voxels,), float32
    """
    return circular_shift_pvalues(y_runs, pred_runs, n_permutations, seed=seed,
                                  inflation=inflation, y_spectra=y_spectra)[1].astype(np.float32)
