"""The embedded default dataset: an original story and BOLD simulated from a planted truth.

The stimulus is ``data/story.txt`` (an original English story, one section per fMRI run)
with word timings drawn from a plausible speech rate. The brain is the 4 mm MNI grid of
the Le Petit Prince reference pipeline, masked to the 48 Harvard-Oxford cortical parcels.
A few parcels respond to one (layer, state) of a *truth model* each; every other voxel is
noise. A benchmark run on this dataset should find the planted (layer, state) in each
planted parcel and nothing in the others, which is what makes it a test of the harness.

Simulation, per planted parcel ``p`` with features ``F`` (n_words, dim) of its
(layer, state)::

    Z = zscore(F)                 # over all words: drops the mean/word-rate component
    S = Z @ W                     # W: k seeded random unit vectors (dim, k) in the span
                                  #    of the top 32 principal components of Z
    S_r = zscore(A_r @ S_r)       # A_r: hrf_operator of run r (n_scans_r, n_words_r)
    s_v = zscore(S_r @ m_v)       # m_v: seeded random unit mixing vector of voxel v (k,)
    y_v = sqrt(snr_v) * s_v + e_v # e_v: AR(1) Gaussian noise, unit variance

so the best any model can do in voxel ``v`` is ``r = sqrt(snr_v / (1 + snr_v))``, the
noise ceiling this dataset reports (0 in null voxels).

Why the top principal components: with ~540 scans, a direction drawn uniformly in a
1,536-dim state (SmolLM2's ffn_activated_state) is mostly made of low-variance directions
that no encoding model can learn from so little data (recovered r ~0.2 for a ceiling of
0.54); restricted to the top 32 components it is learnable (r ~0.42) and the planted
(layer, state) still ranks first against its neighbours.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.api import ModelAdapter, Parcellation, Stimulus, StimulusRun
from mtbench.errors import MtbenchError
from mtbench.features import word_features
from mtbench.registry import load_model

from .atlas import (
    ATLAS_DERIVATION,
    ATLAS_NAME,
    MNI_4MM_AFFINE,
    MNI_4MM_SHAPE,
    harvard_oxford_cortical,
)
from .planting import (
    AR1_PHI,
    N_COMPONENTS,
    N_DIRECTIONS,
    PlantedParcel,
    ar1_noise,
    parcel_directions,
    parse_truth,
    planted_signal,
)

STORY_PATH = Path(__file__).parent / "data" / "story.txt"
TR = 2.0
HRF_TAIL_S = 10.0  # scans recorded after the last word, for the HRF to come back down
TINY_WORDS = 150  # words kept per run at scale="tiny"
TINY_NULL_PARCELS = 2
DEFAULT_SNR = 0.45  # signal/noise variance; ceilings ~0.43-0.63, mean ~0.55
_SIMULATION_VERSION = 1  # bump when the simulation changes the numbers

DEFAULT_TRUTH_MODEL = "smollm2-135m"
# States that are not linear transforms of another state, so that the planted one is
# identifiable (q vs pre_attn_norm, context vs attn_output, ffn_output vs
# ffn_activated_state are linearly equivalent and would be a coin toss).
DEFAULT_TRUTH = (
    {"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 4, "state": "per_head_q_rope"},
    {"parcel": "Superior Temporal Gyrus, posterior division", "layer": 12, "state": "ffn_activated_state"},
    {"parcel": "Inferior Frontal Gyrus, pars triangularis", "layer": 20, "state": "per_head_k_rope"},
)
OPTIONS = ("truth_model", "truth", "seed", "scale", "snr", "subjects")


MAX_SUBJECTS = 200
#: How simulated subjects differ (recorded in truth.json)
SUBJECT_NOISE = ("subject k: the average's signal + sqrt(n) x its own AR(1) noise (same phi_v, seed [seed, 5, k, run]): "
                 "the mean of the n subjects has the average's SNR, so a split half of n/2 subjects has split-half "
                 "reliability r_v = (snr_v / 2) / (1 + snr_v / 2), the relation lpp-en-sim uses to set snr_v from the "
                 "real ISC; a single subject's ceiling is sqrt(s / (1 + s)) with s = snr_v / n")


def subject_ids(n: int) -> list[str]:
    """``sub-01`` .. ``sub-<n>``: the simulated subjects."""
    return [f"sub-{k:02d}" for k in range(1, n + 1)]


# --------------------------------------------------------------------------- stimulus
def read_story(path: Path = STORY_PATH) -> list[list[tuple[str, bool]]]:
    """Words of the story, run by run.

    The file has ``## Run N`` headings; other ``#`` lines (the title) are skipped and blank
    lines end paragraphs.

    Returns
    -------
    list of runs, each a list of (word, ends_paragraph)
        Words are whitespace tokens with their punctuation attached.
    """
    runs: list[list[tuple[str, bool]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if re.fullmatch(r"##\s*Run\s+\d+", line, flags=re.IGNORECASE):
            runs.append([])
        elif line.startswith("#"):
            continue
        elif not line:
            if runs and runs[-1]:
                runs[-1][-1] = (runs[-1][-1][0], True)
        elif runs:
            runs[-1].extend((word, False) for word in line.split())
    runs = [run for run in runs if run]
    if not runs:
        raise MtbenchError(f"{path} has no '## Run N' sections with words: the package data is damaged; reinstall mtbench")
    return runs


def _pause_after(word: str, ends_paragraph: bool, rng: np.random.Generator) -> float:
    """Silence after a word (s): a breath at commas, longer at sentence and paragraph ends."""
    bare = word.rstrip("\"')”’")
    gap = 0.02 + abs(rng.normal(0.0, 0.02))  # coarticulation gap between words
    if ends_paragraph:
        gap += rng.uniform(0.8, 1.1)
    elif bare.endswith((".", "!", "?")):
        gap += rng.uniform(0.4, 0.6)
    elif bare.endswith((",", ";", ":")):
        gap += rng.uniform(0.15, 0.3)
    return gap


def speech_timings(
    words: list[tuple[str, bool]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and offsets of words read aloud at an audiobook pace (~2.6 words/s).

    Parameters
    ----------
    words : list of (word, ends_paragraph), length n_words
    rng : numpy Generator

    Returns
    -------
    onsets, offsets : ndarray, shape (n_words,), float64, seconds
        The first word starts after 3-5 s of silence.
    """
    onsets = np.empty(len(words))
    offsets = np.empty(len(words))
    t = rng.uniform(3.0, 5.0)
    for i, (word, ends_paragraph) in enumerate(words):
        letters = sum(ch.isalnum() for ch in word)
        # Longer words take longer to say; lognormal jitter keeps durations positive.
        duration = max(0.12, (0.08 + 0.045 * letters) * rng.lognormal(0.0, 0.15))
        onsets[i], offsets[i] = t, t + duration
        t += duration + _pause_after(word, ends_paragraph, rng)
    return onsets, offsets


