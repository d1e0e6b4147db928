"""What this process may use: memory it can still allocate (with a one-line refusal of what cannot
fit, :func:`check_fits`) and CPUs it may run on (:func:`usable_cpus`).

Too large an allocation ends in numpy's ``ArrayMemoryError`` (a traceback) or in the kernel killing
the process without a word; work whose size is known before it starts is estimated first instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import MtbenchError

# the cgroup of a container or a Slurm job: (limit, usage), v2 then v1
_CGROUP = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
           ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


# a container's CPU quota: "quota period" (v2; "max" for none), then v1's two files (-1 for none)
_CPU_QUOTA_V2 = "/sys/fs/cgroup/cpu.max"
_CPU_QUOTA_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


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


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (a Slurm allocation's cpuset), else all the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_cpus() -> int:
    """CPUs this process can keep busy: its affinity (a Slurm allocation's cpuset), lowered to the
    cgroup's CPU quota rounded up (a container started with ``--cpus 2`` sees every core of the host).

    Thread pools sized by the host's core count under a quota are throttled as a whole: a fit with
    32 threads on a 2-CPU quota runs several times slower than with 2 (``benchmarks/threads.py``).
    """
    cpus, quota, period = affinity_cpus(), None, None
    try:
        fields = Path(_CPU_QUOTA_V2).read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            quota, period = float(fields[0]), float(fields[1])
    except (OSError, ValueError):
        try:
            quota, period = (float(Path(f).read_text()) for f in _CPU_QUOTA_V1)
        except (OSError, ValueError):
            pass
    if quota is not None and period and quota > 0:
        cpus = min(cpus, max(1, math.ceil(quota / period)))
    return max(1, cpus)
