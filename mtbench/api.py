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
from pathlib import Path
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
    n_params : int
        Parameter count (0: unknown before loading); ``mtbench list models`` shows it.
    source : str
        Where the weights come from (a hub id, a package); empty for models without weights.
    local : callable or None
        ``local() -> bool``: whether the weights are on this machine (checked without loading
        anything heavy); None: nothing to download.
    architecture : mapping or None
        ``hidden``, ``heads``, ``kv_heads``, ``head_dim``, ``ffn``, ``layers`` (and ``experts``,
        ``experts_per_token``...): plans a sweep's resources without loading the model.
    """

    name: str
    summary: str
    load: Callable[..., "ModelAdapter"]
    family: str = ""
    n_params: int = 0
    source: str = ""
    local: Callable[[], bool] | None = None
    architecture: Any = None


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
    fetch|prepare|simulate NAME`` (see :mod:`mtbench_plugins.commands.data` for their signatures); None
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

    ``options`` names the options ``load`` takes: a plan that gives another is refused in one
    line naming the closest ones, before anything runs (None: not declared, passed unchecked).
    """

    name: str
    summary: str
    load: Callable[..., "Executor"]
    options: tuple[str, ...] | None = None


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


@dataclass(frozen=True)
class AnalysisOption:
    """A run setting that only some analyses read, and the flag users set it with.

    Attributes
    ----------
    field : str
        A field of :class:`mtbench.settings.RunSettings` (``inputs``, ``pivot``, ``selection``...).
    help : str
        Help text of its flag (``--<field>`` of ``mtbench run`` and ``mtbench sweep``).
    choices : tuple of str
        The values it takes (empty: any; a list field takes a comma list).
    """

    field: str
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnalysisEntry:
    """An analysis of the extracted states: what a run fits, writes, ranks and draws (``--mode NAME``).

    ``load() -> Analysis`` builds the object that does the work (:class:`Analysis`); it imports
    its heavy dependencies lazily.

    Attributes
    ----------
    name : str
        What ``--mode`` takes and a run records as ``settings.mode`` (a number such as ``1``
        is recorded as a number).
    summary : str
        One line for ``mtbench list analyses``.
    load : callable
        ``load() -> Analysis``.
    schema : dict
        Its part of the result schema (:data:`mtbench.schema.RESULT_SCHEMA`): ``manifest_keys``
        (dotted keys its manifests must have), ``files`` (paths every run of it holds),
        ``parquet`` (file -> column -> kind: ``integer``, ``floating``, ``string``) and
        optionally ``optional_parquet`` (checked when present).
    options : tuple of AnalysisOption
        The run settings it reads beyond those every run has; a setting of another analysis
        given to this one is a one-line error.
    default : bool
        The analysis of a run that names none (one plugin says so).
    hint : str
        How users choose what it fits, for error messages (e.g. ``choose states with --states``).
    plan_table : str
        The table of a sweep plan that holds its ``options`` (empty: none).
    """

    name: str
    summary: str
    load: Callable[[], "Analysis"]
    schema: dict
    options: tuple[AnalysisOption, ...] = ()
    default: bool = False
    hint: str = ""
    plan_table: str = ""


@runtime_checkable
class AnalysisResult(Protocol):
    """What an analysis hands back from a fit, a combination or a rescoring: a run to write.

    Attributes
    ----------
    summary : list of dict
        Rows the terminal shows (one per parcel, the whole brain first; each analysis says
        which keys), also returned to API callers.
    manifest : dict
        Keys it adds to the run's manifest (e.g. ``significance``).
    """

    summary: list[dict]
    manifest: dict

    def truth_check(self, truth: dict | None) -> list[dict]:
        """Rows ``parcel, planted, found, test, recovered`` against a simulated dataset's truth ([] without one)."""

    def write_files(self, folder: Path, meta: dict, mask_img: Any, truth: dict | None) -> None:
        """Write its tables, maps, ``truth.json`` (when ``truth``) and ``manifest.json`` (``meta``) into ``folder``."""