def make_stimulus(seed: int = 0, max_words: int | None = None, path: Path = STORY_PATH) -> Stimulus:
    """The story as a :class:`~mtbench.api.Stimulus` (TR = 2 s), timings drawn from ``seed``.

    Parameters
    ----------
    seed : int
    max_words : int, optional
        Keep only the first ``max_words`` words of each run (their timings are those of
        the full story, so a truncated run is a prefix of the full one).
    path : Path
        The story file.
    """
    runs = []
    rng = np.random.default_rng([seed, 1])
    for run_words in read_story(path):
        onsets, offsets = speech_timings(run_words, rng)
        n = len(run_words) if max_words is None else min(max_words, len(run_words))
        n_scans = int(np.ceil((offsets[n - 1] + HRF_TAIL_S) / TR))
        runs.append(StimulusRun(words=[w for w, _ in run_words[:n]], onsets=onsets[:n].copy(),
                                offsets=offsets[:n].copy(), n_scans=n_scans))
    return Stimulus(language="en", tr=TR, runs=runs)


# --------------------------------------------------------------------------- options
def _check_planted(planted: list[PlantedParcel], adapter: ModelAdapter) -> None:
    available = set(adapter.available_states())
    for p in planted:
        if not 1 <= p.layer <= adapter.n_layers:
            raise MtbenchError(f"truth plants layer {p.layer} in {p.parcel!r} but truth model {adapter.name} has "
                               f"{adapter.n_layers} layers: choose layers 1..{adapter.n_layers} (dataset option truth)")
        if p.state not in available:
            raise MtbenchError(f"truth state {p.state!r} ({p.parcel!r}) is not produced by truth model {adapter.name}: "
                               f"choose one of {', '.join(sorted(available))}")


