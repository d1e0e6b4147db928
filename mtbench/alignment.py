"""Words to scans: one linear (n_scans x n_words) operator per run.

Each word is an event (onset, duration = offset - onset). Its contribution to scan ``t``
is the HRF-convolved boxcar evaluated at the scan's frame time (the middle of the scan),
exactly what nilearn's ``compute_regressor`` gives for a single event. Building the
operator once per run turns the alignment of every feature of every state into one
matrix product, ``X_scans = A @ X_words``.

FIR (``hrf="fir"``): no HRF shape is assumed. The features of the words whose onset falls
in scan ``t`` are summed (:func:`tr_sum_operator`), and copies delayed by each of
``delays`` scans (default 1, 2, 3, 4: 2-8 s at a TR of 2 s) are concatenated, so the ridge
learns a response shape per feature: ``d`` features become ``n_delays * d``. Delays can
also be added to the Glover/SPM operators. A delayed operator is a stack of shifted
operators, shape (n_delays, n_scans, n_words); delays never cross run boundaries (the
first ``delay`` scans of a run get zeros).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from nilearn.glm.first_level import hemodynamic_models

from .api import Stimulus, StimulusRun
from .errors import MtbenchError
from .settings import HRF_CHOICES

_HRFS = {"glover": hemodynamic_models.glover_hrf, "spm": hemodynamic_models.spm_hrf}
DEFAULT_FIR_DELAYS = (1, 2, 3, 4)


def frame_times(n_scans: int, tr: float) -> np.ndarray:
    """Acquisition time of each scan (its middle), shape (n_scans,)."""
    return (np.arange(n_scans) + 0.5) * tr


def hrf_operator(run: StimulusRun, tr: float, hrf: str = "glover", oversampling: int = 50) -> np.ndarray:
    """The linear map from word-level to scan-level features for one run.

    Parameters
    ----------
    run : StimulusRun
        Words with onsets/offsets in seconds.
    tr : float
        Repetition time in seconds.
    hrf : {"glover", "spm"}
        nilearn HRF model.
    oversampling : int
        Fine-grid samples per TR (nilearn's default, 50).

    Returns
    -------
    ndarray, shape (n_scans, n_words), float64
        ``A[t, w]`` = response at scan ``t`` to a unit boxcar over word ``w``.
    """
    if hrf not in _HRFS:
        raise ValueError(f"unknown HRF {hrf!r}; choose one of {sorted(_HRFS)}")
    onsets = np.asarray(run.onsets, dtype=np.float64)
    offsets = np.asarray(run.offsets, dtype=np.float64)
    kernel = _HRFS[hrf](tr, oversampling=oversampling)  # sums to 1 over the fine grid
    times = frame_times(run.n_scans, tr)
    n_scans = times.size

    # nilearn's fine grid: from 24 s before the first scan to one TR after the last.
    min_onset = -24.0
    n_fine = int(np.rint((n_scans - 1) / (times[-1] - times[0])
                         * (times[-1] * (1 + 1 / (n_scans - 1)) - times[0] - min_onset) * oversampling + 1))
    fine = np.linspace(times[0] + min_onset, times[-1] * (1 + 1 / (n_scans - 1)), n_fine)
    # G[t, k]: response at scan t to a unit impulse in fine bin k; the fine regressor is
    # linearly interpolated at the frame times, as nilearn does.
    j = np.clip(np.searchsorted(fine, times, side="right") - 1, 0, n_fine - 2)
    lam = (times - fine[j]) / (fine[j + 1] - fine[j])
    k = np.arange(n_fine)
    padded = np.concatenate([kernel, [0.0]])

    def kernel_at(lags: np.ndarray) -> np.ndarray:
        inside = (lags >= 0) & (lags < kernel.size)
        return np.where(inside, padded[np.clip(lags, 0, kernel.size)], 0.0)

    g = (1 - lam)[:, None] * kernel_at(j[:, None] - k[None, :]) + lam[:, None] * kernel_at(j[:, None] + 1 - k[None, :])
    # Boxcar of word w covers fine bins [first_w, last_w) (at least one bin), as in nilearn.
    first = np.minimum(np.searchsorted(fine, onsets), n_fine - 1)
    last = np.minimum(np.searchsorted(fine, offsets), n_fine - 1)
    last = np.where((last == first) & (last < n_fine - 1), last + 1, last)
    cumulative = np.concatenate([np.zeros((n_scans, 1)), np.cumsum(g, axis=1)], axis=1)
    return cumulative[:, last] - cumulative[:, first]


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardize columns (constant columns become 0), float32.

    Parameters
    ----------
    x : ndarray, shape (n_samples, n_columns)
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    std = x.std(0)
    out = np.divide(x - mean, std, out=np.zeros_like(x), where=std > 1e-12 * np.maximum(1.0, np.abs(mean)))
    return out.astype(np.float32)


def align_runs(
    word_features: Sequence[np.ndarray], operators: Sequence[np.ndarray], zscore_runs: bool = True
) -> list[np.ndarray]:
    """Scan-level features per run.

    Parameters
    ----------
    word_features : list of ndarray, each (n_words_r, dim)
    operators : list of ndarray, each (n_scans_r, n_words_r) or (n_delays, n_scans_r, n_words_r)
    zscore_runs : bool
        Standardize each feature within each run.

    Returns
    -------
    list of ndarray, each (n_scans_r, dim) or (n_scans_r, n_delays * dim), float32
        Delayed operators give the copies side by side, delay-major: columns
        ``[k * dim, (k + 1) * dim)`` hold delay ``delays[k]``.
    """
    out = []
    for feats, op in zip(word_features, operators, strict=True):
        if feats.shape[0] != op.shape[-1]:
            raise ValueError(f"features have {feats.shape[0]} words but the run has {op.shape[-1]}")
        scans = op.astype(np.float32) @ np.asarray(feats, dtype=np.float32)
        if scans.ndim == 3:  # delayed copies (n_delays, n_scans, dim) -> (n_scans, n_delays * dim)
            scans = np.ascontiguousarray(scans.transpose(1, 0, 2)).reshape(scans.shape[1], -1)
        out.append(zscore(scans) if zscore_runs else scans)
    return out


def tr_sum_operator(run: StimulusRun, tr: float) -> np.ndarray:
    """Sum of the words whose onset falls in each scan (the FIR input).

    Returns
    -------
    ndarray, shape (n_scans, n_words), float64
        ``A[t, w] = 1`` when ``t * tr <= onset_w < (t + 1) * tr``; words after the last
        scan contribute nothing.
    """
    scan = np.floor(np.asarray(run.onsets, dtype=np.float64) / tr).astype(np.int64)
    op = np.zeros((run.n_scans, scan.size))
    inside = (scan >= 0) & (scan < run.n_scans)
    op[scan[inside], np.flatnonzero(inside)] = 1.0
    return op


def delay_operator(operator: np.ndarray, delays: Sequence[int]) -> np.ndarray:
    """Stack copies of an operator delayed by whole scans.

    Parameters
    ----------
    operator : ndarray, shape (n_scans, n_words)
    delays : sequence of int, non-negative, in scans

    Returns
    -------
    ndarray, shape (n_delays, n_scans, n_words)
        ``out[k, t] = operator[t - delays[k]]`` (0 for ``t < delays[k]``).
    """
    delays = [int(k) for k in delays]
    if not delays or min(delays) < 0:
        raise MtbenchError(f"delays {delays} must be a non-empty list of scans >= 0 (e.g. --delays 1,2,3,4)")
    n_scans = operator.shape[0]
    out = np.zeros((len(delays), *operator.shape), dtype=operator.dtype)
    for k, delay in enumerate(delays):
        if delay < n_scans:
            out[k, delay:] = operator[: n_scans - delay]
    return out


# Bump when the scan features computed from the same operators change (the TR-level cache key).
_ALIGNMENT_VERSION = 1


def stimulus_operators(stimulus: Stimulus, hrf: str = "glover", delays: Sequence[int] | None = None) -> list[np.ndarray]:
    """The word-to-scan operator of every run of a stimulus.

    Parameters
    ----------
    stimulus : Stimulus
    hrf : {"glover", "spm", "fir"}
        ``glover``/``spm``: :func:`hrf_operator`; ``fir``: :func:`tr_sum_operator`.
    delays : sequence of int, optional
        Delayed copies (in scans) to concatenate (:func:`delay_operator`). Default: none
        for ``glover``/``spm``, ``DEFAULT_FIR_DELAYS`` for ``fir``.

    Returns
    -------
    list of ndarray, each (n_scans_r, n_words_r), or (n_delays, n_scans_r, n_words_r) with delays
    """
    if hrf not in HRF_CHOICES:
        raise MtbenchError(f"unknown HRF {hrf!r}: choose one of {', '.join(HRF_CHOICES)} (--hrf)")
    if hrf == "fir":
        ops = [tr_sum_operator(run, stimulus.tr) for run in stimulus.runs]
        delays = DEFAULT_FIR_DELAYS if delays is None else delays
    else:
        ops = [hrf_operator(run, stimulus.tr, hrf) for run in stimulus.runs]
    return ops if delays is None else [delay_operator(op, delays) for op in ops]


def alignment_fingerprint(operators: Sequence[np.ndarray], trim_scans: int) -> str:
    """Content hash of a word-to-scan alignment: the operators (HRF or FIR, delays, timings,
    TR) and the trimming; the key of the TR-level feature cache
    (:class:`mtbench.features.ScanFeatures`).

    Parameters
    ----------
    operators : list of ndarray
        :func:`stimulus_operators`, one per run.
    trim_scans : int
        Scans dropped at both ends of each run before the per-run z-scoring.

    Returns
    -------
    str
        16 hex digits.
    """

    h = hashlib.sha256(f"{_ALIGNMENT_VERSION}|{trim_scans}".encode())
    for op in operators:
        op = np.ascontiguousarray(op, dtype=np.float64)
        h.update(str(op.shape).encode())
        h.update(op.tobytes())
    return h.hexdigest()[:16]
