"""The plugin contract, as executable checks: the conformance kit for plugin authors and mtbench's tests.

A plugin author calls these in their own test suite; mtbench runs the same checks on
every built-in plugin (``tests/test_conformance.py``). Each check exercises the contract
of :mod:`mtbench.api` on tiny inputs and raises :class:`ConformanceError` with a message
in plain words: what is wrong, in which object, and what the contract expects.

Nothing here imports torch: a check only calls what the plugin gives it. Tiny random models
of every Hugging Face family are in :mod:`mtbench_plugins.models.hf.tiny`; the pytest fixtures
(``mtbench_tiny_stimulus``, ``mtbench_tiny_model``, ...) in :mod:`mtbench_plugins.pytest_fixtures`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import click
import numpy as np
import pluggy

from mtbench import hookspecs
from mtbench.api import (
    HOOK_ENTRIES,
    Analysis,
    AnalysisEntry,
    AnalysisResult,
    MetricEntry,
    Parcellation,
    StateDefinition,
    Stimulus,
    StimulusRun,
)
from mtbench.registry import get_registry
from mtbench.settings import RunSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # what users can type after --model etc.
STATE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

# hook name -> (entry type, kind): the registry's own table, so a new hook is checked here too.
HOOK_KINDS: dict[str, tuple[type, str]] = HOOK_ENTRIES

_TINY_TEXT = [
    "Once upon a time a small fox lived near the river , and every morning she walked to the water .",
    "The old man told a story about the stars ; nobody believed him , but everyone listened until night .",
    "Years later the fox came back to the same place , looked at the sky and remembered his quiet voice .",
]


class ConformanceError(AssertionError):
    """A plugin breaks the contract of :mod:`mtbench.api`; the message says how and what to do."""


def _fail(what: str, problem: str, expected: str) -> None:
    raise ConformanceError(f"{what}: {problem}; the contract expects {expected}")


# --------------------------------------------------------------------------- inputs
def tiny_stimulus(language: str = "en", tr: float = 2.0) -> Stimulus:
    """A three-run stimulus of about 20 words per run, with plausible timings.

    Words include punctuation tokens and a repeated word ("fox") so that adapters
    meet the cases real stories have. Deterministic (no randomness).

    Returns
    -------
    Stimulus
        3 runs; word ``i`` of a run starts at ``0.4 * i`` s and lasts 0.3 s; each run
        has enough scans to cover its last word plus 10 s of HRF tail.
    """
    runs = []
    for sentence in _TINY_TEXT:
        words = sentence.split()
        onsets = 0.4 * np.arange(len(words), dtype=np.float64)
        offsets = onsets + 0.3
        runs.append(StimulusRun(words=words, onsets=onsets, offsets=offsets,
                                n_scans=int(math.ceil((offsets[-1] + 10.0) / tr))))
    return Stimulus(language=language, tr=tr, runs=runs)


# --------------------------------------------------------------------------- states
def check_state(state: StateDefinition, registered: Sequence[StateDefinition] = ()) -> None:
    """Check one state definition (what ``register_states`` returns).

    Parameters
    ----------
    state : StateDefinition
    registered : sequence of StateDefinition, optional
        The other registered states: the name must be new, and ``order`` distinct.
    """
    if not isinstance(state, StateDefinition):
        _fail("state", f"got a {type(state).__name__}", "a mtbench.api.StateDefinition")
    what = f"state {state.name!r}"
    if not isinstance(state.name, str) or not STATE_PATTERN.match(state.name):
        _fail(what, "the name is not lower_snake_case", "a name like 'per_head_q_rope' (it is typed in --states "
              "and used in file names)")
    for attr in ("stage", "description"):
        value = getattr(state, attr)
        if not isinstance(value, str) or not value.strip():
            _fail(what, f"{attr} is empty", f"a non-empty {attr} (shown by `mtbench list states`)")
    if isinstance(state.order, bool) or not isinstance(state.order, int):
        _fail(what, f"order is {state.order!r}", "an int that sorts it among the other states")
    if not isinstance(state.uses_rope, bool):
        _fail(what, f"uses_rope is {state.uses_rope!r}", "True or False")
    for other in registered:
        if other is state or other == state:
            continue
        if other.name == state.name:
            _fail(what, "the name is already registered", "each state name registered once")
        if other.order == state.order:
            _fail(what, f"order {state.order} is also the order of state {other.name!r}",
                  "a distinct order per state, so tables sort the same way every time")


# --------------------------------------------------------------------------- metrics
def check_metric(metric: MetricEntry | Callable, n_scans: int = 40, n_voxels: int = 6, seed: int = 0) -> None:
    """Check a metric on random data with known structure.

    The score must be a finite float array of shape (n_voxels,), deterministic, leave its
    inputs unchanged, treat voxels independently (permuting or sub-setting voxels permutes
    or sub-sets the scores), accept float32 and float64, give the perfect prediction the
    highest score, and decrease as predictions get noisier (higher is better).

    Parameters
    ----------
    metric : MetricEntry or callable
        ``score(y_true, y_pred)`` with arrays of shape (n_scans, n_voxels).
    """
    if isinstance(metric, MetricEntry):
        what, score = f"metric {metric.name!r}", metric.score
        _check_entry_text(metric, "metric")
    elif callable(metric):
        what, score = f"metric {getattr(metric, '__name__', repr(metric))}", metric
    else:
        _fail("metric", f"got a {type(metric).__name__}", "a MetricEntry or a score(y_true, y_pred) callable")
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n_scans, n_voxels))
    noise = rng.standard_normal((n_scans, n_voxels))
    good, bad = y + 0.5 * noise, y + 3.0 * noise

    def call(t, p, label):
        t_copy, p_copy = t.copy(), p.copy()
        try:
            out = score(t, p)
        except Exception as exc:
            _fail(what, f"raised {type(exc).__name__}: {exc} on {label}", "a score for any finite inputs")
        if not (np.array_equal(t, t_copy) and np.array_equal(p, p_copy)):
            _fail(what, "modified its input arrays", "inputs left untouched (the runner reuses them)")
        out = np.asarray(out)
        if out.shape != (t.shape[1],):
            _fail(what, f"returned shape {out.shape} for inputs of shape {t.shape} ({label})",
                  f"one score per voxel, shape ({t.shape[1]},)")
        if not np.issubdtype(out.dtype, np.floating):
            _fail(what, f"returned dtype {out.dtype}", "floating-point scores")
        if not np.isfinite(out).all():
            _fail(what, f"returned NaN/inf ({label})", "finite scores for finite inputs")
        return out.astype(np.float64)

    perfect = call(y, y.copy(), "a perfect prediction")
    s_good, s_bad = call(y, good, "a good prediction"), call(y, bad, "a poor prediction")
    if not np.allclose(call(y, good, "a good prediction, again"), s_good):
        _fail(what, "gave different scores for the same inputs", "a deterministic score")
    if np.any(perfect < s_good - 1e-6) or np.any(perfect < s_bad - 1e-6):
        _fail(what, "scored a noisy prediction above the perfect one", "the perfect prediction (y_pred == y_true) "
              "to score highest: higher must be better")
    if not s_good.mean() > s_bad.mean():
        _fail(what, f"mean score {s_good.mean():.3f} for a good prediction vs {s_bad.mean():.3f} for a poor one",
              "better predictions to score higher (higher must be better)")
    perm = rng.permutation(n_voxels)
    if not np.allclose(call(y[:, perm], good[:, perm], "permuted voxels"), s_good[perm], atol=1e-5):
        _fail(what, "changed a voxel's score when the voxels were permuted", "each voxel scored on its own column")
    half = n_voxels // 2
    if not np.allclose(call(y[:, :half], good[:, :half], "a subset of voxels"), s_good[:half], atol=1e-5):
        _fail(what, "changed a voxel's score when other voxels were removed", "each voxel scored on its own column")
    s32 = call(y.astype(np.float32), good.astype(np.float32), "float32 inputs")
    if not np.allclose(s32, s_good, atol=1e-3):
        _fail(what, "gave different scores for float32 and float64 inputs", "the same score (up to rounding)")


# --------------------------------------------------------------------------- models
def check_model_adapter(adapter: Any, stimulus: Stimulus | None = None, registered_states: Sequence[str] | None = None,
                        max_states: int | None = None) -> None:
    """Check a loaded model adapter (what ``ModelEntry.load`` returns) on a tiny stimulus.

    Checks the attributes (``name``, ``revision``, ``n_layers``, ``family``), that
    ``available_states()`` is a non-empty subset of the registered states, that
    ``settings()`` is JSON-serialisable, and that ``extract`` on the first and last
    block returns exactly the requested ``(layer, state)`` keys, one float32 array
    (n_words_r, dim) per run with the same ``dim`` in every run and finite values, the
    same numbers when called again or for a subset, and an error for an unavailable
    state or an out-of-range layer.

    Parameters
    ----------
    adapter : ModelAdapter
    stimulus : Stimulus, optional
        Default :func:`tiny_stimulus`.
    registered_states : sequence of str, optional
        Default: the states of the current registry (``mtbench list states``).
    max_states : int, optional
        Only extract the first ``max_states`` available states (faster for big models).
    """
    what = f"model adapter {getattr(adapter, 'name', type(adapter).__name__)!r}"
    for attr, kind in (("name", str), ("revision", str), ("family", str), ("n_layers", int)):
        if not hasattr(adapter, attr):
            _fail(what, f"has no attribute {attr!r}", f"a {kind.__name__} {attr} (see mtbench.api.ModelAdapter)")
        value = getattr(adapter, attr)
        if not isinstance(value, kind) or isinstance(value, bool):
            _fail(what, f"{attr} is {value!r} ({type(value).__name__})", f"a {kind.__name__}")
    if not adapter.name.strip():
        _fail(what, "name is empty", "the model's name (used in run ids and the feature cache)")
    if not adapter.revision.strip():
        _fail(what, "revision is empty", "a content hash or version of the weights (the feature cache key): "
              "an empty revision would let two different models share cached features")
    if adapter.n_layers < 1:
        _fail(what, f"n_layers is {adapter.n_layers}", "at least 1 (layers are 1-based block numbers)")
    for method in ("available_states", "extract", "settings"):
        if not callable(getattr(adapter, method, None)):
            _fail(what, f"has no method {method}()", "the methods of mtbench.api.ModelAdapter")

    available = adapter.available_states()
    if not isinstance(available, list) or not available or not all(isinstance(s, str) for s in available):
        _fail(what, f"available_states() returned {available!r}", "a non-empty list of state names")
    if len(set(available)) != len(available):
        _fail(what, "available_states() lists a state twice", "each state once")
    if registered_states is None:
        registered_states = get_registry().names("state")
    unknown = [s for s in available if s not in registered_states]
    if unknown:
        _fail(what, f"available_states() names {unknown[0]!r}, which no plugin registers",
              "a subset of the registered states (`mtbench list states`); register new ones with register_states")
    settings = adapter.settings()
    if not isinstance(settings, dict):
        _fail(what, f"settings() returned a {type(settings).__name__}", "a dict")
    try:
        json.dumps(settings, sort_keys=True)
    except (TypeError, ValueError) as exc:
        _fail(what, f"settings() is not JSON-serialisable ({exc})", "plain values (it is part of the cache key "
              "and the manifest)")

    stimulus = stimulus or tiny_stimulus()
    states = available[:max_states] if max_states else list(available)
    layers = sorted({1, adapter.n_layers})
    calls: list[tuple[int, int]] = []
    features = _extract(adapter, what, stimulus, states, layers, progress=lambda d, t: calls.append((d, t)))
    _check_features(what, features, stimulus, states, layers)
    for done, total in calls:
        if not (isinstance(done, int) and isinstance(total, int) and 0 <= done <= total):
            _fail(what, f"called progress({done!r}, {total!r})", "progress(done, total) with 0 <= done <= total")

    again = _extract(adapter, what, stimulus, states[:1], layers[-1:])
    key = (layers[-1], states[0])
    if set(again) != {key}:
        _fail(what, f"extract(states={states[:1]}, layers={layers[-1:]}) returned keys {sorted(again)}",
              f"exactly the requested key {key}")
    for r, (a, b) in enumerate(zip(features[key], again[key])):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5):
            _fail(what, f"features of {key} in run {r + 1} differ between two calls (one of them for this key "
                  "alone)", "deterministic features that do not depend on which other states/layers are asked for")

    for bad_states, bad_layers, label in (
        (["__not_a_state__"], layers[:1], "an unknown state"),
        (states[:1], [adapter.n_layers + 1], f"layer {adapter.n_layers + 1} (out of range)"),
        (states[:1], [0], "layer 0 (layers are 1-based)"),
    ):
        try:
            adapter.extract(stimulus, bad_states, bad_layers)
        except Exception:
            continue
        _fail(what, f"extract() accepted {label}", "an error naming the problem (mtbench.errors.MtbenchError), "
              "never silent zeros")


def _extract(adapter, what, stimulus, states, layers, progress=None):
    try:
        out = adapter.extract(stimulus, states, layers, progress=progress)
    except Exception as exc:
        _fail(what, f"extract(states={list(states)}, layers={list(layers)}) raised {type(exc).__name__}: {exc}",
              "features for every available state and every layer 1..n_layers")
    if not isinstance(out, dict):
        _fail(what, f"extract() returned a {type(out).__name__}", "a dict (layer, state) -> list of arrays")
    return out


def _check_features(what, features, stimulus, states, layers) -> None:
    expected = {(layer, state) for layer in layers for state in states}
    if set(features) != expected:
        missing, extra = sorted(expected - set(features)), sorted(set(features) - expected)
        _fail(what, f"extract() returned keys missing {missing[:3]} / extra {extra[:3]}",
              "exactly one (layer, state) key per requested layer and state")
    for key, runs in features.items():
        if not isinstance(runs, list) or len(runs) != len(stimulus.runs):
            _fail(what, f"{key}: got {type(runs).__name__} of length {len(runs) if hasattr(runs, '__len__') else '?'}",
                  f"a list with one array per run ({len(stimulus.runs)})")
        dims = set()
        for r, (x, run) in enumerate(zip(runs, stimulus.runs), start=1):
            if not isinstance(x, np.ndarray):
                _fail(what, f"{key} run {r} is a {type(x).__name__}", "a numpy array (convert tensors with .numpy())")
            if x.ndim != 2 or x.shape[0] != len(run.words) or x.shape[1] < 1:
                _fail(what, f"{key} run {r} has shape {x.shape}", f"(n_words, dim) = ({len(run.words)}, dim >= 1): "
                      "one row per word of the run, in order")
            if x.dtype != np.float32:
                _fail(what, f"{key} run {r} has dtype {x.dtype}", "float32")
            if not np.isfinite(x).all():
                _fail(what, f"{key} run {r} contains NaN/inf", "finite features")
            dims.add(x.shape[1])
        if len(dims) > 1:
            _fail(what, f"{key} has different widths across runs {sorted(dims)}", "the same dim in every run")


# --------------------------------------------------------------------------- datasets
def check_dataset(dataset: Any, subject: str | None = None) -> None:
    """Check a loaded dataset (what ``DatasetEntry.load`` returns).

    Checks the stimulus (at least 3 runs, as nested leave-one-run-out needs; words with
    finite, ordered timings inside their run), that ``load_bold`` gives one finite array
    (n_scans_r, n_voxels) per run where n_voxels is the mask's voxel count, deterministic,
    that the parcels label every mask voxel with a named id, and that the noise ceiling
    (if any) is in [0, 1] per voxel.

    Parameters
    ----------
    dataset : Dataset
    subject : str, optional
        Default: the first of ``dataset.subjects``.
    """
    what = f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r}"
    for attr in ("name", "version"):
        value = getattr(dataset, attr, None)
        if not isinstance(value, str) or not value.strip():
            _fail(what, f"{attr} is {value!r}", f"a non-empty string {attr} (recorded in every result)")
    stimulus = getattr(dataset, "stimulus", None)
    if not isinstance(stimulus, Stimulus):
        _fail(what, f"stimulus is a {type(stimulus).__name__}", "a mtbench.api.Stimulus")
    if not (isinstance(stimulus.tr, (int, float)) and stimulus.tr > 0):
        _fail(what, f"stimulus.tr is {stimulus.tr!r}", "the repetition time in seconds, > 0")
    if len(stimulus.runs) < 3:
        _fail(what, f"the stimulus has {len(stimulus.runs)} runs", "at least 3 runs (nested leave-one-run-out "
              "holds out one run for testing and one for validation)")
    for r, run in enumerate(stimulus.runs, start=1):
        n = len(run.words)
        if n == 0 or not all(isinstance(w, str) and w for w in run.words):
            _fail(what, f"run {r} has empty or non-string words", "a non-empty list of words (str)")
        onsets, offsets = np.asarray(run.onsets, dtype=float), np.asarray(run.offsets, dtype=float)
        if onsets.shape != (n,) or offsets.shape != (n,):
            _fail(what, f"run {r} has {n} words but onsets {onsets.shape} / offsets {offsets.shape}",
                  "one onset and one offset per word")
        if not (np.isfinite(onsets).all() and np.isfinite(offsets).all()):
            _fail(what, f"run {r} has NaN/inf word timings", "finite seconds from the run's first scan")
        if np.any(np.diff(onsets) < 0) or np.any(offsets < onsets) or onsets[0] < 0:
            _fail(what, f"run {r} has decreasing onsets, negative onsets or offsets before onsets",
                  "words in the order heard, 0 <= onset <= offset")
        if isinstance(run.n_scans, bool) or not isinstance(run.n_scans, (int, np.integer)) or run.n_scans < 1:
            _fail(what, f"run {r} n_scans is {run.n_scans!r}", "a positive int")
        if onsets[-1] >= run.n_scans * stimulus.tr:
            _fail(what, f"run {r}'s last word starts at {onsets[-1]:.1f} s, after its {run.n_scans} scans "
                  f"({run.n_scans * stimulus.tr:.1f} s)", "words heard during the scans of their run")

    mask_img = getattr(dataset, "mask_img", None)
    if not hasattr(mask_img, "dataobj"):
        _fail(what, f"mask_img is a {type(mask_img).__name__}", "a 3-D nibabel image (e.g. nibabel.Nifti1Image)")
    mask = np.asarray(mask_img.dataobj)
    if mask.ndim != 3:
        _fail(what, f"mask_img has {mask.ndim} dimensions", "a 3-D mask volume")
    n_voxels = int((mask > 0).sum())
    if n_voxels == 0:
        _fail(what, "the mask is empty", "at least one voxel")
    parcels = dataset.parcels
    if not isinstance(parcels, Parcellation):
        _fail(what, f"parcels is a {type(parcels).__name__}", "a mtbench.api.Parcellation")
    labels = np.asarray(parcels.labels)
    if labels.shape != (n_voxels,) or not np.issubdtype(labels.dtype, np.integer):
        _fail(what, f"parcels.labels has shape {labels.shape} and dtype {labels.dtype}",
              f"one integer label per mask voxel, shape ({n_voxels},) in C-order of the mask")
    unnamed = sorted(set(np.unique(labels[labels != 0]).tolist()) - set(parcels.names))
    if unnamed:
        _fail(what, f"parcel id {unnamed[0]} has no name in parcels.names", "a name for every non-zero label")

    subjects = dataset.subjects
    if not isinstance(subjects, list) or not subjects or not all(isinstance(s, str) for s in subjects):
        _fail(what, f"subjects is {subjects!r}", "a non-empty list of subject ids")
    subject = subject or subjects[0]
    bold = dataset.load_bold(subject)
    if not isinstance(bold, list) or len(bold) != len(stimulus.runs):
        _fail(what, f"load_bold({subject!r}) returned {len(bold) if hasattr(bold, '__len__') else bold!r} runs",
              f"a list with one array per stimulus run ({len(stimulus.runs)})")
    for r, (y, run) in enumerate(zip(bold, stimulus.runs), start=1):
        y = np.asarray(y)
        if y.shape != (run.n_scans, n_voxels):
            _fail(what, f"run {r} BOLD has shape {y.shape}", f"(n_scans, n_voxels) = ({run.n_scans}, {n_voxels}): "
                  "the run's scan count x the mask's voxel count")
        if not np.issubdtype(y.dtype, np.floating) or not np.isfinite(y).all():
            _fail(what, f"run {r} BOLD has dtype {y.dtype} or NaN/inf values", "finite floating-point values")
    again = dataset.load_bold(subject)
    if any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(bold, again)):
        _fail(what, f"load_bold({subject!r}) returned different data on a second call", "deterministic data")
    ceiling = dataset.noise_ceiling(subject)
    if ceiling is not None:
        ceiling = np.asarray(ceiling)
        if ceiling.shape != (n_voxels,) or not np.isfinite(ceiling).all() or ceiling.min() < 0 or ceiling.max() > 1:
            _fail(what, f"noise_ceiling has shape {ceiling.shape}, range "
                  f"[{np.nanmin(ceiling) if ceiling.size else 'empty'}, {np.nanmax(ceiling) if ceiling.size else ''}]",
                  f"None or a per-voxel reliability in [0, 1], shape ({n_voxels},)")
    truth = getattr(dataset, "truth", None)
    try:
        json.dumps(truth)
    except (TypeError, ValueError):
        _fail(what, "truth is not JSON-serialisable", "None or plain JSON values (it is written to truth.json)")


# --------------------------------------------------------------------------- plugins
def _check_entry_text(entry: Any, kind: str) -> None:
    what = f"{kind} entry {entry.name!r}"
    if not isinstance(entry.name, str) or not NAME_PATTERN.match(entry.name) or ":" in entry.name:
        _fail(what, "the name has spaces, a colon or odd characters", "a name users can type, like 'my-model-7b' "
              "(a colon separates an argument: NAME:ARGUMENT)")
    if not isinstance(entry.summary, str) or not entry.summary.strip() or "\n" in entry.summary.strip():
        _fail(what, "summary is empty or spans several lines", "one line for `mtbench list`")


def check_entry(entry: Any) -> None:
    """Check one entry returned by a ``register_*`` hook, without loading anything heavy.

    Model, dataset and executor entries need a callable ``load`` accepting keyword options; metric
    entries are checked fully (:func:`check_metric`); states with :func:`check_state`.
    """
    if isinstance(entry, StateDefinition):
        check_state(entry)
        return
    if isinstance(entry, AnalysisEntry):
        check_analysis(entry)
        return
    kinds = {entry_type: kind for entry_type, kind in HOOK_KINDS.values()}
    if type(entry) not in kinds:
        _fail("entry", f"got a {type(entry).__name__}", "one of " + ", ".join(t.__name__ for t in kinds))
    kind = kinds[type(entry)]
    _check_entry_text(entry, kind)
    if kind == "metric":
        check_metric(entry)
        return
    if not callable(entry.load):
        _fail(f"{kind} entry {entry.name!r}", "load is not callable", "load(**options) returning the object")
    try:
        params = inspect.signature(entry.load).parameters.values()
    except (TypeError, ValueError):
        return
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        _fail(f"{kind} entry {entry.name!r}", "load() takes no **options", "load(**options): users pass "
              f"--{kind}-option KEY=VALUE (and models NAME:ARGUMENT as argument=...)")


_SCHEMA_KINDS = ("integer", "floating", "string")


def check_analysis(entry: AnalysisEntry, load: bool = True) -> Analysis | None:
    """Check an analysis entry: its name, its part of the result schema, its options and (``load``) the
    object it loads, which must have every member of :class:`mtbench.api.Analysis`.

    Returns
    -------
    The loaded analysis (None when ``load`` is False).
    """
    what = f"analysis entry {entry.name!r}"
    _check_entry_text(entry, "analysis")
    schema = entry.schema
    if not isinstance(schema, dict) or not isinstance(schema.get("files"), list) or not isinstance(
            schema.get("parquet"), dict) or not isinstance(schema.get("manifest_keys"), list):
        _fail(what, "its schema is not a dict with 'manifest_keys' (list), 'files' (list) and 'parquet' (dict)",
              "its part of the result schema as data (see docs/plugins.md, register_analyses)")
    for table, columns in {**schema["parquet"], **schema.get("optional_parquet", {})}.items():
        bad = {c: k for c, k in columns.items() if k not in _SCHEMA_KINDS}
        if not str(table).endswith(".parquet") or bad:
            _fail(what, f"schema table {table!r} has column kinds {bad}", f"'<name>.parquet': {{column: one of "
                  f"{', '.join(_SCHEMA_KINDS)}}}")
    settings = {f for f in RunSettings.__dataclass_fields__}
    for option in entry.options:
        if option.field not in settings:
            _fail(what, f"option {option.field!r} is not a run setting", f"one of {', '.join(sorted(settings))}")
    if not callable(entry.load):
        _fail(what, "load is not callable", "load() returning the analysis")
    if not load:
        return None
    try:
        analysis = entry.load()
    except Exception as exc:
        _fail(what, f"load() raised {type(exc).__name__}: {exc}", "load() returning the analysis")
    missing = sorted(name for name in ("tag", "takes_states", "folds_optional", "rescore", "board_legend",
                                       "board_columns", *_methods(Analysis)) if not hasattr(analysis, name))
    if missing:
        _fail(what, f"the loaded analysis has no {', '.join(missing)}", "every member of mtbench.api.Analysis")
    return analysis


def check_analysis_result(result: Any) -> None:
    """Check what an analysis's fit, combine or rescore returns (:class:`mtbench.api.AnalysisResult`)."""
    what = f"analysis result {type(result).__name__}"
    missing = sorted(name for name in ("summary", "manifest", *_methods(AnalysisResult)) if not hasattr(result, name))
    if missing:
        _fail(what, f"has no {', '.join(missing)}", "every member of mtbench.api.AnalysisResult")
    if not isinstance(result.summary, list) or not all(isinstance(row, dict) for row in result.summary):
        _fail(what, "summary is not a list of dicts", "one dict per parcel (the whole brain first)")
    try:
        json.dumps(result.manifest)
    except (TypeError, ValueError):
        _fail(what, "manifest is not JSON-serialisable", "plain JSON values: they go into manifest.json")