def _resolve_model(truth_model: Any) -> ModelAdapter:
    if isinstance(truth_model, str):
        return load_model(truth_model)
    if all(hasattr(truth_model, a) for a in ("name", "revision", "n_layers", "extract", "available_states", "settings")):
        return truth_model
    raise MtbenchError(f"dataset option truth_model must be a model spec such as {DEFAULT_TRUTH_MODEL!r}, "
                       f"got {type(truth_model).__name__}")


# --------------------------------------------------------------------------- dataset
class SyntheticDataset:
    """The embedded dataset (implements :class:`mtbench.api.Dataset`).

    Attributes
    ----------
    name : str
        ``synthetic``.
    version : str
        ``1+<hash>`` of everything that changes the data (options, story, truth model).
    stimulus : Stimulus
    mask_img : nibabel.Nifti1Image
        uint8 0/1 volume on the 4 mm MNI grid (37, 46, 38): the cortical parcels kept.
    parcels : Parcellation
        Harvard-Oxford cortical id per voxel, shape (n_voxels,).
    subjects : list of str
        ``["average"]``, then ``sub-01``.. with the ``subjects`` option.
    truth : dict
        The planted spec (JSON-serialisable).
    n_voxels : int
    planted : list of PlantedParcel
    """

    name = "synthetic"

    def __init__(self, adapter: ModelAdapter, planted: list[PlantedParcel], seed: int, scale: str, snr: float,
                 truth_model_spec: str, n_subjects: int = 0):
        import nibabel as nib

        self.adapter = adapter
        self.planted = planted
        self.seed = seed
        self.scale = scale
        self.snr = snr
        self.stimulus = make_stimulus(seed, max_words=TINY_WORDS if scale == "tiny" else None)

        volume, names = harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)
        if scale == "tiny":
            # The planted parcels and the lowest-id others, as controls.
            planted_ids = {p.parcel_id for p in planted}
            nulls = [i for i in sorted(names) if i not in planted_ids][:TINY_NULL_PARCELS]
            keep = sorted(planted_ids | set(nulls))
        else:
            keep = sorted(names)
        mask = np.isin(volume, keep)
        labels = volume[mask].astype(np.int32)  # boolean indexing walks the mask in C order
        self.mask_img = nib.Nifti1Image(mask.astype(np.uint8), MNI_4MM_AFFINE)
        self.parcels = Parcellation(labels=labels, names={i: names[i] for i in keep},
                                    atlas=f"{ATLAS_NAME}, 4 mm nearest")
        self.n_voxels = int(labels.size)
        self.subjects = ["average"] + subject_ids(n_subjects)
        self.n_subjects = n_subjects

        # Per-voxel signal-to-noise and noise colour: drawn for every voxel, used where planted.
        rng = np.random.default_rng([seed, 3])
        self._snr_v = snr * rng.uniform(0.5, 1.5, self.n_voxels)
        self._phi_v = rng.uniform(*AR1_PHI, self.n_voxels)
        self._planted_mask = np.isin(labels, [p.parcel_id for p in planted])
        self._bold: list[np.ndarray] | None = None
        self._signal: list[np.ndarray] | None = None

        settings = adapter.settings()
        story_hash = hashlib.sha256(STORY_PATH.read_bytes()).hexdigest()[:16]
        planted_spec = [{"parcel": p.parcel, "parcel_id": p.parcel_id, "layer": p.layer, "state": p.state,
                         "n_voxels": int((labels == p.parcel_id).sum())} for p in planted]
        self.truth = {
            "planted": planted_spec,
            "null_parcels": "every other parcel of the mask (noise only)",
            "truth_model": truth_model_spec,
            "truth_model_name": adapter.name,
            "truth_model_revision": adapter.revision,
            "truth_model_settings": settings,
            "seed": seed,
            "scale": scale,
            "snr": snr,
            "snr_per_voxel": "snr * uniform(0.5, 1.5)",
            "directions": f"{N_DIRECTIONS} seeded random unit vectors in the span of the top {N_COMPONENTS} "
                          "principal components of the z-scored word features, mixed per voxel",
            "noise": f"AR(1), phi ~ uniform{AR1_PHI}, unit variance, independent across voxels and runs",
            "ceiling": "sqrt(snr_v / (1 + snr_v)) in planted voxels, 0 elsewhere",
            "simulation_version": _SIMULATION_VERSION,
            "story_sha256": story_hash,
        }
        if n_subjects:  # absent otherwise: the average subject's version (and bytes) do not change
            self.truth["subjects"] = {"n": n_subjects, "noise": SUBJECT_NOISE}
        # Everything that changes the numbers, the atlas derivation included.
        key = json.dumps({**{k: v for k, v in self.truth.items() if k != "truth_model"}, "atlas": ATLAS_DERIVATION},
                         sort_keys=True, default=str)
        self.version = f"{_SIMULATION_VERSION}+{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    # ----------------------------------------------------------------- protocol
    def _check_subject(self, subject: str) -> None:
        if subject not in self.subjects:
            more = (f"average and sub-01..sub-{self.n_subjects:02d}" if self.n_subjects else
                    "only 'average' (simulate subjects with --dataset-option subjects=N)")
            raise MtbenchError(f"dataset synthetic has no subject {subject!r}: it has {more}")

    def expand_subjects(self, spec: str) -> list[str]:
        """``all`` (every simulated subject) or a comma list of ids -> subject ids."""
        wanted = [s for s in self.subjects if s != "average"] if spec == "all" else \
            [s.strip() for s in spec.split(",") if s.strip()]
        if not wanted:
            raise MtbenchError("dataset synthetic has no simulated subjects; add --dataset-option subjects=N")
        for subject in wanted:
            self._check_subject(subject)
        return wanted

    def load_bold(self, subject: str = "average") -> list[np.ndarray]:
        """Simulated BOLD, one array (n_scans_r, n_voxels) float32 per run.

        The first call runs the truth model (or reads its cached features); later calls
        return the same arrays.
        """
        self._check_subject(subject)
        if self._bold is None:
            self._simulate()
        if subject != "average":
            return self._subject_bold(subject)
        return self._bold

    def noise_ceiling(self, subject: str = "average") -> np.ndarray:
        """The best r any model can reach per voxel, shape (n_voxels,) float32.

        ``sqrt(snr_v / (1 + snr_v))`` in planted voxels (signal and noise variances are
        known exactly), 0 in null voxels (pure noise: nothing predicts it).
        """
        self._check_subject(subject)
        snr = self._snr_v if subject == "average" else self._snr_v / self.n_subjects
        ceiling = np.sqrt(snr / (1.0 + snr))
        return np.where(self._planted_mask, ceiling, 0.0).astype(np.float32)

    # ----------------------------------------------------------------- simulation
    def signal(self) -> list[np.ndarray]:
        """The noiseless part of the BOLD, one array (n_scans_r, n_voxels) float64 per run.

        ``sqrt(snr_v) * s_v`` in planted voxels (``s_v`` has unit variance in each run),
        0 in null voxels. For tests and diagnostics.
        """
        if self._signal is None:
            self._simulate()
        return self._signal

    def parcel_directions(self, planted: PlantedParcel, z: np.ndarray) -> np.ndarray:
        """The random unit feature directions of a planted parcel.

        Parameters
        ----------
        planted : PlantedParcel
        z : ndarray, shape (n_words, dim)
            z-scored word features of the planted (layer, state).

        Returns
        -------
        ndarray, shape (dim, N_DIRECTIONS)
            Unit columns in the span of the top ``N_COMPONENTS`` principal components.
        """
        return parcel_directions(z, self.seed, planted.parcel_id)

    def _subject_bold(self, subject: str) -> list[np.ndarray]:
        """One simulated subject: the average's signal plus its own noise, ``sqrt(n_subjects)`` times the
        average's (:data:`SUBJECT_NOISE`), seeded by subject and run."""
        k = self.subjects.index(subject)
        return [(signal + np.sqrt(self.n_subjects) * ar1_noise(np.random.default_rng([self.seed, 5, k, r]),
                                                                run.n_scans, self._phi_v)).astype(np.float32)
                for r, (signal, run) in enumerate(zip(self._signal, self.stimulus.runs))]

    def _simulate(self) -> None:
        runs = self.stimulus.runs
        states = sorted({p.state for p in self.planted})
        layers = sorted({p.layer for p in self.planted})
        features = word_features(self.adapter, self.stimulus, states, layers)
        signal = planted_signal(self.stimulus, self.planted, lambda p: features[(p.layer, p.state)],
                                self.parcels.labels, np.sqrt(self._snr_v), self.seed)
        bold = []
        for r, run in enumerate(runs):
            noise = ar1_noise(np.random.default_rng([self.seed, 4, r]), run.n_scans, self._phi_v)
            bold.append((signal[r] + noise).astype(np.float32))
        self._signal, self._bold = signal, bold


