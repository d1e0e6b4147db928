"""One error type for everything a user can get wrong.

Every message is a single line that names the problem and the fix; the CLI prints it
without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MtbenchError(Exception):
    """A user-facing error: one line, naming the problem and the fix."""


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> MtbenchError:
    """Build the error for an unknown plugin name, suggesting the closest known names.

    Parameters
    ----------
    kind : str
        What was looked up ("model", "state", "dataset", "metric").
    name : str
        The name the user gave.
    known : iterable of str
        Every registered name of that kind.
    """
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "none is close"
    listing = f"`mtbench list {'analyses' if kind == 'analysis' else kind + 's'}` shows all {len(known)}"
    return MtbenchError(f"unknown {kind} {name!r}: {hint} ({listing})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
