"""Plugin discovery and lookup.

Every plugin, built-in or third-party, is a module named in the ``mtbench`` entry-point
group. The registry imports each one, registers it with pluggy, calls the ``register_*``
hooks and indexes the entries by name. A plugin that fails to import (or returns
something that is not an entry) is recorded as broken and skipped; the error surfaces
only if a run needs one of its names.

Environment
-----------
MTBENCH_LOAD_PLUGINS
    Comma-separated entry-point names to load; all others are ignored. Set to an empty
    string to load none.
MTBENCH_BLOCK_PLUGINS
    Comma-separated entry-point names never to load.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pluggy

from . import hookspecs
from .api import (
    HOOK_ENTRIES,
    AnalysisEntry,
    DatasetEntry,
    ExecutorEntry,
    MetricEntry,
    ModelEntry,
    StateDefinition,
)
from .errors import MtbenchError, unknown_name_error
from .settings import mode_value

ENTRY_POINT_GROUP = "mtbench"

_KINDS = HOOK_ENTRIES
_OTHER_HOOKS = ("register_commands",)  # hooks that take an argument instead of returning entries


@dataclass
class PluginInfo:
    """One entry point of the ``mtbench`` group and what became of it."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registry:
    """Everything the loaded plugins registered, indexed by name."""

    plugins: list[PluginInfo]
    entries: dict[str, dict[str, Any]]  # kind -> name -> entry
    providers: dict[str, dict[str, str]]  # kind -> name -> plugin name
    manager: pluggy.PluginManager

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted (states in canonical order)."""
        if kind == "state":
            return [s.name for s in sorted(self.entries["state"].values(), key=lambda s: s.order)]
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Any:
        """The entry called ``name``, or a one-line error naming the closest ones."""
        try:
            return self.entries[kind][name]
        except KeyError:
            broken = [p for p in self.plugins if p.error]
            err = unknown_name_error(kind, name, self.entries[kind])
            if broken:
                names = ", ".join(f"{p.name} ({p.distribution})" for p in broken)
                err = MtbenchError(f"{err} — note: plugins that failed to load: {names}; see `mtbench plugins`")
            raise err from None

    def model(self, name: str) -> ModelEntry:
        return self.get("model", name)

    def dataset(self, name: str) -> DatasetEntry:
        return self.get("dataset", name)

    def metric(self, name: str) -> MetricEntry:
        return self.get("metric", name)

    def guarded_metric(self, name: str) -> MetricEntry:
        """The metric ``name`` as runs call it: an exception its score raises is one line naming its plugin."""
        entry = self.get("metric", name)
        who, dist = self.provided_by("metric", name)
        return replace(entry, score=PluginCall(entry.score, f"metric {name!r}{who} failed",
                                               f"fix or uninstall {dist}, or use another --metric"))

    def state(self, name: str) -> StateDefinition:
        return self.get("state", name)

    def provided_by(self, kind: str, name: str) -> tuple[str, str]:
        """Who registered ``name`` of ``kind``, for error lines: `` (plugin P, distribution D V)`` and ``D``."""
        plugin = self.providers.get(kind, {}).get(name)
        info = next((i for i in self.plugins if i.name == plugin), PluginInfo(str(plugin), "?", "?", "?"))
        return f" (plugin {info.name}, distribution {info.distribution} {info.version})", info.distribution

    def executor(self, name: str) -> ExecutorEntry:
        return self.get("executor", name)

    def analysis(self, mode) -> AnalysisEntry:
        """The analysis a run's ``settings.mode`` names (None: the default one)."""
        if mode is None:
            return self.default_analysis()
        return self.get("analysis", str(mode))

    def default_analysis(self) -> AnalysisEntry:
        """The analysis of a run that names none (the entry registered with ``default=True``)."""
        defaults = [entry for entry in self.entries["analysis"].values() if entry.default]
        if not defaults:
            known = ", ".join(self.names("analysis")) or "none"
            raise MtbenchError(f"no analysis is registered as the default (analyses: {known}); give --mode NAME, "
                               "or check `mtbench plugins` for one that failed to load")
        return defaults[0]

    def mode_of(self, settings):
        """``settings`` with ``mode`` set to the analysis it names (the default one when None)."""
        if settings.mode is not None:
            return settings
        return replace(settings, mode=mode_value(self.default_analysis().name))

    def check_run(self, settings) -> tuple[AnalysisEntry, MetricEntry]:
        """Every name a run uses, resolved: its analysis, model, dataset, states and metric.

        Also refuses a setting that only another analysis reads (``--inputs`` without the mode
        that combines them). Raises a one-line :class:`MtbenchError` naming the first problem. The
        metric is :meth:`guarded_metric`.

        Returns
        -------
        (AnalysisEntry, MetricEntry)
        """
        entry = self.analysis(settings.mode)
        _check_options(settings, entry, self.entries["analysis"].values())
        self.model(split_spec(settings.model)[0])
        self.dataset(settings.dataset)
        if settings.states != ["all"]:
            for name in settings.states:
                self.state(name)
        return entry, self.guarded_metric(settings.metric)

    def add_commands(self, cli) -> None:
        """Let every plugin add its commands to the click group ``cli`` (``register_commands``).

        A plugin whose hook raises, or that adds a name already taken, is marked failed (its
        other commands stay); the commands already there are never replaced.
        """
        by_name = {info.name: info for info in self.plugins}
        for impl in reversed(self.manager.hook.register_commands.get_hookimpls()):
            info = by_name[impl.plugin_name]
            info.hooks.append("register_commands")
            guarded = _GuardedGroup(cli)
            try:
                impl.function(cli=guarded)
            except Exception as exc:  # a broken plugin must not break unrelated commands
                info.error = f"register_commands: {_one_line(exc)}"
            if guarded.refused:
                info.error = (f"command {guarded.refused[0]!r} is already registered; kept the one there")


