"""``mtbench sweep``: many runs as independent cells, resumable, on any executor.

A plan (TOML file or CLI flags) names models x states x layers x datasets x subjects x
protocols (``mtbench``, ``mindtransformer``) x modes (1, 2). Each combination is a *cell*: one
``mtbench run`` of one (layer, state) in Mode 1, of one layer's ``[mode2]`` inputs together in
Mode 2, written to ``RESULTS/runs/<cell name>/`` like any run. The cell name is canonical and
ends with a content hash of the cell's settings: the same plan always names the same folders,
which is how a sweep knows what is already done. When all the cells of a (model, dataset,
subject, protocol, mode) are done they are also written as one run (:mod:`mtbench.combine`),
the run ``mtbench leaderboard`` and ``mtbench report`` show.

Extraction runs once per (model, dataset) as its own task before the fitting cells, which
then read the word features from the shared cache (:mod:`mtbench.features`).

Bookkeeping under ``RESULTS/sweep/`` (the results themselves stay in ``runs/``)::

    cells/<cell>.lock        fcntl lock, held while a process computes the cell
    cells/<cell>.events      append-only JSON lines: start / done / failed (host, pid, job)
    cells/<cell>.log         traceback of the cell's last failure
    extract/<group>.*        the same for the extraction task of a (model, dataset)
    models/<hash>.json       n_layers, states and size of each model (plans expand without it)

A lock is released by the kernel when its process dies (Ctrl-C, ``scancel``, out of
memory), results are written atomically (``<run>.partial`` renamed when complete): two
sweeps on one results directory never compute a cell twice nor corrupt one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .api import TaskResources
from .settings import RunSettings
from .errors import MtbenchError, first_line
from .paths import atomic_write_bytes, exclusive_lock, writable_folder
from .registry import get_registry, split_spec

PLAN_KEYS = ("models", "states", "layers", "datasets", "subjects", "protocols", "modes", "mode2", "settings",
             "dataset_options", "model_options", "executor", "executor_options", "resources", "cache", "folds",
             "combine")
# RunSettings fields a plan may set for all cells ([settings] table)
SHARED_SETTINGS = ("metric", "alphas", "hrf", "trim_scans", "seed", "backend", "precision", "shared_alpha", "inner")
# RunSettings fields of the Mode 2 cells ([mode2] table; inputs is required)
MODE2_KEYS = ("inputs", "pivot", "selection")
RESOURCE_KEYS = ("extract_cpus", "extract_gpus", "fit_cpus", "fit_gpus", "minutes_factor", "extract_feature_gb")


# --------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What to sweep: the product of the lists is the set of cells.

    Attributes
    ----------
    models, datasets, protocols : list of str
    modes : list of int
        1: a cell per (layer, state); 2: a cell per layer, fitting the ``mode2`` inputs together.
    states : list of str
        ``["all"]`` or state names (Mode 1 cells).
    layers : str or list of int
        ``"all"``, ``"1-5,8"`` or block numbers.
    subjects : list of str
        ``["all"]`` or subject ids.
    mode2 : dict
        The Mode 2 cells' ``inputs`` (required with mode 2), ``pivot`` and ``selection``.
    settings : dict
        Shared :class:`RunSettings` fields (metric, alphas, trim_scans...).
    dataset_options, model_options : dict
        Dataset name -> options; model spec -> options.
    executor : str
    executor_options : dict
    resources : dict
        Overrides of the derived task resources (``extract_gpus``, ``fit_cpus``...).
    cache : str or None
        Feature cache every task uses (``MTBENCH_CACHE``); must be shared by cluster nodes.
    folds : bool
        Write each Mode 1 cell's ``folds.parquet`` (``mtbench run --folds/--no-folds``; no score
        depends on it, ``mtbench rescore`` and ``combine`` need it).
    combine : bool
        When every cell of a (model, dataset, subject, protocol, mode) is done, also write them
        as one run (:func:`mtbench.combine.combine_runs`): its best (layer, state) per parcel
        (Mode 2: layer) is chosen across all the cells, which is what the leaderboard and
        ``mtbench report`` show.
    notes : list of str
        What reading the plan has to tell its user (not a plan key).
    """

    models: list[str]
    states: list[str] = field(default_factory=lambda: ["all"])
    layers: str | list[int] = "all"
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    subjects: list[str] = field(default_factory=lambda: ["average"])
    protocols: list[str] = field(default_factory=lambda: ["mtbench"])
    modes: list[int] = field(default_factory=lambda: [1])
    mode2: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    dataset_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    executor: str = "local"
    executor_options: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    cache: str | None = None
    folds: bool = True
    combine: bool = True
    notes: list[str] = field(default_factory=list)


