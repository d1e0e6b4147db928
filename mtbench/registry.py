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
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .api import HOOK_ENTRIES, DatasetEntry, ExecutorEntry, MetricEntry, ModelEntry, StateDefinition
from .errors import MtbenchError, unknown_name_error

ENTRY_POINT_GROUP = "mtbench"

_KINDS = HOOK_ENTRIES


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

    def state(self, name: str) -> StateDefinition:
        return self.get("state", name)

    def executor(self, name: str) -> ExecutorEntry:
        return self.get("executor", name)


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
        if hook_name not in _KINDS and not hook_name.startswith("_"):
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


def load_model(spec: str, **options):
    """Load a model adapter from ``NAME`` or ``NAME:ARGUMENT`` (ARGUMENT goes to ``load(argument=...)``)."""
    name, argument = split_spec(spec)
    entry = get_registry().model(name)
    if argument is not None:
        options["argument"] = argument
    return entry.load(**options)


def load_dataset(name: str, **options):
    """Load a dataset by registered name."""
    return get_registry().dataset(name).load(**options)
