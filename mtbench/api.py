"""The contract between the core and its plugins.

Entries (``ModelEntry``, ``StateDefinition``, ``DatasetEntry``, ``MetricEntry``) are what
hooks return: cheap to build, no heavy imports. Their ``load`` callables build the runtime
objects (``ModelAdapter``, ``Dataset``) that the runner uses.

Conventions
-----------
- Layers are numbered 1..n_layers (block 1 is the first transformer block), as in
  MindTransformer's ``--layers``.
- Arrays are float32 unless stated. ``n_words_r`` is the number of words of run ``r``,
  ``n_scans_r`` its number of scans, ``n_voxels`` the number of voxels in the mask
  (C-order of the mask volume).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np



# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class ModelEntry:
    """A model a plugin can load.

    Attributes
    ----------
    name : str
        The name users type (``mtbench run --model NAME``).
    summary : str
        One line for ``mtbench list models``.
    load : callable
        ``load(**options) -> ModelAdapter``. Imports torch/transformers lazily.
    family : str
        Architecture family (``llama``, ``gemma3``, ``baseline``...).
    """

    name: str
    summary: str
    load: Callable[..., "ModelAdapter"]
    family: str = ""


@dataclass(frozen=True)
class StateDefinition:
    """One extraction point of a transformer block.

    Attributes
    ----------
    name : str
        Canonical name, e.g. ``per_head_q_rope``.
    stage : str
        ``block input``, ``attention`` or ``ffn & residual``.
    description : str
        What tensor this is, in words.
    order : int
        Position in the canonical order (sorting key for tables).
    uses_rope : bool
        True for states that only exist in families with rotary embeddings.
    """

    name: str
    stage: str
    description: str
    order: int
    uses_rope: bool = False


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset a plugin can load.

    ``load(**options) -> Dataset``; options are dataset-specific (``--dataset-option k=v``).
    The optional ``fetch``, ``prepare`` and ``simulate`` callables back ``mtbench data
    fetch|prepare|simulate NAME`` (see :mod:`mtbench.data_cli` for their signatures); None
    means the dataset does not offer that command.
    """

    name: str
    summary: str
    load: Callable[..., "Dataset"]
    language: str = "en"
    fetch: Callable[..., Any] | None = None
    prepare: Callable[..., Any] | None = None
    simulate: Callable[..., Any] | None = None


@dataclass(frozen=True)
class MetricEntry:
    """A per-voxel score of predictions against held-out data.

    ``score(y_true, y_pred) -> scores`` with ``y_true``, ``y_pred`` of shape
    (n_scans, n_voxels) and ``scores`` of shape (n_voxels,). Higher must be better.
    """

    name: str
    summary: str
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExecutorEntry:
    """A way to run the tasks of ``mtbench sweep`` (a process pool, a cluster...).

    ``load(**options) -> Executor``; options come from the plan's ``[executor_options]``
    table or ``--executor-option k=v``. Imports its heavy dependencies lazily.
    """

    name: str
    summary: str
    load: Callable[..., "Executor"]


@dataclass(frozen=True)
class TaskResources:
    """What one sweep task needs, estimated from model size and data size.

    Attributes
    ----------
    cpus : int
    mem_gb : float
    gpus : int
    minutes : int
        Wall-time limit to request.
    """

    cpus: int = 1
    mem_gb: float = 2.0
    gpus: int = 0
    minutes: int = 60


@runtime_checkable
class Executor(Protocol):
    """Runs sweep tasks somewhere and waits for them.

    A task is a picklable callable ``task() -> str`` (a status word: ``done``, ``skipped``,
    ``failed``, ``busy``) with attributes ``name`` (str), ``kind`` (``extract`` or ``fit``)
    and ``resources`` (:class:`TaskResources`). Tasks do their own bookkeeping on disk (locks,
    logs, results), so an executor only has to run them.
    """

    def run(self, tasks: Sequence[Callable[[], str]], poll: Callable[[], None]) -> list[str]:
        """Run every task; call ``poll()`` every few seconds while waiting.

        Returns
        -------
        list of str, one per task, in order
            What the task returned, or ``lost: <why>`` when it ended without returning
            (killed, cancelled, out of memory).
        """


# What each hook of mtbench.hookspecs returns: hook name -> (entry type, kind word used in messages).
HOOK_ENTRIES: dict[str, tuple[type, str]] = {
    "register_models": (ModelEntry, "model"),
    "register_states": (StateDefinition, "state"),
    "register_datasets": (DatasetEntry, "dataset"),
    "register_metrics": (MetricEntry, "metric"),
    "register_executors": (ExecutorEntry, "executor"),
}


