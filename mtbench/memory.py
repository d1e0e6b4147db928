"""How much memory this process can still use, and a one-line refusal of what cannot fit (:func:`check_fits`).

Too large an allocation ends in numpy's ``ArrayMemoryError`` (a traceback) or in the kernel killing
the process without a word; work whose size is known before it starts is estimated first instead.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MtbenchError

# the cgroup of a container or a Slurm job: (limit, usage), v2 then v1
_CGROUP = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
           ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _number(path: str) -> float | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return float(text) if text.isdigit() else None  # "max": no limit


def available_bytes() -> float:
    """``MemAvailable`` (/proc/meminfo), lowered to what is left under the cgroup's limit; inf where unknown."""
    available = float("inf")
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    for limit_file, usage_file in _CGROUP:
        limit, usage = _number(limit_file), _number(usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes a huge number for none
            return min(available, max(limit - usage, 0.0))
    return available


def size_text(n_bytes: float) -> str:
    """``2.4e12`` -> ``"2.4 TB"`` (decimal units)."""
    unit, scale = next(((u, s) for u, s in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
                        if n_bytes >= s), ("B", 1))
    return f"{n_bytes / scale:.3g} {unit}"


def check_fits(needed: float, what: str, fix: str) -> None:
    """A one-line :class:`MtbenchError` when ``needed`` bytes (for ``what``, as the user typed it) exceed
    :func:`available_bytes`; ``fix``: what to do instead."""
    available = available_bytes()
    if needed > available:
        raise MtbenchError(f"{what} needs about {size_text(needed)} of memory, more than the {size_text(available)} "
                           f"this machine has available; {fix}")
