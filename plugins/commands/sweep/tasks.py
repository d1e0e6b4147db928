"""One task of a sweep (a cell's fit, or a group's extraction) and its bookkeeping on disk.

Bookkeeping under ``RESULTS/sweep/`` (the results themselves stay in ``runs/``)::

    cells/<cell>.lock        fcntl lock, held while a process computes the cell
    cells/<cell>.events      append-only JSON lines: start / done / failed (host, pid, job)
    cells/<cell>.log         traceback of the cell's last failure
    extract/<group>.*        the same for the extraction task of a (model, dataset)
    models/<hash>.json       n_layers, states and size of each model (plans expand without it)

A lock is released by the kernel when its process dies (Ctrl-C, ``scancel``, out of
memory), results are written atomically (``<run>.partial`` renamed when complete): two
sweeps on one results directory never compute a cell twice nor corrupt one.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mtbench.api import TaskResources
from mtbench.features import word_features
from mtbench.paths import atomic_write_bytes, exclusive_lock
from mtbench.registry import get_registry, load_dataset, load_model
from mtbench.runner import run
from mtbench.schema import analysis_schema, read_whole_run, run_mode
from mtbench.settings import RunSettings

from .plan import Cell, Plan, digest


def sweep_dir(results_dir: Path, *parts: str) -> Path:
    path = Path(results_dir, "sweep", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class SweepTask:
    """A picklable unit of work for an executor: one cell's fit, or one group's extraction.

    Calling it does the work with its own bookkeeping (lock, events, log) and returns
    ``done``, ``skipped`` (already done, by anyone), ``busy`` (another process holds the lock)
    or ``failed``.
    """

    kind: str  # "extract" or "fit"
    name: str
    results_dir: str
    settings: RunSettings
    resources: TaskResources
    states: tuple[str, ...] = ()  # extract: what the group's cells need
    layers: tuple[int, ...] = ()
    cache: str | None = None
    wait_for_lock: bool = False
    group: str = ""  # the extraction task a fit reads its features from
    layers_per_pass: int = 0  # extract: layers whose features are held in memory at once (0: all)
    folds: bool = True  # fit: write folds.parquet

    def __call__(self) -> str:
        return execute(self)


def task_files(results_dir: Path, kind: str, name: str) -> dict[str, Path]:
    folder = sweep_dir(results_dir, "cells" if kind == "fit" else "extract")
    return {suffix: folder / f"{name}.{suffix}" for suffix in ("lock", "events", "log")}


def _job_id() -> str | None:
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def append_event(path: Path, event: str, **fields) -> None:
    """One JSON line appended in a single write (O_APPEND: concurrent writers never interleave)."""
    record = {"event": event, "time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(),
              "job": _job_id(), **fields}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_events(path: Path) -> list[dict]:
    """Events of a task, oldest first (a torn last line from a killed writer is ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def result_is_valid(results_dir: Path, cell_name: str, settings: RunSettings) -> bool:
    """True when ``runs/<cell>/`` is a complete, undamaged run of these settings.

    Every file is read to its end (:func:`mtbench.schema.read_whole_run`): a cell whose map or
    table was damaged after it finished is not done, it is set aside and fitted again.
    """
    import pyarrow.parquet as pq

    run_dir = Path(results_dir) / "runs" / cell_name
    states = get_registry().analysis(settings.mode).load().states(settings)  # as the run records them
    try:
        manifest = read_whole_run(run_dir).manifest
        recorded = manifest["settings"]
        same = (manifest["run_id"] == cell_name and manifest["model"]["spec"] == settings.model
                and recorded["dataset"] == settings.dataset and recorded["subject"] == settings.subject
                and run_mode(manifest) == str(settings.mode) and recorded["states"] == states
                and recorded["layers"] == list(settings.layers))
        return same and all(pq.read_metadata(run_dir / table).num_rows > 0  # every table of the cell's analysis
                            for table in analysis_schema(str(settings.mode))["parquet"])
    except Exception:  # missing, truncated or foreign: not a valid result of this cell
        return False


def set_aside(results_dir: Path, cell_name: str) -> None:
    """Move an invalid ``runs/<cell>`` (corrupt, foreign) to ``sweep/invalid/``: kept, out of readers' way."""
    run_dir = Path(results_dir) / "runs" / cell_name
    if run_dir.exists():
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        os.replace(run_dir, sweep_dir(results_dir, "invalid") / f"{cell_name}-{stamp}-{os.getpid()}")


_ADAPTERS: dict[str, object] = {}


def _adapter(settings: RunSettings):
    """The model of a cell, loaded once per worker process and reused by its next cells."""
    key = digest([settings.model, settings.model_options])
    if key not in _ADAPTERS:
        _ADAPTERS.clear()  # keep one model in memory at a time
        _ADAPTERS[key] = load_model(settings.model, **settings.model_options)
    return _ADAPTERS[key]


def _limit_threads(cpus: int) -> None:
    """As many compute threads as CPUs granted (and the same count on every executor: same numbers)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(max(1, cpus))


def execute(task: SweepTask) -> str:
    """Run one task where it stands (worker process, cluster job); see :class:`SweepTask`."""
    with cache_env(task.cache):
        return _execute(task)


def plan_cache(plan: Plan) -> str | None:
    """The feature cache of a plan's tasks: its ``cache`` (absolute), else ``MTBENCH_CACHE``."""
    return str(Path(plan.cache).resolve()) if plan.cache else os.environ.get("MTBENCH_CACHE")


@contextmanager
def cache_env(cache: str | None):
    """``MTBENCH_CACHE`` set for one task (restored: tasks may run inside the sweep's process)."""
    before = os.environ.get("MTBENCH_CACHE")
    if cache:
        os.environ["MTBENCH_CACHE"] = cache
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MTBENCH_CACHE", None)
        else:
            os.environ["MTBENCH_CACHE"] = before


def _execute(task: SweepTask) -> str:
    files = task_files(Path(task.results_dir), task.kind, task.name)
    with exclusive_lock(files["lock"], task.wait_for_lock, owner=_job_id() or "") as acquired:
        if not acquired:
            return "busy"
        if task.kind == "fit" and result_is_valid(Path(task.results_dir), task.name, task.settings):
            return "skipped"
        if task.kind == "fit":
            set_aside(Path(task.results_dir), task.name)
        if task.kind == "extract" and any(e["event"] == "done" for e in read_events(files["events"])):
            return "skipped"
        append_event(files["events"], "start")
        start = time.perf_counter()
        try:
            _limit_threads(task.resources.cpus)
            detail = _extract(task) if task.kind == "extract" else _fit(task)
        except Exception as exc:
            atomic_write_bytes(files["log"], traceback.format_exc().encode())
            append_event(files["events"], "failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                         seconds=round(time.perf_counter() - start, 2))
            return "failed"
        append_event(files["events"], "done", seconds=round(time.perf_counter() - start, 2), **detail)
        return "done"


def _extract(task: SweepTask) -> dict:
    adapter = _adapter(task.settings)
    dataset = load_dataset(task.settings.dataset, **task.settings.dataset_options)
    calls = []
    layers, chunk = list(task.layers), task.layers_per_pass or len(task.layers)
    for start in range(0, len(layers), chunk):  # bounded memory: features go to the cache, not kept
        word_features(adapter, dataset.stimulus, list(task.states), layers[start:start + chunk],
                      progress=lambda done, total: calls.append(done))
    return {"ran_model": bool(calls), "revision": adapter.revision, "passes": math.ceil(len(layers) / chunk)}


def _fit(task: SweepTask) -> dict:
    output = run(task.settings, Path(task.results_dir), run_id=task.name, adapter=_adapter(task.settings),
                 folds=task.folds, sweep_cell=True)
    return {"run_dir": output.run_dir.name}



# --------------------------------------------------------------------------- status
def cell_status(results_dir: Path, cell: Cell) -> str:
    """``done``, ``failed``, ``interrupted`` (started, never finished) or ``pending``."""
    if result_is_valid(results_dir, cell.name, cell.settings):
        return "done"
    events = read_events(task_files(results_dir, "fit", cell.name)["events"])
    last = next((e["event"] for e in reversed(events) if e["event"] in ("start", "failed", "done")), None)
    return {"failed": "failed", "start": "interrupted"}.get(last, "pending")


def failure_of(results_dir: Path, cell: Cell) -> tuple[str, Path]:
    """The last error line of a failed cell and its log file."""
    files = task_files(results_dir, "fit", cell.name)
    failed = [e for e in read_events(files["events"]) if e["event"] == "failed"]
    return (failed[-1].get("error", "?") if failed else "?"), files["log"]