# --------------------------------------------------------------------------- stimulus
@dataclass
class StimulusRun:
    """The words heard during one fMRI run.

    Attributes
    ----------
    words : list of str, length n_words_r
    onsets, offsets : ndarray, shape (n_words_r,)
        Seconds from the start of the run's first scan.
    n_scans : int
        Number of scans (TRs) recorded in this run.
    """

    words: list[str]
    onsets: np.ndarray
    offsets: np.ndarray
    n_scans: int


@dataclass
class Stimulus:
    """The whole story, run by run.

    Attributes
    ----------
    language : str
        ISO code (``en``, ``fr``, ``zh``); decides how words are joined into text.
    tr : float
        Repetition time in seconds.
    runs : list of StimulusRun
    """

    language: str
    tr: float
    runs: list[StimulusRun]

    @property
    def separator(self) -> str:
        """String that joins words into running text (none for Chinese)."""
        return "" if self.language in ("zh", "cn") else " "

    def run_text(self, run_index: int) -> tuple[str, list[tuple[int, int]]]:
        """Text of one run and each word's character span in it.

        Returns
        -------
        text : str
        spans : list of (start, end), length n_words_r
        """
        spans, pieces, pos = [], [], 0
        for i, word in enumerate(self.runs[run_index].words):
            if i:
                pieces.append(self.separator)
                pos += len(self.separator)
            spans.append((pos, pos + len(word)))
            pieces.append(word)
            pos += len(word)
        return "".join(pieces), spans

    def fingerprint(self) -> str:
        """Content hash of words, timings and scan counts (cache key)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.language, self.tr]).encode())
        for run in self.runs:
            h.update(json.dumps(run.words, ensure_ascii=False).encode())
            h.update(np.asarray(run.onsets, dtype=np.float64).tobytes())
            h.update(np.asarray(run.offsets, dtype=np.float64).tobytes())
            h.update(str(run.n_scans).encode())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- parcels
@dataclass
class Parcellation:
    """Voxel-to-parcel assignment.

    Attributes
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Parcel id per voxel in mask order; 0 = no parcel.
    names : dict of int to str
        Parcel id -> name (e.g. ``Heschl's Gyrus (includes H1 and H2)``).
    atlas : str
        Which atlas this is (provenance).
    """

    labels: np.ndarray
    names: dict[int, str]
    atlas: str = ""


# --------------------------------------------------------------------------- runtime
@runtime_checkable
class Dataset(Protocol):
    """What the runner needs from a dataset.

    Attributes
    ----------
    name, version : str
    stimulus : Stimulus
    mask_img : nibabel.Nifti1Image
        3-D boolean brain mask; voxel order everywhere is C-order of this volume.
    parcels : Parcellation
    subjects : list of str
        Subject ids; ``average`` is the group-average subject when the dataset has one.
    truth : dict or None
        Planted ground truth for simulated datasets (JSON-serialisable), else None.
    """

    name: str
    version: str
    stimulus: Stimulus
    mask_img: Any
    parcels: Parcellation
    subjects: list[str]
    truth: dict | None

    def load_bold(self, subject: str) -> list[np.ndarray]:
        """BOLD of one subject, one array (n_scans_r, n_voxels) per run."""

    def noise_ceiling(self, subject: str) -> np.ndarray | None:
        """Per-voxel reliability (n_voxels,) or None when the dataset has none."""


@runtime_checkable
class ModelAdapter(Protocol):
    """What the runner needs from a model.

    Attributes
    ----------
    name : str
    revision : str
        Content hash of the weights/config (provenance and cache key).
    n_layers : int
    family : str
    """

    name: str
    revision: str
    n_layers: int
    family: str

    def available_states(self) -> list[str]:
        """State names this model can produce (subset of the registered states)."""

    def extract(
        self,
        stimulus: Stimulus,
        states: Sequence[str],
        layers: Sequence[int],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[tuple[int, str], list[np.ndarray]]:
        """Word-level features.

        Parameters
        ----------
        stimulus : Stimulus
        states : sequence of str
        layers : sequence of int
            1-based block numbers.
        progress : callable, optional
            ``progress(done, total)`` in whatever units the adapter counts (windows).

        Returns
        -------
        dict
            ``(layer, state) -> [array (n_words_r, dim) per run]``, float32.
        """

    def settings(self) -> dict:
        """Extraction settings that change the features (part of the cache key)."""

    # Optional: ``extract_stream(stimulus, states, layers, start_words=None, progress=None)``
    # yielding ``(run, first_word, {(layer, state): array (n, dim)})`` blocks of finished words
    # in order. ``mtbench.features`` then writes them to the cache as they come (memory stays
    # at one block) and resumes an interrupted extraction at ``start_words`` (per run).