def _as_list(value, key: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return value
    raise MtbenchError(f"plan key {key!r} must be a list or a comma-separated string, got {value!r}")


def load_plan(path: Path | None, **overrides) -> Plan:
    """Read a TOML plan and apply command-line overrides (``None`` values are ignored).

    Parameters
    ----------
    path : Path or None
        TOML file with the keys of :class:`Plan` at top level; None: flags only.
    **overrides
        Same keys; non-empty values replace the file's (dict values are merged).
    """
    import tomllib

    raw: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MtbenchError(f"plan file {path} does not exist; give an existing TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise MtbenchError(f"plan file {path} is not valid TOML ({exc}); fix the file") from None
    unknown = sorted(set(raw) - set(PLAN_KEYS))
    if unknown:
        raise MtbenchError(f"plan file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(PLAN_KEYS)}")
    for key, value in overrides.items():
        if value in (None, (), [], {}):
            continue
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    if not raw.get("models"):
        raise MtbenchError("a sweep needs at least one model: `models = [...]` in the plan or --model")
    for key in ("models", "states", "datasets", "subjects", "protocols", "modes"):
        if key in raw:
            raw[key] = [str(v) for v in _as_list(raw[key], key)]
    notes = _read_modes(raw)
    bad = sorted(set(raw.get("mode2", {})) - set(MODE2_KEYS))
    if bad:
        raise MtbenchError(f"plan [mode2]: unknown key {bad[0]!r}; known: {', '.join(MODE2_KEYS)}")
    if "inputs" in raw.get("mode2", {}):
        raw["mode2"]["inputs"] = [str(v) for v in _as_list(raw["mode2"]["inputs"], "inputs")]
    bad = sorted(set(raw.get("settings", {})) - set(SHARED_SETTINGS))
    if bad:
        raise MtbenchError(f"plan [settings]: {bad[0]!r} cannot be shared by all cells; use one of "
                           f"{', '.join(SHARED_SETTINGS)}")
    for key in ("folds", "combine"):
        if not isinstance(raw.get(key, True), bool):
            raise MtbenchError(f"plan key {key!r} must be true or false, got {raw[key]!r}")
    bad = sorted(set(raw.get("resources", {})) - set(RESOURCE_KEYS))
    if bad:
        raise MtbenchError(f"plan [resources]: unknown key {bad[0]!r}; known: {', '.join(RESOURCE_KEYS)}")
    return Plan(**raw, notes=notes)


def _read_modes(raw: dict) -> list[str]:
    """``modes`` as encoding modes (1, 2), in place; returns notes for the user.

    Plans written before protocols had their own key named them in ``modes``: such a list
    is read as ``protocols``, with a note.
    """
    if "modes" not in raw:
        return []
    modes = raw["modes"]
    named = [m for m in modes if m not in ("1", "2")]
    if not named:
        raw["modes"] = sorted({int(m) for m in modes})
        return []
    from .settings import PROTOCOLS

    if len(named) < len(modes) or "protocols" in raw or not set(named) <= set(PROTOCOLS):
        raise MtbenchError(f"unknown mode {named[0]!r}: modes are 1 (one state at a time) and 2 (several states "
                           f"of a block together); protocols ({', '.join(PROTOCOLS)}) go in `protocols`")
    raw["protocols"] = raw.pop("modes")
    return [f"`modes = {named}` read as `protocols = {named}`: modes are now 1 and 2 (mtbench run --mode), "
            "protocols have their own key; rename it in the plan"]


# --------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One run of one (model, dataset, subject, protocol, layer, state), or in Mode 2 of one
    (model, dataset, subject, protocol, layer).

    Attributes
    ----------
    name : str
        Canonical, readable, ends with ``hash``: the run's folder under ``runs/``.
    hash : str
        Content hash of ``settings``.
    group : str
        The extraction task this cell reads its features from.
    settings : RunSettings
    """

    name: str
    hash: str
    group: str
    settings: RunSettings


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def model_slug(spec: str) -> str:
    """``hf:/path/to/folder`` -> ``hf-folder``; ``smollm2-135m`` unchanged."""
    name, argument = split_spec(spec)
    if argument:
        name = f"{name}-{Path(argument).name or argument}"
    return slug(name)


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def make_cell(settings: RunSettings, group: str) -> Cell:
    """Name a cell after its settings (one layer; one state, or Mode 2 and its selection)."""
    (layer,) = settings.layers
    what = f"mode2-{settings.selection}" if settings.mode == 2 else settings.states[0]
    digest = _digest(asdict(settings))[:10]
    name = "-".join([model_slug(settings.model), slug(settings.dataset), slug(settings.subject),
                     f"L{layer:03d}", what, slug(settings.protocol), digest])
    return Cell(name=name, hash=digest, group=group, settings=settings)


@dataclass
class ModelInfo:
    """What planning needs to know about a model (cached under ``sweep/models/``)."""

    n_layers: int
    states: list[str]
    n_params: int
    hidden: int


@dataclass
class DatasetInfo:
    """What planning needs to know about a dataset."""

    subjects: list[str]
    n_voxels: int
    n_scans: int
    n_words: int
    n_runs: int


def model_info(spec: str, options: dict, results_dir: Path) -> ModelInfo:
    """Layers, states and size of a model; loads it once, then reads ``sweep/models/<hash>.json``."""
    path = Path(results_dir) / "sweep" / "models" / f"{_digest([spec, options])[:16]}.json"
    try:
        return ModelInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    from .registry import load_model

    adapter = load_model(spec, **options)
    module = getattr(adapter, "model", None)
    n_params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    config = getattr(module, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 1024)
    info = ModelInfo(n_layers=int(adapter.n_layers), states=list(adapter.available_states()),
                     n_params=int(n_params), hidden=hidden)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(asdict(info)).encode())
    return info


def dataset_info(name: str, options: dict) -> DatasetInfo:
    """Subjects and sizes of a dataset (loads it, reads no BOLD)."""
    import numpy as np

    from .registry import load_dataset

    dataset = load_dataset(name, **options)
    runs = dataset.stimulus.runs
    return DatasetInfo(subjects=list(dataset.subjects), n_voxels=int((np.asarray(dataset.mask_img.dataobj) > 0).sum()),
                       n_scans=sum(r.n_scans for r in runs), n_words=sum(len(r.words) for r in runs),
                       n_runs=len(runs))


@dataclass
class Group:
    """The cells of one (model, dataset): one extraction task feeds them all."""

    name: str
    model: str
    dataset: str
    model_options: dict
    dataset_options: dict
    states: list[str]
    layers: list[int]
    model_info: ModelInfo
    dataset_info: DatasetInfo
    cells: list[Cell] = field(default_factory=list)


def expand(plan: Plan, results_dir: Path) -> list[Group]:
    """Every cell of the plan, grouped by (model, dataset), in execution order.

    Names are checked first (a typo fails before any model is loaded). Within a group the
    cells go subject by subject, protocol by protocol, mode by mode, layer by layer, state by
    state (Mode 1).
    """
    from .mode2 import check_mode2_settings, mode2_states
    from .settings import PROTOCOLS
    from .runner import parse_layers, parse_states

    registry = get_registry()
    for spec in plan.models:
        registry.model(split_spec(spec)[0])
    for name in plan.datasets:
        registry.dataset(name)
    for protocol in plan.protocols:
        if protocol not in PROTOCOLS:
            raise MtbenchError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if plan.mode2 and 2 not in plan.modes:
        raise MtbenchError("plan [mode2] (or --inputs) is for Mode 2 cells: add 2 to `modes` (--mode 2)")
    if 1 not in plan.modes and plan.states != ["all"]:
        raise MtbenchError("`states` are for Mode 1 cells; with `modes = [2]` the [mode2] inputs are fitted")
    if plan.states != ["all"]:
        for name in plan.states:
            registry.state(name)
    registry.metric(plan.settings.get("metric", "pearson"))
    RunSettings(model="", dataset="", states=[], **plan.settings).check()  # once, not in every cell
    mode2 = RunSettings(model="", dataset="", states=["all"], mode=2, **plan.mode2) if 2 in plan.modes else None
    if mode2 is not None:
        mode2.check()
        check_mode2_settings(mode2)  # no inputs, an unknown state...: one line, before any model loads
    datasets = {name: dataset_info(name, plan.dataset_options.get(name, {})) for name in plan.datasets}
    groups = []
    for spec in plan.models:
        model_options = dict(plan.model_options.get(spec, {}))
        info = model_info(spec, model_options, results_dir)
        states = parse_states(plan.states, info.states) if 1 in plan.modes else []
        inputs = parse_states(mode2_states(mode2), info.states) if mode2 is not None else []
        extracted = states + [s for s in inputs if s not in states]  # what the group's cells read
        layers = parse_layers(plan.layers, info.n_layers)
        for name, data in datasets.items():
            dataset_options = dict(plan.dataset_options.get(name, {}))
            subjects = data.subjects if plan.subjects == ["all"] else plan.subjects
            missing = [s for s in subjects if s not in data.subjects]
            if missing:
                raise MtbenchError(f"subject {missing[0]!r} is not in dataset {name} "
                                   f"(it has {', '.join(data.subjects[:5])}...); fix `subjects`")
            group_name = f"{model_slug(spec)}-{slug(name)}-{_digest([spec, model_options, name, dataset_options, extracted, layers])[:10]}"
            group = Group(group_name, spec, name, model_options, dataset_options, extracted, layers, info, data)
            for subject in subjects:
                for protocol in plan.protocols:
                    base = RunSettings(model=spec, dataset=name, states=[], subject=subject, protocol=protocol,
                                       dataset_options=dataset_options, model_options=model_options, **plan.settings)
                    for mode in plan.modes:
                        for layer in layers:
                            group.cells += ([make_cell(replace(base, states=[state], layers=[layer], mode=mode), group_name)
                                             for state in states] if mode == 1 else
                                            [make_cell(replace(base, states=["all"], layers=[layer], mode=2,
                                                               **plan.mode2), group_name)])
            groups.append(group)
    return groups


# --------------------------------------------------------------------------- resources
def layers_per_pass(group: Group, plan: Plan) -> int:
    """Layers extracted per pass of the model, so that their features fit ``extract_feature_gb`` (16)."""
    info, data = group.model_info, group.dataset_info
    per_layer_gb = len(group.states) * data.n_words * 4 * info.hidden * 4 / 1e9
    budget = float(plan.resources.get("extract_feature_gb", 16))
    return max(1, min(len(group.layers), int(budget // max(per_layer_gb, 1e-9))))


def extract_resources(group: Group, plan: Plan) -> TaskResources:
    """Weights (float32) with room for activations, plus the features of one pass in memory."""
    info, data = group.model_info, group.dataset_info
    weights_gb = info.n_params * 4 / 1e9
    chunk = layers_per_pass(group, plan)
    features_gb = chunk * len(group.states) * data.n_words * 4 * info.hidden * 4 / 1e9
    passes = math.ceil(len(group.layers) / chunk)
    flops = passes * 2 * info.n_params * data.n_words * 2  # windows overlap by half: each word seen about twice
    gpus = int(plan.resources.get("extract_gpus", 0))
    seconds = flops / (5e12 if gpus else 2e10)
    return TaskResources(cpus=int(plan.resources.get("extract_cpus", 2)), mem_gb=_round_gb(2 + 2 * weights_gb + features_gb),
                         gpus=gpus, minutes=_minutes(seconds, plan))


def fit_resources(group: Group, plan: Plan, mode: int = 1) -> TaskResources:
    """BOLD and features of one cell, copied per fold; time grows with scans x voxels x alphas."""
    data, info = group.dataset_info, group.model_info
    dim = cell_width(group, plan, mode)
    bold_gb = data.n_scans * data.n_voxels * 4 * 2 * data.n_runs / 1e9
    feats_gb = (data.n_words + data.n_scans * data.n_runs) * dim * 4 / 1e9
    gpus = int(plan.resources.get("fit_gpus", 1 if str(plan.settings.get("backend", "")).endswith("_cuda") else 0))
    return TaskResources(cpus=int(plan.resources.get("fit_cpus", 1)), mem_gb=_round_gb(1.5 + bold_gb + feats_gb),
                         gpus=gpus, minutes=_minutes(cell_seconds(group, plan, mode), plan))


def cell_seconds(group: Group, plan: Plan, mode: int = 1) -> float:
    """Rough single-CPU time of one cell; a Mode 2 cell fits its inputs side by side, twice (two stages)."""
    n_alphas = len(plan.settings.get("alphas", RunSettings("", "", []).alphas))
    return fit_seconds(group.dataset_info, cell_width(group, plan, mode), n_alphas) * (2 if mode == 2 else 1)


def cell_width(group: Group, plan: Plan, mode: int = 1) -> int:
    """Bound on a cell's feature count: the widest state (FFN activation, 4 x hidden) per state fitted."""
    return 4 * group.model_info.hidden * (len(plan.mode2.get("inputs", [])) if mode == 2 else 1)


def fit_seconds(data: DatasetInfo, dim: int, n_alphas: int) -> float:
    """Rough single-CPU time of one cell: nested leave-one-run-out ridge, plus start-up."""
    folds = data.n_runs * max(data.n_runs - 1, 1)
    flops = folds * (data.n_scans * min(dim, data.n_scans) ** 2 + n_alphas * data.n_scans * data.n_voxels * 8)
    return 5 + flops / 1e10


def _minutes(seconds: float, plan: Plan) -> int:
    return max(10, math.ceil(float(plan.resources.get("minutes_factor", 3)) * seconds / 60))


def _round_gb(gb: float) -> float:
    return math.ceil(gb * 4) / 4


# --------------------------------------------------------------------------- tasks
def sweep_dir(results_dir: Path, *parts: str) -> Path:
    path = Path(results_dir, "sweep", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class SweepTask:
    """A picklable unit of work for an executor: one cell's fit, or one group's extraction.

    Calling it does the work with its own bookkeeping (lock, events, log) and returns
    ``done``, ``skipped`` (already done, by anyone), ``busy`` (another process holds the lock)
    or ``failed``.
    """

    kind: str  # "extract" or "fit"
    name: str
    results_dir: str
    settings: RunSettings
    resources: TaskResources
    states: tuple[str, ...] = ()  # extract: what the group's cells need
    layers: tuple[int, ...] = ()
    cache: str | None = None
    wait_for_lock: bool = False
    group: str = ""  # the extraction task a fit reads its features from
    layers_per_pass: int = 0  # extract: layers whose features are held in memory at once (0: all)
    folds: bool = True  # fit: write folds.parquet

    def __call__(self) -> str:
        return execute(self)


def task_files(results_dir: Path, kind: str, name: str) -> dict[str, Path]:
    folder = sweep_dir(results_dir, "cells" if kind == "fit" else "extract")
    return {suffix: folder / f"{name}.{suffix}" for suffix in ("lock", "events", "log")}


def _job_id() -> str | None:
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def append_event(path: Path, event: str, **fields) -> None:
    """One JSON line appended in a single write (O_APPEND: concurrent writers never interleave)."""
    record = {"event": event, "time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(),
              "job": _job_id(), **fields}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_events(path: Path) -> list[dict]:
    """Events of a task, oldest first (a torn last line from a killed writer is ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def result_is_valid(results_dir: Path, cell_name: str, settings: RunSettings) -> bool:
    """True when ``runs/<cell>/`` is a complete, undamaged run of these settings.

    Every file is read to its end (:func:`mtbench.schema.read_whole_run`): a cell whose map or
    table was damaged after it finished is not done, it is set aside and fitted again.
    """
    import pyarrow.parquet as pq

    from .mode2 import mode2_states
    from .schema import RESULT_SCHEMA, read_whole_run

    run_dir = Path(results_dir) / "runs" / cell_name
    states = mode2_states(settings) if settings.mode == 2 else list(settings.states)  # as the run records them
    try:
        manifest = read_whole_run(run_dir).manifest
        recorded = manifest["settings"]
        same = (manifest["run_id"] == cell_name and manifest["model"]["spec"] == settings.model
                and recorded["dataset"] == settings.dataset and recorded["subject"] == settings.subject
                and recorded.get("mode", 1) == settings.mode and recorded["states"] == states
                and recorded["layers"] == list(settings.layers))
        return same and all(pq.read_metadata(run_dir / table).num_rows > 0  # every table of the cell's mode
                            for table in RESULT_SCHEMA["modes"][str(settings.mode)]["parquet"])
    except Exception:  # missing, truncated or foreign: not a valid result of this cell
        return False


def _set_aside(results_dir: Path, cell_name: str) -> None:
    """Move an invalid ``runs/<cell>`` (corrupt, foreign) to ``sweep/invalid/``: kept, out of readers' way."""
    run_dir = Path(results_dir) / "runs" / cell_name
    if run_dir.exists():
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        os.replace(run_dir, sweep_dir(results_dir, "invalid") / f"{cell_name}-{stamp}-{os.getpid()}")


_ADAPTERS: dict[str, object] = {}


def _adapter(settings: RunSettings):
    """The model of a cell, loaded once per worker process and reused by its next cells."""
    from .registry import load_model

    key = _digest([settings.model, settings.model_options])
    if key not in _ADAPTERS:
        _ADAPTERS.clear()  # keep one model in memory at a time
        _ADAPTERS[key] = load_model(settings.model, **settings.model_options)
    return _ADAPTERS[key]


def _limit_threads(cpus: int) -> None:
    """As many compute threads as CPUs granted (and the same count on every executor: same numbers)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(max(1, cpus))


def execute(task: SweepTask) -> str:
    """Run one task where it stands (worker process, cluster job); see :class:`SweepTask`."""
    with _cache_env(task.cache):
        return _execute(task)


def _plan_cache(plan: Plan) -> str | None:
    """The feature cache of a plan's tasks: its ``cache`` (absolute), else ``MTBENCH_CACHE``."""
    return str(Path(plan.cache).resolve()) if plan.cache else os.environ.get("MTBENCH_CACHE")


@contextmanager
def _cache_env(cache: str | None):
    """``MTBENCH_CACHE`` set for one task (restored: tasks may run inside the sweep's process)."""
    before = os.environ.get("MTBENCH_CACHE")
    if cache:
        os.environ["MTBENCH_CACHE"] = cache
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MTBENCH_CACHE", None)
        else:
            os.environ["MTBENCH_CACHE"] = before


def _execute(task: SweepTask) -> str:
    files = task_files(Path(task.results_dir), task.kind, task.name)
    with exclusive_lock(files["lock"], task.wait_for_lock, owner=_job_id() or "") as acquired:
        if not acquired:
            return "busy"
        if task.kind == "fit" and result_is_valid(Path(task.results_dir), task.name, task.settings):
            return "skipped"
        if task.kind == "fit":
            _set_aside(Path(task.results_dir), task.name)
        if task.kind == "extract" and any(e["event"] == "done" for e in read_events(files["events"])):
            return "skipped"
        append_event(files["events"], "start")
        start = time.perf_counter()
        try:
            _limit_threads(task.resources.cpus)
            detail = _extract(task) if task.kind == "extract" else _fit(task)
        except Exception as exc:
            atomic_write_bytes(files["log"], traceback.format_exc().encode())
            append_event(files["events"], "failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                         seconds=round(time.perf_counter() - start, 2))
            return "failed"
        append_event(files["events"], "done", seconds=round(time.perf_counter() - start, 2), **detail)
        return "done"


def _extract(task: SweepTask) -> dict:
    from .features import word_features
    from .registry import load_dataset

    adapter = _adapter(task.settings)
    dataset = load_dataset(task.settings.dataset, **task.settings.dataset_options)
    calls = []
    layers, chunk = list(task.layers), task.layers_per_pass or len(task.layers)
    for start in range(0, len(layers), chunk):  # bounded memory: features go to the cache, not kept
        word_features(adapter, dataset.stimulus, list(task.states), layers[start:start + chunk],
                      progress=lambda done, total: calls.append(done))
    return {"ran_model": bool(calls), "revision": adapter.revision, "passes": math.ceil(len(layers) / chunk)}


def _fit(task: SweepTask) -> dict:
    from .runner import run

    output = run(task.settings, Path(task.results_dir), run_id=task.name, adapter=_adapter(task.settings),
                 folds=task.folds, sweep_cell=True)
    return {"run_dir": output.run_dir.name}


# --------------------------------------------------------------------------- status
def cell_status(results_dir: Path, cell: Cell) -> str:
    """``done``, ``failed``, ``interrupted`` (started, never finished) or ``pending``."""
    if result_is_valid(results_dir, cell.name, cell.settings):
        return "done"
    events = read_events(task_files(results_dir, "fit", cell.name)["events"])
    last = next((e["event"] for e in reversed(events) if e["event"] in ("start", "failed", "done")), None)
    return {"failed": "failed", "start": "interrupted"}.get(last, "pending")


def failure_of(results_dir: Path, cell: Cell) -> tuple[str, Path]:
    """The last error line of a failed cell and its log file."""
    files = task_files(results_dir, "fit", cell.name)
    failed = [e for e in read_events(files["events"]) if e["event"] == "failed"]
    return (failed[-1].get("error", "?") if failed else "?"), files["log"]


@dataclass
class SweepReport:
    """What a sweep did (or, dry run, would do)."""

    n_cells: int
    status: dict[str, str]  # cell name -> final status
    failed: list[tuple[str, str, Path]]  # (cell, error, log)
    lost: list[str]  # tasks that ended without returning (cancelled, killed)
    extracted: list[str]
    seconds: float
    # combined runs (one per model, dataset, subject, mode whose cells are all done), and why others are not
    combined: list[str] = field(default_factory=list)
    not_combined: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(s == "done" for s in self.status.values())


class _Progress:
    """Live summary of done / running / failed / remaining, read from the results directory."""

    def __init__(self, results_dir: Path, cells: list[Cell], console, already_done: set[str]):
        self.results_dir, self.cells, self.console = results_dir, cells, console
        self.done = set(already_done)
        self.phase, self.start, self.last = "", time.perf_counter(), 0.0
        self.live = None

    def __enter__(self):
        if self.console is not None:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.refresh(force=True)
            self.live.__exit__(*exc)

    def counts(self) -> dict[str, int]:
        counts = {"done": len(self.done), "running": 0, "failed": 0, "remaining": 0}
        for cell in self.cells:
            if cell.name in self.done:
                continue
            events = read_events(task_files(self.results_dir, "fit", cell.name)["events"])
            last = events[-1]["event"] if events else None
            if last == "done":
                self.done.add(cell.name)
                counts["done"] += 1
            else:
                counts[{"start": "running", "failed": "failed"}.get(last, "remaining")] += 1
        return counts

    def render(self):
        from rich.table import Table

        counts = self.counts()
        table = Table(title=f"mtbench sweep — {self.phase}", show_header=True)
        for name in ("done", "running", "failed", "remaining", "elapsed"):
            table.add_column(name, justify="right")
        table.add_row(*(str(counts[k]) for k in ("done", "running", "failed", "remaining")),
                      f"{time.perf_counter() - self.start:.0f} s")
        return table

    def refresh(self, force: bool = False) -> None:
        now = time.perf_counter()
        # reading the event logs costs a file per unfinished cell: refresh big sweeps less often
        if self.live is not None and (force or now - self.last > max(1.0, len(self.cells) / 5000)):
            self.last = now
            self.live.update(self.render())


# --------------------------------------------------------------------------- engine
def load_executor(name: str, options: dict):
    """The executor registered as ``name`` (``mtbench plugins --hook register_executors``)."""
    return get_registry().executor(name).load(**options)


def plan_tasks(plan: Plan, results_dir: Path, retry_failed: bool = False):
    """Cells, their status, and the extraction and fit tasks still to run."""
    results_dir = Path(results_dir)
    cache = _plan_cache(plan)
    with _cache_env(cache):  # datasets may extract while loading (the synthetic one plants features)
        groups = expand(plan, results_dir)
    status = {cell.name: cell_status(results_dir, cell) for g in groups for cell in g.cells}
    extract, fit = [], []
    for group in groups:
        todo = [c for c in group.cells if status[c.name] in ("pending", "interrupted")
                or (retry_failed and status[c.name] == "failed")]
        if not todo:
            continue
        base = replace(todo[0].settings, states=list(group.states), layers=list(group.layers))
        extract.append(SweepTask("extract", group.name, str(results_dir), base, extract_resources(group, plan),
                                 tuple(group.states), tuple(group.layers), cache, group=group.name,
                                 layers_per_pass=layers_per_pass(group, plan)))
        resources = {mode: fit_resources(group, plan, mode) for mode in plan.modes}
        fit += [SweepTask("fit", c.name, str(results_dir), c.settings, resources[c.settings.mode], cache=cache,
                          group=group.name, folds=plan.folds) for c in todo]
    return groups, status, extract, fit


def run_sweep(plan: Plan, results_dir: Path, retry_failed: bool = False, console=None) -> SweepReport:
    """Run every cell that has no valid result yet; see the module docstring.

    Parameters
    ----------
    plan : Plan
    results_dir : Path
    retry_failed : bool
        Also run the cells whose last attempt failed (they are only reported otherwise).
    console : rich.console.Console, optional
        Shows the live progress summary.
    """
    start = time.perf_counter()
    results_dir = writable_folder(results_dir)  # before any job starts, not in each of them
    executor = load_executor(plan.executor, plan.executor_options)
    groups, status, extract, fit = plan_tasks(plan, results_dir, retry_failed)
    cells = [c for g in groups for c in g.cells]
    lost: list[str] = []
    extracted: list[str] = []
    with _Progress(results_dir, cells, console, {n for n, s in status.items() if s == "done"}) as progress:
        if extract:
            progress.phase = f"extracting {len(extract)} model x dataset"
            results = executor.run(extract, progress.refresh)
            busy = [replace(t, wait_for_lock=True) for t, r in zip(extract, results) if r == "busy"]
            if busy:  # another sweep is extracting the same model: wait for it rather than redo it
                executor.run(busy, progress.refresh)
            extracted = [t.name for t, r in zip(extract, results) if r == "done"]
            unfinished = {t.name: r for t, r in zip(extract, results) if r not in ("done", "skipped", "busy")}
            lost += [_extract_problem(results_dir, name, r) for name, r in unfinished.items()]
            # without their features, fits would each run the model: leave them to the next sweep
            fit = [t for t in fit if t.group not in unfinished]
        progress.phase = f"fitting {len(fit)} cells"
        results = executor.run(fit, progress.refresh) if fit else []
        lost += [f"{t.name}: {r}" for t, r in zip(fit, results) if r.startswith("lost")]
        # cells another sweep was computing: wait for its lock, then skip (or redo if it failed)
        busy = [replace(t, wait_for_lock=True) for t, r in zip(fit, results) if r == "busy"]
        if busy:
            progress.phase = f"waiting for {len(busy)} cells another sweep is computing"
            executor.run(busy, progress.refresh)
    final = {cell.name: cell_status(results_dir, cell) for cell in cells}
    failed = [(c.name, *failure_of(results_dir, c)) for c in cells if final[c.name] == "failed"]
    combined, not_combined = [], []
    if plan.combine:
        with _cache_env(_plan_cache(plan)):
            for name, members in combinations(groups).items():
                missing = sum(final[c.name] != "done" for c in members)
                if missing:
                    not_combined.append(f"{name}: {missing} of its {len(members)} cells not done")
                elif not plan.folds and members[0].settings.mode == 1:  # Mode 2 writes its fold table anyway
                    not_combined.append(f"{name}: its cells were written without folds.parquet (folds = false)")
                else:
                    try:  # the cells are kept whatever happens here; the next sweep tries again
                        combined.append(combine_cells(results_dir, name, members))
                    except (MtbenchError, OSError) as exc:
                        not_combined.append(f"{name}: {first_line(exc)}")
    return SweepReport(n_cells=len(cells), status=final, failed=failed, lost=lost, extracted=extracted,
                       seconds=time.perf_counter() - start, combined=combined, not_combined=not_combined)


def combinations(groups: list[Group]) -> dict[str, list[Cell]]:
    """The cells of each (model, dataset, subject, protocol, mode), by the name of the run that combines them.

    The name ends with a hash of the cells' hashes: another plan (more layers, other settings)
    names another combined run, and the same plan the same one.
    """
    by_key: dict[tuple, list[Cell]] = {}
    for group in groups:
        for cell in group.cells:
            s = cell.settings
            by_key.setdefault((group.name, s.subject, s.protocol, s.mode), []).append(cell)
    named = {}
    for members in by_key.values():
        s = members[0].settings
        digest = _digest(sorted(c.hash for c in members))[:10]
        name = "-".join([model_slug(s.model), slug(s.dataset), slug(s.subject), "combined",
                         *(["mode2"] if s.mode == 2 else []), slug(s.protocol), digest])
        named[name] = members
    return named


def combined_is_valid(results_dir: Path, name: str, members: list[Cell]) -> bool:
    """True when ``runs/<name>/`` is an undamaged combination of exactly these cells."""
    from .schema import read_whole_run

    try:
        manifest = read_whole_run(Path(results_dir) / "runs" / name).manifest
    except Exception:  # missing or damaged: combined again
        return False
    return manifest.get("run_id") == name and sorted(manifest.get("combined_from") or []) == sorted(
        c.name for c in members)


def combine_cells(results_dir: Path, name: str, members: list[Cell]) -> str:
    """Write (or keep) the run combining ``members`` (all done); returns its name.

    Under a lock, so that two sweeps finishing together write it once; a damaged or stale
    folder of that name is set aside first, like a cell's.
    """
    from .combine import combine_runs

    with exclusive_lock(sweep_dir(results_dir, "combined") / f"{name}.lock"):
        if not combined_is_valid(results_dir, name, members):
            _set_aside(results_dir, name)
            combine_runs([Path(results_dir) / "runs" / c.name for c in members], results_dir, name)
    return name


def _extract_problem(results_dir: Path, name: str, status: str) -> str:
    """One line on an extraction that did not finish, with its log when it failed."""
    if status != "failed":
        return f"extract {name}: {status}"
    files = task_files(results_dir, "extract", name)
    failed = [e for e in read_events(files["events"]) if e["event"] == "failed"]
    error = failed[-1].get("error", "?") if failed else "?"
    return f"extract {name} failed: {error}  log: {files['log']} (its cells were not started)"


def describe_plan(plan: Plan, results_dir: Path, retry_failed: bool = False) -> dict:
    """The dry run: counts, what is done, resources and a rough cost, without running anything."""
    groups, status, extract, fit = plan_tasks(plan, results_dir, retry_failed)
    rows = []
    for group in groups:
        names = [c.name for c in group.cells]
        res_fit, res_ext = fit_resources(group, plan, max(plan.modes)), extract_resources(group, plan)
        todo = [t for t in fit if t.settings.model == group.model and t.settings.dataset == group.dataset
                and t.name in names]
        needs_extract = any(t.name == group.name for t in extract)
        estimates = {}  # per mode: seconds of one cell, measured on finished cells where there are some
        for mode in plan.modes:
            measured = _measured_seconds(Path(results_dir), [c.name for c in group.cells if c.settings.mode == mode
                                                             and status[c.name] == "done"])
            estimates[mode] = ((measured, "measured") if measured is not None
                               else (cell_seconds(group, plan, mode), "formula"))
        cpu_hours = (sum(estimates[t.settings.mode][0] * t.resources.cpus for t in todo) / 3600
                     + (res_ext.minutes / 3 * res_ext.cpus / 60 if needs_extract else 0))
        rows.append({
            "model": group.model, "dataset": group.dataset, "cells": len(names),
            "done": sum(status[n] == "done" for n in names), "failed": sum(status[n] == "failed" for n in names),
            "interrupted": sum(status[n] == "interrupted" for n in names), "to_run": len(todo),
            "extract": "needed" if needs_extract else "no", "fit_resources": asdict(res_fit),
            "extract_resources": asdict(res_ext), "cpu_hours": cpu_hours,
            "estimate": "measured" if all(how == "measured" for _, how in estimates.values()) else "formula",
        })
    combos = combinations(groups)
    written = sum(combined_is_valid(results_dir, name, members) for name, members in combos.items())
    return {"n_cells": len(status), "rows": rows, "executor": plan.executor,
            "cells": [c.name for g in groups for c in g.cells],
            "combined": {"runs": len(combos) if plan.combine else 0, "written": written if plan.combine else 0}}


def _measured_seconds(results_dir: Path, done: list[str], sample: int = 20) -> float | None:
    """Median seconds of finished cells (from their manifests), or None when none is done."""
    import statistics

    seconds = []
    for name in done[:sample]:
        try:
            seconds.append(float(json.loads((results_dir / "runs" / name / "manifest.json").read_text())["seconds"]))
        except (OSError, ValueError, KeyError):
            continue
    return statistics.median(seconds) if seconds else None
