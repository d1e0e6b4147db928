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
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import MtbenchError


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


@dataclass
class RunSettings:
    """Everything that decides a run's numbers (recorded in the results)."""

    model: str
    dataset: str
    states: list[str]
    layers: str | list[int] = "all"
    subject: str = "average"
    metric: str = "pearson"
    alphas: list[float] = field(default_factory=lambda: np.logspace(0, 8, 9).tolist())
    hrf: str = "glover"
    trim_scans: int = 0
    seed: int = 0
    backend: str = "torch"
    # "mixed": the inner-validation alpha sweep in bfloat16 where the hardware has it (2x faster
    # there; mean test r moves < 1e-4, single near-tied voxels can flip alpha); "float32": exact.
    precision: str = "mixed"
    dataset_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    # One alpha per outer fold shared by all voxels (max of the voxel-mean validation r).
    shared_alpha: bool = False
    # Inner validation: "loro" (leave-one-run-out over the training runs) or "first" (one fold,
    # validated on the first run that is not the test run); see mtbench.encoding.fit_nested_loro.
    inner: str = "loro"
    # "mtbench" (the settings above) or a named protocol that fixes several of them: see PROTOCOLS.
    protocol: str = "mtbench"
    # Precision of the on-disk word-feature cache ("float16" or "float32"); features are rounded to it.
    feature_dtype: str = "float16"
    # 1: every (layer, state) on its own; 2: the ``inputs`` states of each layer together, with
    # ``selection`` "pivot" (keep as many features as ``pivot`` has) or "banded": mtbench.mode2.
    mode: int = 1
    inputs: list[str] = field(default_factory=list)
    pivot: str = "input_hidden_state"
    selection: str = "pivot"
    # Delayed copies of the aligned features, in scans (None: 1,2,3,4 for hrf="fir", none otherwise).
    delays: list[int] | None = None
    # Circular-shift permutations per fit for per-voxel p-values (0: no significance); BH-FDR level.
    permutations: int = 1000
    fdr: float = 0.05

    def __post_init__(self) -> None:
        # A script may pass tuples, arrays or NumPy numbers; the runner compares, hashes and records
        # (JSON) plain lists of plain numbers, so ("all",) must mean what ["all"] means.
        def plain(value):
            return value.item() if isinstance(value, np.generic) else value

        for name in ("states", "inputs", "layers", "alphas", "delays"):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) or isinstance(value, np.ndarray) and value.ndim == 1:
                setattr(self, name, [plain(v) for v in value])
        for name in ("trim_scans", "seed", "permutations", "fdr", "shared_alpha", "mode"):
            setattr(self, name, plain(getattr(self, name)))

    def check(self) -> None:
        """Raise a one-line :class:`MtbenchError` for a value that no run can use.

        Names (model, dataset, states, metric) are resolved by the registry instead. Called by
        ``mtbench run`` and for each plan of ``mtbench sweep`` before anything loads, so a bad
        value fails at once instead of after extraction, or in every cell of a sweep.
        """
        from .alignment import HRF_CHOICES  # lazily: api stays light
        from .encoding import BACKENDS, INNERS, PRECISIONS

        def whole(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def bad(name: str, expected: str) -> MtbenchError:
            flag = _FLAGS.get(name, f"--{name.replace('_', '-')}")
            label = f"{name} ({flag})" if flag else name
            return MtbenchError(f"{label} must be {expected}, got {getattr(self, name)!r}")

        for name in ("states", "inputs"):  # a bare string would be read letter by letter
            names = getattr(self, name)
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
                raise bad(name, "a list of state names, e.g. ['all'] or ['per_head_q_rope', 'ffn_output']")
        layers = self.layers
        if not (isinstance(layers, str) or isinstance(layers, Sequence) and all(whole(n) for n in layers)):
            raise bad("layers", "'all', a range such as '1-5,8', or a list of 1-based block numbers")
        try:  # a list, a tuple or an array of numbers; a string is the CLI's form, not a value
            alphas = None if isinstance(self.alphas, (str, bytes)) else np.asarray(self.alphas, dtype=float)
        except (TypeError, ValueError):
            alphas = None
        if alphas is None or alphas.ndim != 1 or not alphas.size or not np.all(np.isfinite(alphas) & (alphas > 0)):
            raise bad("alphas", "a non-empty list of positive, finite penalties, e.g. [1, 100, 1e4]")
        for name, choices in (("hrf", HRF_CHOICES), ("backend", BACKENDS), ("precision", PRECISIONS),
                              ("inner", INNERS), ("feature_dtype", ("float16", "float32"))):
            if getattr(self, name) not in choices:
                raise bad(name, f"one of {', '.join(choices)}")
        if not (whole(self.trim_scans) and self.trim_scans >= 0):
            raise bad("trim_scans", "a whole number of scans >= 0 (dropped at both ends of each run)")
        if not (whole(self.permutations) and self.permutations >= 0):
            raise bad("permutations", "a whole number >= 0 (0: no significance)")
        if not whole(self.seed):
            raise bad("seed", "a whole number")
        if not (isinstance(self.fdr, (int, float)) and 0 < self.fdr < 1):
            raise bad("fdr", "a level in (0, 1)")
        if not isinstance(self.shared_alpha, bool):
            raise bad("shared_alpha", "true or false")
        delays = self.delays
        if delays is not None and (isinstance(delays, str) or np.ndim(delays) != 1 or not len(delays)
                                   or not all(whole(d) and d >= 0 for d in delays)):
            raise bad("delays", "a non-empty list of scans >= 0, e.g. [1, 2, 3, 4]")


# RunSettings fields whose command-line flag is not --<field name> (None: set by a protocol or a plan only)
_FLAGS = {"trim_scans": "--trim", "shared_alpha": None, "inner": None}

