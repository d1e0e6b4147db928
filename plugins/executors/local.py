"""The ``local`` executor: a pool of worker processes on this machine.

Workers are sized to the CPUs this process may use (each task says how many it needs) and a
memory guard starts a task only when its estimated memory fits next to the running ones
(and in what the system reports available); a lone task always starts.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from mtbench.errors import MtbenchError
from mtbench.memory import available_bytes, usable_cpus


def available_memory_gb() -> float:
    """Memory this process can still use, in GB (:func:`mtbench.memory.available_bytes`; infinite where unknown)."""
    return available_bytes() / 1e9


class LocalExecutor:
    """Run sweep tasks in a process pool.

    Parameters
    ----------
    workers : int, optional
        Pool size; default: usable CPUs // the CPUs a task asks for. 0: no pool, tasks run one
        after the other in this process (debugging, tiny sweeps: no start-up per worker).
    memory_fraction : float
        Share of the memory available at start that running tasks may claim together.
    poll_seconds : float
        How often ``poll`` is called while waiting.
    """

    def __init__(self, workers: int | None = None, memory_fraction: float = 0.8, poll_seconds: float = 1.0):
        if workers is not None and int(workers) < 0:
            raise MtbenchError(f"executor local: workers={workers} must be 0 (in this process) or more")
        if not 0 < float(memory_fraction) <= 1:
            raise MtbenchError(f"executor local: memory_fraction={memory_fraction} must be in (0, 1]")
        self.workers = int(workers) if workers is not None else None
        self.memory_fraction, self.poll_seconds = float(memory_fraction), float(poll_seconds)

    def run(self, tasks: Sequence[Callable[[], str]], poll: Callable[[], None]) -> list[str]:
        if not tasks:
            return []
        if self.workers == 0:
            return self._run_here(tasks, poll)
        cpus_per_task = max(t.resources.cpus for t in tasks)
        workers = self.workers if self.workers is not None else max(1, usable_cpus() // cpus_per_task)
        budget = available_memory_gb() * self.memory_fraction
        statuses: list[str | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        running: dict = {}  # future -> task index
        # spawn, not fork: the parent may hold torch/OpenMP threads that a fork would copy broken
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        try:
            while pending or running:
                claimed = sum(tasks[i].resources.mem_gb for i in running.values())
                while pending and len(running) < workers:
                    need = tasks[pending[0]].resources.mem_gb
                    if running and (claimed + need > budget or need > available_memory_gb()):
                        break  # memory guard: wait for a running task to finish
                    index = pending.popleft()
                    running[pool.submit(tasks[index])] = index
                    claimed += need
                finished, _ = wait(running, timeout=self.poll_seconds, return_when=FIRST_COMPLETED)
                broken = False
                for future in finished:
                    index = running.pop(future)
                    try:
                        statuses[index] = future.result()
                    except BrokenProcessPool:
                        statuses[index] = "lost: worker process died (out of memory or killed)"
                        broken = True
                    except Exception as exc:  # the task's own errors are logged by the task
                        statuses[index] = f"lost: {type(exc).__name__}: {exc}"
                if broken:  # a dead worker breaks the pool: the others' tasks are lost too
                    for future, index in running.items():
                        statuses[index] = "lost: worker pool broke"
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
                poll()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [s or "lost: not run" for s in statuses]

    @staticmethod
    def _run_here(tasks: Sequence[Callable[[], str]], poll: Callable[[], None]) -> list[str]:
        statuses = []
        for task in tasks:
            try:
                statuses.append(task())
            except Exception as exc:  # the task's own errors are logged by the task
                statuses.append(f"lost: {type(exc).__name__}: {exc}")
            poll()
        return statuses
