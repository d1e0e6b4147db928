"""Run functions in separate processes released at the same instant (races between runs)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable


def _after_barrier(function: Callable, index: int, arguments: tuple, start, report) -> None:
    start.wait()
    try:
        report.put((index, function(*arguments)))
    except Exception as exc:  # reported, not lost with the process
        report.put((index, f"{type(exc).__name__}: {exc}"))


def at_once(function: Callable, *argument_tuples: tuple, timeout: float = 120) -> list:
    """``function(*arguments)`` for each tuple, each in its own (spawned) process, started together.

    ``function`` must be importable (module level) and return something picklable. Returns the
    results in the order of ``argument_tuples``; an exception in a process comes back as the
    string ``"Type: message"``.
    """
    context = multiprocessing.get_context("spawn")
    start, report = context.Barrier(len(argument_tuples)), context.Queue()
    workers = [context.Process(target=_after_barrier, args=(function, index, arguments, start, report))
               for index, arguments in enumerate(argument_tuples)]
    for worker in workers:
        worker.start()
    try:
        results = dict(report.get(timeout=timeout) for _ in workers)  # queue.Empty: one hung or died
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():  # hung: never leave it spinning beside the rest of the tests
                worker.kill()
    return [results[index] for index in range(len(argument_tuples))]