def _number_option(options: dict, key: str, cast: type, default: float) -> float:
    """``options[key]`` as ``cast`` (int or float), ``default`` when absent; one-line error otherwise."""
    value = options.get(key, default)
    try:
        number = cast(value)
        if cast is int and number != float(value):  # int(1.5) would silently be 1
            raise ValueError(value)
        return number
    except (TypeError, ValueError):
        kind = "an integer" if cast is int else "a number"
        raise MtbenchError(f"dataset option {key} must be {kind}, got {value!r}; e.g. --dataset-option "
                           f"{key}={default}") from None


def load_synthetic(**options) -> SyntheticDataset:
    """Load the embedded dataset.

    Parameters
    ----------
    truth_model : str or ModelAdapter, default "smollm2-135m"
        Model whose features make the planted signal: any spec of
        :func:`mtbench.registry.load_model`, or an adapter object (tests).
    truth : list of dict or JSON str, optional
        ``[{"parcel": NAME or id, "layer": N, "state": STATE}, ...]``; default
        :data:`DEFAULT_TRUTH`.
    seed : int, default 0
        Decides timings, directions, gains and noise; same options, same bytes.
    scale : {"full", "tiny"}
        ``tiny``: planted parcels + 2 null parcels and the first 150 words of each run.
    snr : float, default 0.45
        Mean signal-to-noise variance ratio of planted voxels.
    subjects : int, default 0
        Simulated subjects ``sub-01``.. besides ``average`` (:data:`SUBJECT_NOISE`); ``--subject all``
        runs each.

    Returns
    -------
    SyntheticDataset
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown option {unknown[0]!r} for dataset synthetic: options are {', '.join(OPTIONS)}")
    seed = _number_option(options, "seed", int, 0)
    snr = _number_option(options, "snr", float, DEFAULT_SNR)
    if not (np.isfinite(snr) and snr > 0):
        raise MtbenchError(f"dataset option snr must be a positive number, got {snr}")
    n_subjects = _number_option(options, "subjects", int, 0)
    if not 0 <= n_subjects <= MAX_SUBJECTS:
        raise MtbenchError(f"dataset option subjects must be between 0 and {MAX_SUBJECTS}, got {n_subjects}")
    scale = str(options.get("scale", "full"))
    if scale not in ("full", "tiny"):
        raise MtbenchError(f"dataset option scale must be 'full' or 'tiny', got {scale!r}")

    _, names = harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)
    planted = parse_truth(options.get("truth", list(DEFAULT_TRUTH)), names)
    truth_model = options.get("truth_model", DEFAULT_TRUTH_MODEL)
    adapter = _resolve_model(truth_model)
    _check_planted(planted, adapter)
    spec = truth_model if isinstance(truth_model, str) else adapter.name
    return SyntheticDataset(adapter, planted, seed=seed, scale=scale, snr=snr, truth_model_spec=spec,
                            n_subjects=n_subjects)