def _methods(protocol) -> list[str]:
    return [name for name, member in vars(protocol).items() if callable(member) and not name.startswith("_")]


def check_commands(register: Callable) -> list[click.Command]:
    """Check a ``register_commands(cli)`` implementation: it adds click commands with one-line help to a group.

    Returns
    -------
    list of click.Command
        What it added.
    """
    group = click.Group("mtbench")
    try:
        register(cli=group)
    except Exception as exc:
        _fail("register_commands", f"raised {type(exc).__name__}: {exc}", "cli.add_command(command) for each command")
    if not group.commands:
        _fail("register_commands", "added no command", "cli.add_command(command) or @cli.command()")
    for name, command in group.commands.items():
        if not isinstance(command, click.Command):
            _fail(f"command {name!r}", f"is a {type(command).__name__}", "a click.Command (or click.Group)")
        if not (command.help or command.short_help or "").strip():
            _fail(f"command {name!r}", "has no help text", "a docstring: `mtbench --help` lists it")
    return list(group.commands.values())


def _plugin_modules(target: Any) -> list[tuple[str, types.ModuleType | str]]:
    """(label, module or module path) for a module, a module name or a distribution name."""
    if isinstance(target, types.ModuleType):
        return [(target.__name__, target)]
    if not isinstance(target, str):
        _fail("plugin", f"got a {type(target).__name__}", "a module, a module name or a distribution name")
    try:
        dist = metadata.distribution(target)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        eps = [ep for ep in dist.entry_points if ep.group == "mtbench"]
        if not eps:
            _fail(f"distribution {target!r}", "declares no entry point in the group 'mtbench'",
                  '[project.entry-points.mtbench] NAME = "your_package.module" in its pyproject.toml')
        return [(f"{target}:{ep.name}", ep.value) for ep in eps]
    return [(target, target)]


