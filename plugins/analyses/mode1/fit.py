"""Mode 1 fits: nested leave-one-run-out ridge for every (layer, state), with per-voxel significance."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from mtbench.encoding import fit_nested_loro
from mtbench.settings import RunSettings
from mtbench.significance import BoldSpectra, ShiftTest, calibration_columns, fold_dependence

# Null voxels fitted with every (layer, state) to measure its cross-fitting dependence
# (mtbench.significance.fold_dependence): relative standard error of the estimate ~4.5%.
CALIBRATION_VOXELS = 1000
SIGNIFICANCE_METHOD = ("circular shifts, null widened by the fit's fold dependence "
                       "(shared alpha: null columns refitted with the fit's alphas), "
                       "Gaussian tail under 10 exceedances")


def fit_targets(y_runs: list[np.ndarray], settings: RunSettings) -> tuple[list[np.ndarray], int]:
    """What the ridge fits of a run regress on: its BOLD runs, after ``n_calibration`` null columns.

    Per-voxel significance needs the null variance inflation of each fit
    (:func:`mtbench.significance.fold_dependence`); when every voxel has its own alpha the
    voxels are fitted independently, so ``CALIBRATION_VOXELS`` null columns
    (:func:`mtbench.significance.calibration_columns`) ride along in the same fit and share
    its decompositions. They come first: the significance of the real voxels waits for them.

    Returns
    -------
    targets : list of ndarray, each shape (n_scans_r, n_calibration + n_voxels)
        Row views of one C-contiguous buffer (the ridge fit then reads it without a copy).
    n_calibration : int
    """
    n_calibration = 0
    if settings.permutations > 0 and not settings.shared_alpha:
        n_calibration = min(CALIBRATION_VOXELS, y_runs[0].shape[1])
    bounds = np.cumsum([0, *[len(y) for y in y_runs]])
    buffer = np.empty((bounds[-1], n_calibration + y_runs[0].shape[1]), dtype=np.float32)  # filled in place
    null = calibration_columns(y_runs, n_calibration, settings.seed) if n_calibration else [None] * len(y_runs)
    for lo, hi, y, columns in zip(bounds[:-1], bounds[1:], y_runs, null):
        buffer[lo:hi, n_calibration:] = y
        if n_calibration:
            buffer[lo:hi, :n_calibration] = columns
    return [buffer[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])], n_calibration


def fit_all(keys, scans, targets, n_calibration: int, settings: RunSettings, metric, progress,
             checkpoint=None) -> dict[str, np.ndarray]:
    """Nested leave-one-run-out ridge for every (layer, state); arrays for :class:`ScoreTable`.

    ``targets``: :func:`fit_targets`. With a :class:`~mtbench.checkpoint.FitCheckpoint`, fits
    found there are read instead of computed, and every new fit is saved there as soon as it
    is done. Each fit is claimed before it is computed: a fit that another run of the same
    command is computing is skipped, then read from the checkpoint once that run saved it (or
    computed here if that run stopped), so two runs at once split the fits.
    """
    n_voxels, n_runs = targets[0].shape[1] - n_calibration, len(targets)
    out = {name: np.zeros((len(keys), n_voxels), dtype=np.float32) for name in ("test", "validation", "alpha")}
    for name in ("test_per_run", "validation_per_run", "alpha_per_run"):  # per run: kept in folds.parquet
        out[name] = np.zeros((len(keys), n_runs, n_voxels), dtype=np.float32)
    if settings.permutations > 0:
        out["p_value"] = np.ones((len(keys), n_voxels), dtype=np.float32)
        out["null_inflation"] = np.ones(len(keys), dtype=np.float32)
    task = progress.add_task("fit ridge (nested LORO)", total=len(keys)) if progress is not None else None
    # the BOLD's part of every fit's shift test, made once (made on first use: a resumed run may fit nothing)
    spectra = functools.cache(lambda: BoldSpectra(targets)) if settings.permutations > 0 and n_calibration else None

    def advance(key, how: str = "") -> None:
        if task is not None:
            progress.update(task, advance=1, description=f"fit ridge L{key[0]} {key[1]}{how}")

    def saved(f: int, key, name: str, how: str) -> bool:
        """Row ``f`` from the checkpoint, when it holds fit ``name``."""
        arrays = checkpoint.load(name)
        if arrays is None or set(arrays) != set(out):
            return False
        for column, values in out.items():
            values[f] = arrays[column]
        del scans[key]  # its features are not needed (a cached set does not even read them)
        checkpoint.release(name)
        advance(key, how)
        return True

    later = []  # fits another run was computing: read (or computed) once this run's own are done
    for f, key in enumerate(keys):
        name = f"L{key[0]}-{key[1]}"
        if checkpoint is None:
            _fit_one(f, key, scans, targets, n_calibration, settings, metric, out, spectra)
        elif saved(f, key, name, " (checkpoint)"):  # fitted before an interruption, or by another run
            continue
        elif not checkpoint.claim(name):
            later.append((f, key, name))
            continue
        elif saved(f, key, name, " (checkpoint)"):  # saved by another run just before we claimed it
            continue
        else:
            _fit_one(f, key, scans, targets, n_calibration, settings, metric, out, spectra)
            checkpoint.save(name, {column: values[f] for column, values in out.items()})  # releases the claim
        advance(key)
    for f, key, name in later:
        checkpoint.claim(name, wait=True)  # once the other run saved it (or died, or seems stopped: a note)
        if not saved(f, key, name, " (another run)"):
            _fit_one(f, key, scans, targets, n_calibration, settings, metric, out, spectra)
            checkpoint.save(name, {column: values[f] for column, values in out.items()})
            advance(key)
    return out


def _fit_one(f: int, key, scans, targets, n_calibration: int, settings: RunSettings, metric, out: dict,
             spectra: Callable[[], BoldSpectra] | None = None) -> None:
    """Fit ``key`` (:func:`fit_all`) into row ``f`` of ``out``."""
    x_runs = scans.pop(key)  # pop: free memory as we go

    def fit(y_runs, **kwargs):
        return fit_nested_loro(x_runs, y_runs, settings.alphas, backend=settings.backend, score=metric.score,
                               precision=settings.precision, shared_alpha=settings.shared_alpha,
                               inner=settings.inner, **kwargs)

    # circular shifts of the held-out predictions, block by block, the null widened by the
    # fit's own cross-fitting dependence (else the p-values are anti-conservative)
    test = None
    if settings.permutations > 0 and n_calibration:
        test = ShiftTest(targets, n_calibration, settings.permutations, settings.seed,
                         spectra=spectra() if spectra is not None else None)
    shared_test = settings.permutations > 0 and not n_calibration
    result = fit(targets, on_predictions=test, return_predictions=shared_test)
    if shared_test:
        test = shared_alpha_test(fit, result, targets, settings)
    for column in ("test", "validation", "alpha", "test_per_run", "validation_per_run", "alpha_per_run"):
        out[column][f] = getattr(result, column)[..., n_calibration:]
    if test is not None:
        out["p_value"][f], out["null_inflation"][f] = test.p_values, test.inflation


def shared_alpha_test(fit, result, targets: list[np.ndarray], settings: RunSettings):
    """The per-voxel test of a fit whose voxels share one alpha per outer fold.

    Null columns cannot ride along in such a fit (they would vote for the alpha), so the
    fold dependence is measured on a refit of ``CALIBRATION_VOXELS`` null columns
    (:func:`mtbench.significance.fold_dependence`) with the alphas the real fit chose: a null
    voxel of this fit is fitted with them, and the refit needs no alpha search.

    Parameters
    ----------
    fit : callable
        ``fit(y_runs, **kwargs) -> EncodingResult`` with the real fit's features and settings.
    result : EncodingResult
        The real fit, with its held-out predictions.
    targets : list of ndarray, each shape (n_scans_r, n_voxels)

    Returns
    -------
    ShiftTest
        With ``p_values`` of every voxel and the measured ``inflation``.
    """
    def null_predictions(y_runs: list[np.ndarray]) -> list[np.ndarray]:
        alphas = np.repeat(result.alpha_per_run[:, :1], y_runs[0].shape[1], axis=1)
        return fit(y_runs, alpha_per_run=alphas, return_predictions=True).predictions

    inflation = fold_dependence(null_predictions, targets, CALIBRATION_VOXELS, settings.seed)
    test = ShiftTest(targets, 0, settings.permutations, settings.seed, inflation)
    n_voxels, block = targets[0].shape[1], 4096  # blocks bound the shift-null temporaries
    for c0 in range(0, n_voxels, block):
        c1 = min(c0 + block, n_voxels)
        test(c0, c1, [p[:, c0:c1] for p in result.predictions])
    result.predictions = None  # tested: no longer needed
    return test
