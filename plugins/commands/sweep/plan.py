"""``mtbench sweep``'s plan: what to run, expanded into cells.

A plan (TOML file or CLI flags) names models x states x layers x datasets x subjects x
protocols (``mtbench``, ``mindtransformer``) x modes (the analyses, ``mtbench list analyses``).
Each combination is a *cell*: one ``mtbench run`` of one share of the work, as the cell's
analysis splits it (:meth:`mtbench.api.Analysis.sweep_cells`; Mode 1: one (layer, state), Mode 2:
one layer's ``[mode2]`` inputs together), written to ``RESULTS/runs/<cell name>/`` like any run.
The cell name is canonical and ends with a content hash of the cell's settings: the same plan
always names the same folders, which is how a sweep knows what is already done
(:mod:`.engine` runs them, :mod:`.tasks` is one cell's work and bookkeeping).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tomllib

from mtbench.errors import MtbenchError
from mtbench.paths import atomic_write_bytes
from mtbench.registry import (
    get_registry,
    load_dataset,
    load_model,
    model_slug,
    slug,
    split_spec,
)
from mtbench.runner import parse_layers, parse_states
from mtbench.settings import PROTOCOLS, RunSettings, mode_value

#: Top-level keys of a plan; each analysis's options table (e.g. ``[mode2]``) is one more.
PLAN_KEYS = ("models", "states", "layers", "datasets", "subjects", "protocols", "modes", "settings",
             "dataset_options", "model_options", "executor", "executor_options", "resources", "cache", "folds",
             "combine")
# RunSettings fields a plan may set for all cells ([settings] table)
SHARED_SETTINGS = ("metric", "alphas", "hrf", "trim_scans", "seed", "backend", "precision", "shared_alpha", "inner")

RESOURCE_KEYS = ("extract_cpus", "extract_gpus", "fit_cpus", "fit_gpus", "minutes_factor", "extract_feature_gb",
                 "gpu_mem_gb", "max_mem_gb", "max_gpus", "max_minutes")
#: What each [resources] value may be: (a whole number?, its least value, whether that value is allowed).
#: gpu_mem_gb: memory of one GPU (plans extract_gpus); max_*: the partition's limits (the dry run warns).
RESOURCE_VALUES = {"extract_cpus": (True, 1, True), "extract_gpus": (True, 0, True), "fit_cpus": (True, 1, True),
                   "fit_gpus": (True, 0, True), "minutes_factor": (False, 0, False),
                   "extract_feature_gb": (False, 0, False), "gpu_mem_gb": (False, 0, False),
                   "max_mem_gb": (False, 0, False), "max_gpus": (True, 0, True), "max_minutes": (False, 0, False)}
# plan keys that are tables of their own
TABLE_KEYS = ("settings", "dataset_options", "model_options", "executor_options", "resources")



# --------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What to sweep: the product of the lists is the set of cells.

    Attributes
    ----------
    models, datasets, protocols : list of str
    modes : list of int or str
        The analyses (``settings.mode`` of the cells; default: the default analysis), e.g. 1: a
        cell per (layer, state); 2: a cell per layer, fitting the ``[mode2]`` inputs together.
    states : list of str
        ``["all"]`` or state names (cells of analyses that fit the states users list).
    layers : str or list of int
        ``"all"``, ``"1-5,8"`` or block numbers.
    subjects : list of str
        ``["all"]`` or subject ids.
    analysis_options : dict
        Plan table name (an analysis's ``plan_table``, e.g. ``mode2``) -> the settings of that
        analysis's cells (e.g. ``inputs``, ``pivot``, ``selection``).
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
    modes: list = field(default_factory=list)
    analysis_options: dict = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        if not self.modes:  # the default analysis
            self.modes = [mode_value(get_registry().default_analysis().name)]


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

    raw: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MtbenchError(f"plan file {path} does not exist; give an existing TOML file") from None
        except UnicodeDecodeError as exc:
            raise MtbenchError(f"plan file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                               f"{exc.start}); save it as UTF-8, the encoding of TOML") from None
        except OSError as exc:  # a folder, no permission
            raise MtbenchError(f"cannot read plan file {path} ({exc.strerror or exc}); give a readable TOML "
                               "file") from None
        except tomllib.TOMLDecodeError as exc:
            raise MtbenchError(f"plan file {path} is not valid TOML ({exc}); fix the file") from None
    tables = analysis_tables()
    known = (*PLAN_KEYS, *tables)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise MtbenchError(f"plan file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    for key, value in overrides.items():
        if value in (None, (), [], {}):
            continue
        if key == "analysis_options":  # table -> options, merged into the plan's tables
            for table, options in value.items():
                raw[table] = {**raw.get(table, {}), **options}
            continue
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    if not raw.get("models"):
        raise MtbenchError("a sweep needs at least one model: `models = [...]` in the plan or --model")
    for key in TABLE_KEYS:
        if not isinstance(raw.get(key, {}), dict):
            raise MtbenchError(f"plan key {key!r} must be a table ([{key}] with KEY = VALUE lines), got "
                               f"{raw[key]!r}")
    raw["layers"] = _read_layers(raw.get("layers", "all"))
    for key in ("models", "states", "datasets", "subjects", "protocols", "modes"):
        if key in raw:
            raw[key] = [str(v) for v in _as_list(raw[key], key)]
    notes = _read_modes(raw)
    options = {}
    for table, fields_of in tables.items():
        if table not in raw:
            continue
        given = raw.pop(table)
        bad = sorted(set(given) - set(fields_of))
        if bad:
            raise MtbenchError(f"plan [{table}]: unknown key {bad[0]!r}; known: {', '.join(fields_of)}")
        for name, value in given.items():  # a list setting may be a comma string, as in any plan list
            given[name] = ([str(v) for v in _as_list(value, name)]
                           if isinstance(getattr(RunSettings("", "", []), name), list) else value)
        options[table] = given
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
    _check_resources(raw.get("resources", {}))
    check_executor(raw.get("executor", "local"), raw.get("executor_options", {}))
    return Plan(**raw, analysis_options=options, notes=notes)


def _read_layers(layers):
    """The plan's ``layers``: ``"all"``, a range text, a block number or a list of them."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if whole(layers):  # `layers = 5`: block 5, as `--layers 5`
        return [layers]
    if isinstance(layers, str) or isinstance(layers, list) and all(whole(n) for n in layers):
        return layers
    raise MtbenchError(f"plan key 'layers' must be 'all', a range such as '1-5,8', a block number or a list of "
                       f"them, got {layers!r}")