@runtime_checkable
class Analysis(Protocol):
    """What the pipeline and the built-in commands need from an analysis (``AnalysisEntry.load()``).

    A run: :meth:`check` the settings, extract :meth:`states`, :meth:`fit`, write the result
    (:func:`mtbench.results.write_run`), :meth:`print_summary`. Finished runs of it are
    validated against the entry's ``schema`` and then read by :meth:`combine`,
    :meth:`board_cells`, :meth:`figures` and ``rescore``. A sweep splits a request into cells
    with :meth:`sweep_cells`. The built-in analyses (``mtbench_plugins.analyses``) are worked
    examples of every member.

    Attributes
    ----------
    tag : str
        Part of the names of combined runs (empty for the default analysis).
    takes_states : bool
        Whether it fits the states users list (``--states``); others take their own options.
    folds_optional : bool
        Whether its per-fold table is an output choice (``--folds/--no-folds``) that combining needs.
    rescore : callable or None
        ``rescore(run, settings, metric, dataset, parcels, progress) -> AnalysisResult`` scores a
        finished run (:class:`mtbench.schema.RunFolder`, its recorded ``settings``) with another
        ``metric`` entry and/or on other ``parcels`` (:class:`Parcellation`; None: the loaded
        ``dataset``'s); None when it cannot be rescored.
    board_legend : str
        What its leaderboard cells mean (added to the board's legend; empty: nothing to add).
    board_columns : dict
        Leaderboard columns it fills beyond the common ones: name -> (Arrow type, value when absent).
    """

    tag: str
    takes_states: bool
    folds_optional: bool
    rescore: Callable[..., AnalysisResult] | None
    board_legend: str
    board_columns: dict

    def check(self, settings: Any) -> None:
        """Raise a one-line MtbenchError for settings this analysis cannot run (before anything loads)."""

    def states(self, settings: Any, available: Sequence[str] | None = None) -> list[str]:
        """The states a run extracts, in the order it records them; checked against ``available``
        (the model's states, expanding ``all``) when given."""

    def fit(self, inputs: Any, settings: Any, metric: MetricEntry, *, progress: Any = None,
            checkpoint: Callable[[dict], Any] | None = None, folds: bool = True) -> AnalysisResult:
        """Fit a run's features (``inputs``: :class:`mtbench.runner.RunInputs`) to its BOLD.

        ``checkpoint(parts)`` opens the run's :class:`mtbench.checkpoint.FitCheckpoint` (``parts``:
        what else decides the fits), for analyses that save each fit as it is done; ``folds``
        is the ``--folds/--no-folds`` output choice.
        """

    def print_summary(self, output: Any, console: Any) -> None:
        """Print a finished run (:class:`mtbench.runner.RunOutput`) on a rich console."""

    def combine(self, runs: Sequence[Any], meta: dict) -> AnalysisResult:
        """Runs of it that fitted different parts (layers, states), as the one run that fitted all.

        ``runs``: validated :class:`mtbench.schema.RunFolder` that agree on everything else;
        ``meta``: the combined run's manifest, whose ``settings`` it updates (e.g. ``layers``).
        """

    def board_cells(self, run: Any) -> list[dict]:
        """Leaderboard cells of a finished run, one per parcel: ``parcel_id, parcel, n_voxels,
        layer, state, test, test_normalized, ceiling, validation, folds_agree, voxel_best_test,
        top_state, top_state_share, tied_states, note`` and its ``board_columns``; optionally
        ``damaged``: what in the run's files is damaged (a value every run writes that is NaN or
        missing, e.g. ``"summary.parquet: test is NaN in parcel 'X'"``): the board leaves such a run out
        with a note instead of showing the value as not measured."""

    def figures(self, run: Any) -> list[tuple[str, str, Any]]:
        """Report figures of a finished run: ``(file name, caption, matplotlib Figure)``, in page order."""

    def sweep_cells(self, base: Any, states: Sequence[str], layers: Sequence[int], options: dict) -> list[Any]:
        """The settings of each cell of a sweep: ``base`` with one share of ``states`` x ``layers``
        (the model's, parsed) and the plan table's ``options``."""

    def cell_label(self, settings: Any) -> str:
        """What a cell fits, in its name (e.g. its state)."""

    def cost(self, settings: Any) -> tuple[int, int]:
        """(widest states fitted side by side, fits per cell): scales a sweep cell's estimated cost."""


# What each hook of mtbench.hookspecs returns: hook name -> (entry type, kind word used in messages).
HOOK_ENTRIES: dict[str, tuple[type, str]] = {
    "register_models": (ModelEntry, "model"),
    "register_states": (StateDefinition, "state"),
    "register_datasets": (DatasetEntry, "dataset"),
    "register_metrics": (MetricEntry, "metric"),
    "register_executors": (ExecutorEntry, "executor"),
    "register_analyses": (AnalysisEntry, "analysis"),
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
