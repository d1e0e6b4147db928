"""Simulated subjects of ``lpp-en-sim``: written as their parts by the simulation, composed when read.

Writing 49 subjects x 9 runs of 25,870 voxels would take 13 GB; a subject is the average's planted
signal plus its own seeded noise, so only the signal of the planted voxels and the noise colour
are written (``derivatives/mtbench-4mm/subjects/``) and each subject is composed by the loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..planting import ar1_noise

#: English subjects the real ISC was measured on: a simulated subject's noise is sqrt(49) times the average's
REAL_SUBJECTS = 49
MAX_SUBJECTS = 200
SUBJECT_NOISE = (f"subject k (sim01..): the average's planted signal + sqrt({REAL_SUBJECTS}) x its own AR(1) noise "
                 "(same phi_v, seed [seed, 5, k, run]), composed when read: the mean of 49 such subjects has the "
                 "average's SNR, so split halves of them correlate r_v, the real ISC (in planted voxels; null voxels "
                 "carry no shared signal)")


def subject_ids(n: int) -> list[str]:
    """``sim01`` .. : the simulated subjects of ``lpp-en-sim``."""
    return [f"sim{k:02d}" for k in range(1, n + 1)]


def write_subject_parts(prepared: Path, signal: list[np.ndarray], planted: np.ndarray, phi: np.ndarray) -> None:
    """What simulated subjects are composed from: the planted voxels' signal per run, their indices, the
    noise colour of every voxel (``subjects/``; 11 MB for 1,000 planted voxels, not 13 GB of 49 subjects)."""
    folder = prepared / "subjects"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "planted.npy", planted.astype(np.int64))
    np.save(folder / "phi.npy", phi.astype(np.float64))
    for k, part in enumerate(signal, start=1):
        np.save(folder / f"signal_run-{k}.npy", np.asarray(part, dtype=np.float64))


def subject_bold(prepared: Path, info: dict, subject: str, n_scans: list[int]) -> list[np.ndarray]:
    """One simulated subject's runs (n_scans_r, n_voxels) float32, composed as :data:`SUBJECT_NOISE` says."""
    sim = info["simulated_subjects"]
    k = subject_ids(int(sim["n"])).index(subject) + 1
    folder = prepared / "subjects"
    planted, phi = np.load(folder / "planted.npy"), np.load(folder / "phi.npy")
    runs = []
    for r, n in enumerate(n_scans):
        y = sim["noise_scale"] * ar1_noise(np.random.default_rng([int(sim["seed"]), 5, k, r]), n, phi)
        y[:, planted] += np.load(folder / f"signal_run-{r + 1}.npy")
        runs.append(y.astype(np.float32))
    return runs