def _check_resources(resources: dict) -> None:
    """Each [resources] value has the type and range it must have (a negative CPU count is no request)."""
    for key, value in resources.items():
        whole, least, allowed = RESOURCE_VALUES[key]
        number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
        if not (number and np.isfinite(value) and (value >= least if allowed else value > least)):
            kind = "a whole number" if whole else "a number"
            raise MtbenchError(f"plan [resources]: {key} = {value!r} must be {kind} {'>=' if allowed else '>'} "
                               f"{least}; fix it or leave it out (then it is estimated)")


def check_executor(name, options: dict) -> None:
    """The executor is registered and takes every option given (``--executor-option``), or one line.

    Checked when the plan is read (``--dry-run`` too), not when the first task is handed over.
    """
    if not isinstance(name, str):
        raise MtbenchError(f"plan key 'executor' must be the name of an executor, got {name!r} "
                           "(`mtbench list executors`)")
    entry = get_registry().executor(name)  # unknown: one line with the closest names
    if entry.options is None:  # an executor that does not declare its options: it checks them itself
        return
    unknown = [key for key in options if key not in entry.options]
    if unknown:
        close = difflib.get_close_matches(unknown[0], entry.options, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "none is close"
        raise MtbenchError(f"executor {name} has no option {unknown[0]!r}: {hint} (it takes "
                           f"{', '.join(entry.options) or 'none'}; --executor-option KEY=VALUE)")


def analysis_tables() -> dict[str, tuple[str, ...]]:
    """Plan table -> the settings it may hold, for every installed analysis that has one (e.g. ``mode2``)."""
    return {entry.plan_table: tuple(option.field for option in entry.options)
            for entry in get_registry().entries["analysis"].values() if entry.plan_table}


def _read_modes(raw: dict) -> list[str]:
    """``modes`` as analyses (``mtbench list analyses``), in place; returns notes for the user.

    Plans written before protocols had their own key named them in ``modes``: such a list
    is read as ``protocols``, with a note.
    """
    if "modes" not in raw:
        return []
    modes = raw["modes"]
    registry = get_registry()
    analyses = registry.names("analysis")
    named = [m for m in modes if m not in analyses]
    if not named:
        raw["modes"] = [mode_value(m) for m in sorted(set(modes), key=analyses.index)]
        return []
    if len(named) < len(modes) or "protocols" in raw or not set(named) <= set(PROTOCOLS):
        described = [f"{name} ({registry.analysis(name).summary})" for name in analyses]
        described = " and ".join([", ".join(described[:-1]), described[-1]] if len(described) > 1 else described)
        raise MtbenchError(f"unknown mode {named[0]!r}: modes are {described}; protocols "
                           f"({', '.join(PROTOCOLS)}) go in `protocols`")
    raw["protocols"] = raw.pop("modes")
    return [f"`modes = {named}` read as `protocols = {named}`: modes are now 1 and 2 (mtbench run --mode), "
            "protocols have their own key; rename it in the plan"]



# --------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One run of one share of a (model, dataset, subject, protocol, mode): e.g. in Mode 1 one
    (layer, state), in Mode 2 one layer.

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


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def make_cell(settings: RunSettings, group: str) -> Cell:
    """Name a cell after its settings: one layer, and what its analysis fits there (:meth:`~mtbench.api.Analysis.cell_label`)."""
    (layer,) = settings.layers
    what = get_registry().analysis(settings.mode).load().cell_label(settings)
    hashed = digest(settings.record())[:10]
    name = "-".join([model_slug(settings.model), slug(settings.dataset), slug(settings.subject),
                     f"L{layer:03d}", what, slug(settings.protocol), hashed])
    return Cell(name=name, hash=hashed, group=group, settings=settings)


@dataclass
class ModelInfo:
    """What planning needs to know about a model (cached under ``sweep/models/``).

    ``widths``: feature width per state (empty: unknown, bounded by 4 x hidden); ``architecture``:
    the numbers of :attr:`mtbench.api.ModelEntry.architecture` (heads, FFN width, vocabulary...).
    """

    n_layers: int
    states: list[str]
    n_params: int
    hidden: int
    widths: dict = field(default_factory=dict)
    architecture: dict = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """What planning needs to know about a dataset."""

    subjects: list[str]
    n_voxels: int
    n_scans: int
    n_words: int
    n_runs: int


def state_widths(architecture: dict) -> dict[str, int]:
    """Feature width of each of the 13 block states from the architecture numbers (``ModelEntry.architecture``)."""
    hidden = architecture["hidden"]
    q = architecture["heads"] * architecture["head_dim"]
    kv = architecture["kv_heads"] * architecture["head_dim"]
    widths = dict.fromkeys(("input_hidden_state", "pre_attn_norm", "attn_output", "post_attn_hidden_state",
                            "pre_ffn_norm", "ffn_output"), hidden)
    widths |= dict.fromkeys(("per_head_q", "per_head_q_rope", "per_head_context_vector"), q)
    widths |= dict.fromkeys(("per_head_k", "per_head_k_rope", "per_head_v"), kv)
    widths["ffn_activated_state"] = architecture["ffn"]
    return widths



def model_info(spec: str, options: dict, results_dir: Path) -> ModelInfo:
    """Layers, states and size of a model: from its entry's architecture when it has one (a catalog
    model: nothing is loaded or downloaded), else loads it once, then reads ``sweep/models/<hash>.json``."""
    entry = get_registry().model(split_spec(spec)[0])
    architecture = dict(getattr(entry, "architecture", None) or {})
    if {"hidden", "heads", "kv_heads", "head_dim", "ffn", "layers"} <= set(architecture) and entry.n_params:
        registered = get_registry().names("state")
        widths = state_widths(architecture)
        states = [s for s in architecture.get("states", widths) if s in registered]
        return ModelInfo(n_layers=int(architecture["layers"]), states=states, n_params=int(entry.n_params),
                         hidden=int(architecture["hidden"]), widths=widths, architecture=architecture)
    path = Path(results_dir) / "sweep" / "models" / f"{digest([spec, options])[:16]}.json"
    try:
        return ModelInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    adapter = load_model(spec, **options)
    module = getattr(adapter, "model", None)
    n_params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    config = getattr(module, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 1024)
    architecture = {key: int(getattr(config, name, 0) or 0) for key, name in (
        ("hidden", "hidden_size"), ("heads", "num_attention_heads"), ("kv_heads", "num_key_value_heads"),
        ("head_dim", "head_dim"), ("ffn", "intermediate_size"), ("layers", "num_hidden_layers"),
        ("vocab", "vocab_size"))}
    widths = {}
    if all(architecture.values()):
        widths = state_widths(architecture)
    info = ModelInfo(n_layers=int(adapter.n_layers), states=list(adapter.available_states()),
                     n_params=int(n_params), hidden=hidden, widths=widths,
                     architecture={k: v for k, v in architecture.items() if v})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(asdict(info)).encode())
    return info