def check_plugin(target: Any, check_import_cost: bool = True) -> dict[str, list]:
    """Check a plugin module (or every ``mtbench`` entry point of a distribution).

    Each module must import, register with pluggy against :mod:`mtbench.hookspecs`
    (hook names and arguments as specified), return from every hook a list of entries of
    the right type with unique names, and (``check_import_cost``) not import torch or
    transformers at import time: a fresh interpreter imports it and looks.

    Parameters
    ----------
    target : module, str
        A module, a module name (``my_package.mtbench_plugin``) or an installed
        distribution name (``mtbench-my-plugin``).

    Returns
    -------
    dict
        kind (``model``, ``state``, ``dataset``, ``metric``) -> entries, each already
        checked with :func:`check_entry`.
    """

    found: dict[str, list] = {kind: [] for _, kind in HOOK_KINDS.values()}
    for label, module in _plugin_modules(target):
        what = f"plugin {label}"
        if check_import_cost:
            _check_import_cost(what, module if isinstance(module, str) else module.__name__)
        if isinstance(module, str):
            try:
                module = importlib.import_module(module)
            except Exception as exc:
                _fail(what, f"failed to import: {type(exc).__name__}: {exc}", "an importable module")
        manager = pluggy.PluginManager("mtbench")
        manager.add_hookspecs(hookspecs)
        try:
            manager.register(module, name=label)
        except Exception as exc:  # pluggy.PluginValidationError: wrong hook arguments
            _fail(what, f"does not match the hook specifications ({exc})", "hook functions named and with the "
                  "arguments of mtbench.hookspecs (see docs/plugins.md)")
        for hook_name in manager.hook.__dict__:
            if not hook_name.startswith("_") and not hasattr(hookspecs, hook_name):
                _fail(what, f"implements {hook_name!r}, which is not a hook", f"one of {', '.join(HOOK_KINDS)} "
                      "(a typo, or a hook of a newer mtbench)")
        implemented = [h for h in manager.hook.__dict__ if not h.startswith("_") and getattr(manager.hook, h).get_hookimpls()]
        if not implemented:
            _fail(what, "implements no hook", "at least one function decorated with @mtbench.hookspecs.hookimpl")
        if "register_commands" in implemented:
            check_commands(getattr(module, "register_commands"))
        # other hooks with arguments (added by later versions) are validated by pluggy above, not called here
        for hook_name in [h for h in HOOK_KINDS if h in implemented]:
            entry_type, kind = HOOK_KINDS[hook_name]
            try:
                returned = getattr(manager.hook, hook_name)()  # one result per implementation; None dropped
            except Exception as exc:
                _fail(what, f"{hook_name}() raised {type(exc).__name__}: {exc}", f"a list of {entry_type.__name__}")
            bad = [r for r in returned if not isinstance(r, (list, tuple))]
            if bad or not returned:
                _fail(what, f"{hook_name}() returned {type(bad[0]).__name__ if bad else 'None'}",
                      f"a list of {entry_type.__name__}")
            for entry in (entry for result in returned for entry in result):
                if not isinstance(entry, entry_type):
                    _fail(what, f"{hook_name}() returned a {type(entry).__name__}", f"a list of {entry_type.__name__}")
                if any(e.name == entry.name for e in found[kind]):
                    _fail(what, f"registers {kind} {entry.name!r} twice", "unique names")
                check_entry(entry)
                found[kind].append(entry)
    for state in found["state"]:
        check_state(state, found["state"])
    return found


def _check_import_cost(what: str, module: str) -> None:
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "heavy = [m for m in ('torch', 'transformers', 'tensorflow', 'jax') if m in sys.modules]; "
            "print(','.join(heavy))")
    # the fresh interpreter imports from the same path as this one (tests add folders to sys.path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        _fail(what, f"failed to import in a fresh interpreter: {last}", "an importable module")
    heavy = result.stdout.strip()
    if heavy:
        _fail(what, f"imports {heavy} at import time", "registration that stays cheap: import heavy libraries "
              "inside the entry's load() (`mtbench list` must never import torch)")