def _check_options(settings, entry: AnalysisEntry, analyses) -> None:
    """A setting that only other analyses read, changed from its default, is a forgotten ``--mode``."""
    mine = {option.field for option in entry.options}
    defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
                for f in fields(settings)}
    for other in analyses:
        for option in other.options:
            value = getattr(settings, option.field)
            if option.field in mine or value == defaults[option.field]:
                continue
            flag = f"--{option.field}" + ("" if isinstance(value, list) else f" {value}")
            raise MtbenchError(f"{flag} is for --mode {other.name}; add --mode {other.name}, or in mode {entry.name} "
                               f"{entry.hint or 'drop it'}")


class PluginCall:
    """A plugin's callable whose exceptions (but MtbenchError) become one line naming the plugin, not a traceback
    through mtbench's code deep inside a fit (picklable when the callable is)."""

    def __init__(self, function, what: str, fix: str) -> None:
        self.function, self.what, self.fix = function, what, fix

    def __call__(self, *args, **kwargs):
        try:
            return self.function(*args, **kwargs)
        except MtbenchError:
            raise
        except Exception as exc:
            raise MtbenchError(f"{self.what}: {_one_line(exc)}; {self.fix}") from exc


class _GuardedGroup:
    """What ``register_commands`` receives: the group, refusing a command name that is taken."""

    def __init__(self, group) -> None:
        self._group, self.refused = group, []

    def add_command(self, command, name: str | None = None) -> None:
        name = name or command.name
        if name in self._group.commands:
            self.refused.append(name)
            return
        self._group.add_command(command, name)

    def command(self, *args, **kwargs):
        def decorator(function):
            command = click.command(*args, **kwargs)(function)
            self.add_command(command)
            return command

        return decorator

    def group(self, *args, **kwargs):
        def decorator(function):
            group = click.group(*args, **kwargs)(function)
            self.add_command(group)
            return group

        return decorator


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    # The same distribution can be visible twice (e.g. editable install + source tree).
    unique = {(ep.name, ep.value): ep for ep in eps}
    return sorted(unique.values(), key=lambda ep: ep.name)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_registry() -> Registry:
    """Import every plugin of the ``mtbench`` group and collect its entries."""
    manager = pluggy.PluginManager("mtbench")
    manager.add_hookspecs(hookspecs)
    only = _env_list("MTBENCH_LOAD_PLUGINS")
    blocked = _env_list("MTBENCH_BLOCK_PLUGINS") or set()

    plugins: list[PluginInfo] = []
    entries: dict[str, dict[str, Any]] = {kind: {} for _, kind in _KINDS.values()}
    providers: dict[str, dict[str, str]] = {kind: {} for _, kind in _KINDS.values()}
    by_name: dict[str, PluginInfo] = {}
    for ep in _entry_points():
        if ep.name in blocked or (only is not None and ep.name not in only):
            continue
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
        )
        plugins.append(info)
        by_name[ep.name] = info
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not break unrelated commands
            info.error = _one_line(exc)
    for hook_name in manager.hook.__dict__:
        if hook_name not in _KINDS and hook_name not in _OTHER_HOOKS and not hook_name.startswith("_"):
            # implemented but never specified: a typo or a hook from a newer mtbench
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                by_name[impl.plugin_name].error = f"implements unknown hook {hook_name!r}"

    for hook_name, (entry_type, kind) in _KINDS.items():
        # pluggy calls the last registered first; reverse for entry-point (alphabetical) order
        for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
            info = by_name[impl.plugin_name]
            info.hooks.append(hook_name)
            try:
                returned = list(impl.function() or [])
                bad = [r for r in returned if not isinstance(r, entry_type)]
                if bad:
                    raise TypeError(f"returned {type(bad[0]).__name__}, expected {entry_type.__name__}")
            except Exception as exc:
                info.error = f"{hook_name}: {_one_line(exc)}"
                continue
            for entry in returned:
                previous = providers[kind].get(entry.name)
                if previous is not None:
                    info.error = f"{kind} {entry.name!r} is already registered by plugin {previous!r}; kept that one"
                    continue
                entries[kind][entry.name] = entry
                providers[kind][entry.name] = impl.plugin_name
    return Registry(plugins=plugins, entries=entries, providers=providers, manager=manager)


