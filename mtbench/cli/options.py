"""Reading what users type: KEY=VALUE options, alpha grids, delays, analysis names and options.

Shared by every command, built-in or from a plugin (``mtbench.cli.options``).
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, fields
from pathlib import Path

import click
import numpy as np

from ..errors import MtbenchError
from ..registry import get_registry
from ..settings import RunSettings


class OutFolder(click.Path):
    """The type of every ``--out`` (an output folder): a path, never an empty one.

    ``--out ""`` (an unset shell variable, a template left blank) would otherwise mean the
    current folder, and the command would write there and exit 0.
    """

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            flag = param.opts[0] if param is not None and param.opts else "--out"
            default = param.default if param is not None and isinstance(param.default, (str, Path)) else None
            fix = f"give a folder, e.g. {flag} {default}" if default else f"give a folder, or leave {flag} out"
            raise MtbenchError(f"{flag} {value!r} is an empty path, which would write into the current folder; {fix}")
        return super().convert(value, param, ctx)


#: Every ``--out`` option's type (one check for every command, built-in or from a plugin).
OUT_FOLDER = OutFolder()


def key_value_options(pairs: tuple[str, ...], flag: str) -> dict:
    """``("k=v", ...)`` -> dict, numbers parsed; ``"a=1,b=2"`` counts as two pairs."""
    out = {}
    split = []
    for pair in pairs:
        parts = pair.split(",")
        # only when every part is a KEY=VALUE of its own (a value may itself hold commas)
        split += parts if len(parts) > 1 and all(re.match(r"\s*\w[\w-]*=", p) for p in parts) else [pair]
    for pair in split:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MtbenchError(f"{flag} expects KEY=VALUE, got {pair!r}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip().replace("-", "_")] = value
    return out


def parse_delays(spec: str | None) -> list[int] | None:
    """``--delays 1,2,3,4`` -> ``[1, 2, 3, 4]`` (None: not given)."""
    if spec is None:
        return None
    try:
        delays = [int(d) for d in spec.split(",")]
    except ValueError:
        raise MtbenchError(f"cannot read --delays {spec!r}: use a comma list of scans, e.g. 1,2,3,4") from None
    if min(delays) < 0:
        raise MtbenchError(f"--delays {spec!r}: delays are scans after the word, >= 0")
    return delays


def parse_alphas(spec: str) -> list[float]:
    """``start:stop:count`` (log-spaced) or a comma list -> penalties."""
    try:
        if ":" in spec:
            lo, hi, count = spec.split(":")
            ends = [float(lo), float(hi)]
            if int(count) < 1 or min(ends) <= 0:
                raise MtbenchError(f"--alphas {spec!r}: start and stop must be positive and count at least 1, "
                                   "e.g. 1e0:1e8:9")
            values = np.logspace(np.log10(ends[0]), np.log10(ends[1]), int(count)).tolist()
        else:
            values = [float(a) for a in spec.split(",")]
    except ValueError:
        raise MtbenchError(f"cannot read --alphas {spec!r}: use 'start:stop:count' or a comma list") from None
    if not all(math.isfinite(v) and v > 0 for v in values):  # NaN compares False both ways: test each
        raise MtbenchError(f"--alphas {spec!r}: every penalty must be positive and finite")
    return values


def comma_list(text: str | None) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def analysis_flags(command):
    """Add a flag for every run setting an installed analysis reads (``AnalysisEntry.options``) to ``command``.

    Each flag's value arrives under the setting's name; None when not given. A setting whose
    default is a list takes a comma list.
    """
    defaults = _setting_defaults()
    options = {}
    for entry in get_registry().entries["analysis"].values():
        for option in entry.options:
            if option.field in defaults:
                options.setdefault(option.field, option)
    for option in reversed(list(options.values())):  # click lists decorators' options last-applied first
        default = defaults[option.field]
        shown = "" if default in ([], None) else f" (default {default})"
        whole = isinstance(default, int) and not isinstance(default, bool)
        kind = click.Choice(list(option.choices)) if option.choices else click.INT if whole else None
        command = click.option(f"--{option.field.replace('_', '-')}", option.field, type=kind, default=None,
                               help=f"{option.help}{shown}")(command)
    return command


def analysis_values(values: dict) -> dict:
    """The analysis settings among a command's parameters that were given, as :class:`RunSettings` values."""
    defaults = _setting_defaults()
    out = {}
    for entry in get_registry().entries["analysis"].values():
        for option in entry.options:
            value = values.get(option.field)
            if value is not None and option.field in defaults:
                out[option.field] = _option_value(option.field, value, defaults[option.field])
    return out


def _option_value(name: str, value, default):
    """A flag's text as the setting's kind: a comma list, a whole number, or the text."""
    if isinstance(default, list):
        return comma_list(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise MtbenchError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}") from None
    return value


def _setting_defaults() -> dict:
    return {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
            for f in fields(RunSettings)}


def mode_help() -> str:
    """``--mode``'s help: every installed analysis and what it does."""
    registry = get_registry()
    names = registry.names("analysis")
    described = "; ".join(f"{name}: {registry.entries['analysis'][name].summary}" for name in names)
    return f"The analysis ({described or 'none installed'}); `mtbench list analyses`."
