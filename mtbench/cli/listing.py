"""``mtbench list KIND`` and ``mtbench plugins``: what is installed, and where it came from."""

from __future__ import annotations

import click
from rich.table import Table

from ..display import console
from ..errors import MtbenchError
from ..registry import get_registry

KINDS = ("models", "states", "datasets", "metrics", "executors", "analyses")
_SINGULAR = {"analyses": "analysis"}


@click.command("list")
@click.argument("kind", type=click.Choice(KINDS))
def list_cmd(kind):
    """List registered models, states, datasets, metrics, executors or analyses."""
    registry = get_registry()
    singular = _SINGULAR.get(kind, kind[:-1])
    table = Table(title=f"{kind} ({len(registry.entries[singular])})", show_lines=False)
    table.add_column("name", style="bold")
    if kind == "states":
        table.add_column("stage")
    if kind == "models":
        table.add_column("family")
        table.add_column("size", justify="right")
        table.add_column("local")
    table.add_column("description")
    table.add_column("plugin", style="dim")
    for name in registry.names(singular):
        entry = registry.entries[singular][name]
        cells = [name]
        if kind == "states":
            cells.append(entry.stage)
        if kind == "models":
            cells += [entry.family, params_text(getattr(entry, "n_params", 0)), weights_here(entry)]
        summary = getattr(entry, "summary", None) or getattr(entry, "description", "")
        if getattr(entry, "default", False):
            summary += " (default)"
        cells += [summary, registry.providers[singular][name]]
        table.add_row(*cells)
    console.print(table)
    warn_broken(registry)


def params_text(n_params: int) -> str:
    """``1_235_814_400`` -> ``"1.24B"``; ``""`` when unknown (0)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n_params and n_params >= scale:
            return f"{n_params / scale:.3g}{unit}"
    return str(n_params) if n_params else ""


def weights_here(entry) -> str:
    """``yes``/``no``: whether a model's weights are on this machine (``ModelEntry.local``); ``""``: none needed."""
    local = getattr(entry, "local", None)
    if local is None:
        return ""
    try:
        return "yes" if local() else "no"
    except Exception:  # noqa: BLE001 - a plugin's check must not break the listing
        return "?"


@click.command()
@click.option("--hook", default=None, help="Only plugins implementing this hook (e.g. register_models).")
def plugins(hook):
    """Show every loaded plugin, the distribution it came from and what it registers."""
    registry = get_registry()
    known = sorted(registry.manager.hook.__dict__)
    if hook is not None and hook not in known:
        raise MtbenchError(f"unknown hook {hook!r}: hooks are {', '.join(h for h in known if not h.startswith('_'))}")
    table = Table(title="mtbench plugins (entry-point group 'mtbench')")
    for col in ("plugin", "module", "distribution", "hooks", "status"):
        table.add_column(col)
    for info in registry.plugins:
        if hook is not None and hook not in info.hooks:
            continue
        status = f"[red]failed: {info.error}[/red]" if info.error else "[green]ok[/green]"
        table.add_row(info.name, info.module, f"{info.distribution} {info.version}", ", ".join(info.hooks), status)
    console.print(table)


def warn_broken(registry) -> None:
    """One line per plugin that was skipped, and why."""
    for info in registry.plugins:
        if info.error:
            console.print(f"[yellow]warning:[/yellow] plugin {info.name} ({info.distribution}) was skipped: {info.error}")