_REGISTRY: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = load_registry()
    return _REGISTRY


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"hf:/path/to/model"`` -> ``("hf", "/path/to/model")``; ``"smollm2-135m"`` -> (name, None)."""
    name, sep, argument = spec.partition(":")
    return name, (argument if sep else None)


def slug(text: str) -> str:
    """``text`` as a part of a file name: runs of other characters than letters, digits and dots become ``-``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def model_slug(spec: str) -> str:
    """A model spec as a part of a file name: ``hf:/path/to/folder`` -> ``hf-folder``; ``smollm2-135m`` unchanged."""
    name, argument = split_spec(spec)
    if argument:
        name = f"{name}-{Path(argument).name or argument}"
    return slug(name)


def load_model(spec: str, **options):
    """Load a model adapter from ``NAME`` or ``NAME:ARGUMENT`` (ARGUMENT goes to ``load(argument=...)``)."""
    name, argument = split_spec(spec)
    registry = get_registry()
    entry = registry.model(name)
    if argument is not None:
        options["argument"] = argument
    return _load(registry, "model", name, entry.load, options)


def load_dataset(name: str, **options):
    """Load a dataset by registered name."""
    registry = get_registry()
    return _load(registry, "dataset", name, registry.dataset(name).load, options)


def _load(registry: Registry, kind: str, name: str, load, options: dict):
    """``load(**options)``; a plugin that cannot import what it needs is one line naming it and its distribution."""
    try:
        return load(**options)
    except ImportError as exc:
        who, dist = registry.provided_by(kind, name)
        raise MtbenchError(f"{kind} {name!r}{who} cannot be loaded: {_one_line(exc)}; install what it needs "
                           f"(`pip install` the missing package) or uninstall {dist}") from exc