def dataset_info(name: str, options: dict) -> DatasetInfo:
    """Subjects and sizes of a dataset (loads it, reads no BOLD)."""
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

    Names and settings are checked first (a typo fails before any model is loaded). Within a
    group the cells go subject by subject, protocol by protocol, mode by mode, then as the
    mode's analysis lists them (Mode 1: layer by layer, state by state).
    """
    registry = get_registry()
    for spec in plan.models:
        registry.model(split_spec(spec)[0])
    for name in plan.datasets:
        registry.dataset(name)
    for protocol in plan.protocols:
        if protocol not in PROTOCOLS:
            raise MtbenchError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    templates = mode_templates(plan)  # each mode's settings, checked once, not in every cell
    if plan.states != ["all"]:
        for name in plan.states:
            registry.state(name)
    registry.metric(plan.settings.get("metric", "pearson"))
    analyses = {mode: registry.analysis(mode).load() for mode in plan.modes}
    datasets = {name: dataset_info(name, plan.dataset_options.get(name, {})) for name in plan.datasets}
    groups = []
    for spec in plan.models:
        model_options = dict(plan.model_options.get(spec, {}))
        info = model_info(spec, model_options, results_dir)
        states = {mode: analyses[mode].states(templates[mode], info.states) for mode in plan.modes}
        extracted: list[str] = []  # what the group's cells read, in the canonical order per mode
        for mode in plan.modes:
            extracted += [s for s in parse_states(states[mode], info.states) if s not in extracted]
        layers = parse_layers(plan.layers, info.n_layers)
        for name, data in datasets.items():
            dataset_options = dict(plan.dataset_options.get(name, {}))
            subjects = data.subjects if plan.subjects == ["all"] else plan.subjects
            missing = [s for s in subjects if s not in data.subjects]
            if missing:
                raise MtbenchError(f"subject {missing[0]!r} is not in dataset {name} "
                                   f"(it has {', '.join(data.subjects[:5])}...); fix `subjects`")
            group_name = (f"{model_slug(spec)}-{slug(name)}-"
                          f"{digest([spec, model_options, name, dataset_options, extracted, layers])[:10]}")
            group = Group(group_name, spec, name, model_options, dataset_options, extracted, layers, info, data)
            for subject in subjects:
                for protocol in plan.protocols:
                    base = RunSettings(model=spec, dataset=name, states=[], subject=subject, protocol=protocol,
                                       dataset_options=dataset_options, model_options=model_options, **plan.settings)
                    for mode in plan.modes:
                        cells = analyses[mode].sweep_cells(replace(base, mode=mode), states[mode], layers,
                                                           options_of(plan, mode))
                        group.cells += [make_cell(settings, group_name) for settings in cells]
            groups.append(group)
    return groups


def options_of(plan: Plan, mode) -> dict:
    """The settings the plan gives the cells of ``mode`` (its analysis's table, e.g. ``[mode2]``)."""
    table = get_registry().analysis(mode).plan_table
    return dict(plan.analysis_options.get(table, {})) if table else {}


def mode_templates(plan: Plan) -> dict:
    """Per mode, the settings every cell of that mode shares, checked (:meth:`mtbench.api.Analysis.check`).

    Raises a one-line error for a table of an analysis that is not among the modes, states
    given to modes that do not take them, and any setting an analysis refuses.
    """
    registry = get_registry()
    entries = {mode: registry.analysis(mode) for mode in plan.modes}
    for table in plan.analysis_options:
        owner = next(e for e in registry.entries["analysis"].values() if e.plan_table == table)
        if owner.name not in {e.name for e in entries.values()}:
            flags = ", ".join(f"--{option.field}" for option in owner.options)
            raise MtbenchError(f"plan [{table}] (or {flags}) is for Mode {owner.name} cells: add {owner.name} to "
                               f"`modes` (--mode {owner.name})")
    analyses = {mode: entry.load() for mode, entry in entries.items()}
    if plan.states != ["all"] and not any(a.takes_states for a in analyses.values()):
        takers = [e.name for e in registry.entries["analysis"].values() if e.load().takes_states]
        raise MtbenchError(f"`states` are for Mode {', '.join(takers)} cells; with `modes = {list(plan.modes)}` the "
                           f"[{'], ['.join(e.plan_table for e in entries.values() if e.plan_table)}] settings are "
                           "fitted")
    RunSettings(model="", dataset="", states=["all"], **plan.settings).check()  # once, not in every cell
    templates = {}
    for mode, analysis in analyses.items():
        template = RunSettings(model="", dataset="", states=plan.states if analysis.takes_states else ["all"],
                               mode=mode, **plan.settings, **options_of(plan, mode))
        template.check()
        analysis.check(template)  # no inputs, an unknown state...: one line, before any model loads
        templates[mode] = template
    return templates
