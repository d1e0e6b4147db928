"""Named protocols: sets of run settings fixed together (e.g. the MindTransformer reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np

from .api import RunSettings
from .errors import MtbenchError


# Settings each protocol fixes. "mindtransformer" reproduces the reference protocol: Glover HRF
# on word events, 10 scans trimmed at both ends of each run (then z-scored per run), 16 alphas
# logspace(2, 7), one alpha shared by all voxels chosen on the first remaining run only, refit
# on all training runs, Pearson r on the test run averaged over the outer folds.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "mtbench": {},
    "mindtransformer": {
        "trim_scans": 10,
        "alphas": np.logspace(2, 7, 16).tolist(),
        "shared_alpha": True,
        "inner": "first",
        "hrf": "glover",
        "precision": "float32",
        "delays": None,
    },
}
# How users set each field on the command line (for error messages).
_FLAGS = {"trim_scans": "--trim", "alphas": "--alphas", "hrf": "--hrf", "precision": "--precision", "delays": "--delays"}


def resolve_protocol(settings: RunSettings, explicit: Sequence[str] = ()) -> RunSettings:
    """The effective settings of ``settings.protocol`` (a new object; ``settings`` is unchanged).

    A protocol sets the fields it fixes. A field may be left at its ``RunSettings`` default
    or set to the protocol's own value; any other value conflicts and raises, as does any
    field named in ``explicit`` (fields the user gave on purpose, e.g. ``--trim 0``) whose
    value differs from the protocol's.

    Raises
    ------
    MtbenchError
        Unknown protocol, or a setting that conflicts with it.
    """
    fixed = PROTOCOLS.get(settings.protocol)
    if fixed is None:
        raise MtbenchError(f"unknown protocol {settings.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    defaults = {f.name: (f.default_factory() if callable(f.default_factory) else f.default)
                for f in fields(RunSettings)}
    for name, wanted in fixed.items():
        value = getattr(settings, name)
        if _same(value, wanted) or (name not in explicit and _same(value, defaults[name])):
            continue
        flag = _FLAGS.get(name, name)
        raise MtbenchError(f"--protocol {settings.protocol} sets {name}={_show(wanted)}, which conflicts with "
                           f"{flag} {_show(value)}; drop {flag} or use --protocol mtbench")
    return replace(settings, **fixed)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=0))
    return a == b


def _show(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 3:
        return f"[{value[0]:g}..{value[-1]:g}] ({len(value)} values)"
    return str(value)
