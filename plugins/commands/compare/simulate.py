"""Simulated held-out predictions with a known difference of correlation, to validate :mod:`.stats`.

Per voxel, run and scan: a shared signal ``s``, BOLD ``y = s + sigma e`` and two predictions
``a = s + sigma_a e_a``, ``b = s + sigma_b e_b``, every series AR(1) with unit variance (the BOLD noise with
``phi``, the signal and the predictions' noise smoother, ``phi_signal``) (fMRI noise is autocorrelated; the LPP simulation draws ``phi ~ uniform(0.3, 0.5)``),
independent across voxels and runs. The population correlations are then
``rho = 1 / sqrt((1 + sigma²)(1 + sigma_p²))``, so ``sigma_a`` and ``sigma_b`` are solved for the
planted ``rho_b`` and ``rho_a = rho_b + delta``.
"""

from __future__ import annotations

import numpy as np


def ar1(rng: np.random.Generator, n: int, n_series: int, phi: float | np.ndarray) -> np.ndarray:
    """Stationary unit-variance AR(1) series, shape (n, n_series)."""
    phi = np.broadcast_to(np.asarray(phi, dtype=np.float64), (n_series,))
    out = np.empty((n, n_series))
    out[0] = rng.standard_normal(n_series)
    innovations = rng.standard_normal((n, n_series)) * np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + innovations[t]
    return out


def paired_predictions(rng: np.random.Generator, run_scans: list[int], n_voxels: int, rho_b: float, delta,
                       phi: float = 0.4, noise_ceiling: float = 0.5, phi_signal: float | None = None):
    """BOLD and two predictions per run with planted held-out correlations ``rho_b + delta`` and ``rho_b``.

    Parameters
    ----------
    run_scans : list of int
        Scans per run.
    rho_b : float
        Population correlation of fit B with the BOLD.
    delta : float or ndarray of shape (n_voxels,)
        Planted ``rho_a - rho_b`` per voxel.
    phi : float
        AR(1) coefficient of the BOLD noise ``e`` (0.4: the LPP simulation's median).
    phi_signal : float, optional
        AR(1) coefficient of the signal and of the predictions' own noise (HRF-convolved
        features are smooth: about 0.8 at a 2 s TR); default ``phi``.
    noise_ceiling : float
        Correlation of a perfect prediction (``s``) with the BOLD; fixes ``sigma``.

    Returns
    -------
    y_runs, a_runs, b_runs : list of ndarray, each shape (n_scans_r, n_voxels), float32
    """
    delta = np.broadcast_to(np.asarray(delta, dtype=np.float64), (n_voxels,))
    rho_a = rho_b + delta
    if np.any(rho_a >= noise_ceiling) or rho_b >= noise_ceiling:
        raise ValueError("planted correlations must stay below the noise ceiling")
    sigma2 = 1 / noise_ceiling ** 2 - 1
    sigma_a = np.sqrt(1 / (rho_a ** 2 * (1 + sigma2)) - 1)
    sigma_b = np.sqrt(1 / (rho_b ** 2 * (1 + sigma2)) - 1)
    ys, as_, bs = [], [], []
    for n in run_scans:
        smooth = phi if phi_signal is None else phi_signal
        s = ar1(rng, n, n_voxels, smooth)
        ys.append((s + np.sqrt(sigma2) * ar1(rng, n, n_voxels, phi)).astype(np.float32))
        as_.append((s + sigma_a * ar1(rng, n, n_voxels, smooth)).astype(np.float32))
        bs.append((s + sigma_b * ar1(rng, n, n_voxels, smooth)).astype(np.float32))
    return ys, as_, bs
