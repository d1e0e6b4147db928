"""Planting a known truth in simulated BOLD (shared by ``synthetic`` and ``lpp-en-sim``).

Per planted parcel ``p`` with word features ``F`` (n_words, dim) of its (model, layer, state)::

    Z = zscore(F)                 # over all words: drops the mean/word-rate component
    S = Z @ W                     # W: k seeded random unit vectors (dim, k) in the span
                                  #    of the top 32 principal components of Z
    S_r = zscore(A_r @ S_r)       # A_r: hrf_operator of run r (n_scans_r, n_words_r)
    s_v = zscore(S_r @ m_v)       # m_v: seeded random unit mixing vector of voxel v (k,)
    y_v = gain_v * s_v + e_v      # e_v: AR(1) Gaussian noise, unit variance

See :mod:`mtbench_plugins.datasets.synthetic` for why the directions live in the top
principal components.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtbench.alignment import hrf_operator, zscore
from mtbench.api import Stimulus
from mtbench.errors import MtbenchError

N_DIRECTIONS = 3  # random feature directions per planted parcel, mixed per voxel
N_COMPONENTS = 32  # the directions live in the span of this many top principal components
AR1_PHI = (0.3, 0.5)  # range of the per-voxel AR(1) coefficient of the noise


@dataclass
class PlantedParcel:
    """One planted (parcel, layer, state), optionally of its own model and with a weight.

    ``weight`` scales the signal variance of the parcel's voxels (1 = their full SNR).
    """

    parcel_id: int
    parcel: str
    layer: int
    state: str
    model: str | None = None
    weight: float = 1.0


def parse_truth(truth: Any, names: dict[int, str], optional: tuple[str, ...] = ()) -> list[PlantedParcel]:
    """Read a truth spec: a list (or JSON text) of ``{"parcel", "layer", "state"}`` dicts.

    Parameters
    ----------
    truth : list of dict, dict or JSON str
    names : dict of int to str
        Parcel id -> name; parcels are given by name (case-insensitive) or id.
    optional : tuple of str
        Extra keys allowed in an entry (``model``, ``weight``).
    """
    required = {"parcel", "layer", "state"}
    shape = "{" + ", ".join(f'"{k}": ...' for k in (*sorted(required), *optional)) + "}"
    if isinstance(truth, str):
        try:
            truth = json.loads(truth)
        except json.JSONDecodeError as exc:
            raise MtbenchError(f"dataset option truth is not valid JSON ({exc.msg}): give a list of "
                               '{"parcel": NAME, "layer": N, "state": STATE}') from None
    if isinstance(truth, dict):
        truth = [truth]
    if not isinstance(truth, (list, tuple)) or not truth:
        raise MtbenchError('dataset option truth must be a non-empty list of {"parcel": NAME, "layer": N, "state": STATE}')
    by_name = {name.lower(): i for i, name in names.items()}
    planted: list[PlantedParcel] = []
    for entry in truth:
        if not isinstance(entry, dict) or not required <= set(entry) <= required | set(optional):
            keys = "exactly the keys parcel, layer, state" if not optional else f"the keys of {shape}"
            raise MtbenchError(f"truth entry {entry!r} must have {keys}")
        parcel = entry["parcel"]
        if isinstance(parcel, int) or (isinstance(parcel, str) and parcel.isdigit()):
            parcel_id = int(parcel)
            if parcel_id not in names:
                raise MtbenchError(f"truth parcel id {parcel_id} is not a Harvard-Oxford cortical id (1..{len(names)})")
        else:
            parcel_id = by_name.get(str(parcel).lower())
            if parcel_id is None:
                close = difflib.get_close_matches(str(parcel), list(names.values()), n=3, cutoff=0.4)
                hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "names are FSL's, e.g. \"Heschl's Gyrus (includes H1 and H2)\""
                raise MtbenchError(f"unknown truth parcel {parcel!r}: {hint}")
        try:
            layer = int(entry["layer"])
        except (TypeError, ValueError):
            raise MtbenchError(f"truth layer {entry['layer']!r} is not an integer (layers are 1-based block numbers)") from None
        try:
            weight = float(entry.get("weight", 1.0))
        except (TypeError, ValueError):
            weight = float("nan")
        if not (np.isfinite(weight) and weight > 0):
            raise MtbenchError(f"truth weight {entry.get('weight')!r} ({names[parcel_id]!r}) must be a positive number")
        if any(p.parcel_id == parcel_id for p in planted):
            raise MtbenchError(f"truth plants parcel {names[parcel_id]!r} twice: one (layer, state) per parcel")
        model = entry.get("model")
        planted.append(PlantedParcel(parcel_id, names[parcel_id], layer, str(entry["state"]),
                                     model=str(model) if model else None, weight=weight))
    return planted


def parcel_directions(z: np.ndarray, seed: int, parcel_id: int) -> np.ndarray:
    """The random unit feature directions of a planted parcel.

    Parameters
    ----------
    z : ndarray, shape (n_words, dim)
        z-scored word features of the planted (layer, state).
    seed : int
    parcel_id : int

    Returns
    -------
    ndarray, shape (dim, N_DIRECTIONS)
        Unit columns in the span of the top ``N_COMPONENTS`` principal components.
    """
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    basis = vt[:N_COMPONENTS]  # (k_pc, dim)
    # Fix each component's sign (largest loading positive): SVD signs are arbitrary.
    rows = np.arange(basis.shape[0])
    basis = basis * np.sign(basis[rows, np.abs(basis).argmax(1)])[:, None]
    rng = np.random.default_rng([seed, 2, parcel_id])
    w = basis.T @ rng.standard_normal((basis.shape[0], N_DIRECTIONS))
    return w / np.linalg.norm(w, axis=0)


def planted_signal(
    stimulus: Stimulus,
    planted: list[PlantedParcel],
    features_of: Callable[[PlantedParcel], list[np.ndarray]],
    labels: np.ndarray,
    gain: np.ndarray,
    seed: int,
) -> list[np.ndarray]:
    """The noiseless BOLD of every voxel, run by run.

    Parameters
    ----------
    stimulus : Stimulus
    planted : list of PlantedParcel
    features_of : callable
        ``features_of(p) -> [array (n_words_r, dim) per run]`` of the planted (layer, state).
    labels : ndarray of int, shape (n_voxels,)
        Parcel id per voxel.
    gain : ndarray, shape (n_voxels,)
        Signal standard deviation per voxel (``sqrt(snr_v)``), scaled by ``sqrt(weight)``.
    seed : int

    Returns
    -------
    list of ndarray, each (n_scans_r, n_voxels), float64
        ``gain_v * sqrt(weight) * s_v`` in planted voxels (``s_v`` unit variance per run), 0 elsewhere.
    """
    runs = stimulus.runs
    bounds = np.cumsum([0] + [len(r.words) for r in runs])
    operators = [hrf_operator(run, stimulus.tr) for run in runs]
    signal = [np.zeros((run.n_scans, labels.size)) for run in runs]
    for p in planted:
        # z-score over all words: removes the mean vector every state shares, whose
        # HRF-convolved version is just the word rate.
        z = zscore(np.concatenate(features_of(p))).astype(np.float64)
        words_signal = z @ parcel_directions(z, seed, p.parcel_id)  # (n_words, k)
        voxels = np.flatnonzero(labels == p.parcel_id)
        rng = np.random.default_rng([seed, 5, p.parcel_id])
        mixing = rng.standard_normal((N_DIRECTIONS, voxels.size))
        mixing /= np.linalg.norm(mixing, axis=0)
        for r, op in enumerate(operators):
            scans = zscore(op @ words_signal[bounds[r]:bounds[r + 1]]).astype(np.float64)
            per_voxel = zscore(scans @ mixing).astype(np.float64)  # (n_scans_r, n_parcel_voxels)
            signal[r][:, voxels] = per_voxel * (gain[voxels] * np.sqrt(p.weight))
    return signal


def ar1_noise(rng: np.random.Generator, n_scans: int, phi: np.ndarray) -> np.ndarray:
    """Stationary unit-variance AR(1) Gaussian noise, shape (n_scans, n_voxels)."""
    innovations = rng.standard_normal((n_scans, phi.size))
    noise = np.empty_like(innovations)
    noise[0] = innovations[0]  # start in the stationary distribution
    scale = np.sqrt(1.0 - phi**2)
    for t in range(1, n_scans):
        noise[t] = phi * noise[t - 1] + scale * innovations[t]
    return noise
