"""``mtbench sweep`` runs a plan: every cell without a valid result, on any executor, then the combined runs.

Extraction runs once per (model, dataset) as its own task before the fitting cells, which
then read the word features from the shared cache (:mod:`mtbench.features`). When all the cells
of a (model, dataset, subject, protocol, mode) are done they are also written as one run
(:mod:`mtbench_plugins.commands.runs.combine`), the run ``mtbench leaderboard`` and
``mtbench report`` show.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.live import Live
from rich.table import Table

from mtbench.errors import MtbenchError, first_line
from mtbench.paths import exclusive_lock, writable_folder
from mtbench.registry import get_registry, model_slug, slug
from mtbench.schema import read_whole_run

from ..runs.combine import combine_runs
from .plan import Cell, Group, Plan, digest, expand
from .resources import (
    cell_cost,
    cell_seconds,
    extract_resources,
    fit_resources,
    layers_per_pass,
    plan_totals,
)
from .tasks import (
    SweepTask,
    cache_env,
    cell_status,
    failure_of,
    plan_cache,
    read_events,
    set_aside,
    sweep_dir,
    task_files,
)


@dataclass
class SweepReport:
    """What a sweep did (or, dry run, would do)."""

    n_cells: int
    status: dict[str, str]  # cell name -> final status
    failed: list[tuple[str, str, Path]]  # (cell, error, log)
    lost: list[str]  # tasks that ended without returning (cancelled, killed)
    extracted: list[str]
    seconds: float
    # combined runs (one per model, dataset, subject, mode whose cells are all done), and why others are not
    combined: list[str] = field(default_factory=list)
    not_combined: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(s == "done" for s in self.status.values())


class _Progress:
    """Live summary of done / running / failed / remaining, read from the results directory."""

    def __init__(self, results_dir: Path, cells: list[Cell], console, already_done: set[str]):
        self.results_dir, self.cells, self.console = results_dir, cells, console
        self.done = set(already_done)
        self.phase, self.start, self.last = "", time.perf_counter(), 0.0
        self.live = None

    def __enter__(self):
        if self.console is not None:
            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.refresh(force=True)
            self.live.__exit__(*exc)

    def counts(self) -> dict[str, int]:
        counts = {"done": len(self.done), "running": 0, "failed": 0, "remaining": 0}
        for cell in self.cells:
            if cell.name in self.done:
                continue
            events = read_events(task_files(self.results_dir, "fit", cell.name)["events"])
            last = events[-1]["event"] if events else None
            if last == "done":
                self.done.add(cell.name)
                counts["done"] += 1
            else:
                counts[{"start": "running", "failed": "failed"}.get(last, "remaining")] += 1
        return counts

    def render(self):
        counts = self.counts()
        table = Table(title=f"mtbench sweep — {self.phase}", show_header=True)
        for name in ("done", "running", "failed", "remaining", "elapsed"):
            table.add_column(name, justify="right")
        table.add_row(*(str(counts[k]) for k in ("done", "running", "failed", "remaining")),
                      f"{time.perf_counter() - self.start:.0f} s")
        return table

    def refresh(self, force: bool = False) -> None:
        now = time.perf_counter()
        # reading the event logs costs a file per unfinished cell: refresh big sweeps less often
        if self.live is not None and (force or now - self.last > max(1.0, len(self.cells) / 5000)):
            self.last = now
            self.live.update(self.render())



# --------------------------------------------------------------------------- engine
def load_executor(name: str, options: dict):
    """The executor registered as ``name`` (``mtbench plugins --hook register_executors``)."""
    return get_registry().executor(name).load(**options)


def plan_tasks(plan: Plan, results_dir: Path, retry_failed: bool = False):
    """Cells, their status, and the extraction and fit tasks still to run."""
    results_dir = Path(results_dir)
    cache = plan_cache(plan)
    with cache_env(cache):  # datasets may extract while loading (the synthetic one plants features)
        groups = expand(plan, results_dir)
    status = {cell.name: cell_status(results_dir, cell) for g in groups for cell in g.cells}
    extract, fit = [], []
    for group in groups:
        todo = [c for c in group.cells if status[c.name] in ("pending", "interrupted")
                or (retry_failed and status[c.name] == "failed")]
        if not todo:
            continue
        base = replace(todo[0].settings, states=list(group.states), layers=list(group.layers))
        extract.append(SweepTask("extract", group.name, str(results_dir), base, extract_resources(group, plan),
                                 tuple(group.states), tuple(group.layers), cache, group=group.name,
                                 layers_per_pass=layers_per_pass(group, plan)))
        resources = {mode: fit_resources(group, plan, mode) for mode in plan.modes}
        fit += [SweepTask("fit", c.name, str(results_dir), c.settings, resources[c.settings.mode], cache=cache,
                          group=group.name, folds=plan.folds) for c in todo]
    return groups, status, extract, fit


def run_sweep(plan: Plan, results_dir: Path, retry_failed: bool = False, console=None) -> SweepReport:
    """Run every cell that has no valid result yet; see the module docstring.

    Parameters
    ----------
    plan : Plan
    results_dir : Path
    retry_failed : bool
        Also run the cells whose last attempt failed (they are only reported otherwise).
    console : rich.console.Console, optional
        Shows the live progress summary.
    """
    start = time.perf_counter()
    results_dir = writable_folder(results_dir)  # before any job starts, not in each of them
    executor = load_executor(plan.executor, plan.executor_options)
    groups, status, extract, fit = plan_tasks(plan, results_dir, retry_failed)
    cells = [c for g in groups for c in g.cells]
    lost: list[str] = []
    extracted: list[str] = []
    with _Progress(results_dir, cells, console, {n for n, s in status.items() if s == "done"}) as progress:
        if extract:
            progress.phase = f"extracting {len(extract)} model x dataset"
            results = executor.run(extract, progress.refresh)
            busy = [replace(t, wait_for_lock=True) for t, r in zip(extract, results) if r == "busy"]
            if busy:  # another sweep is extracting the same model: wait for it rather than redo it
                executor.run(busy, progress.refresh)
            extracted = [t.name for t, r in zip(extract, results) if r == "done"]
            unfinished = {t.name: r for t, r in zip(extract, results) if r not in ("done", "skipped", "busy")}
            lost += [_extract_problem(results_dir, name, r) for name, r in unfinished.items()]
            # without their features, fits would each run the model: leave them to the next sweep
            fit = [t for t in fit if t.group not in unfinished]
        progress.phase = f"fitting {len(fit)} cells"
        results = executor.run(fit, progress.refresh) if fit else []
        lost += [f"{t.name}: {r}" for t, r in zip(fit, results) if r.startswith("lost")]
        # cells another sweep was computing: wait for its lock, then skip (or redo if it failed)
        busy = [replace(t, wait_for_lock=True) for t, r in zip(fit, results) if r == "busy"]
        if busy:
            progress.phase = f"waiting for {len(busy)} cells another sweep is computing"
            executor.run(busy, progress.refresh)
    final = {cell.name: cell_status(results_dir, cell) for cell in cells}
    failed = [(c.name, *failure_of(results_dir, c)) for c in cells if final[c.name] == "failed"]
    combined, not_combined = [], []
    if plan.combine:
        with cache_env(plan_cache(plan)):
            for name, members in combinations(groups).items():
                missing = sum(final[c.name] != "done" for c in members)
                if missing:
                    not_combined.append(f"{name}: {missing} of its {len(members)} cells not done")
                elif not plan.folds and get_registry().analysis(members[0].settings.mode).load().folds_optional:
                    not_combined.append(f"{name}: its cells were written without folds.parquet (folds = false)")
                else:
                    try:  # the cells are kept whatever happens here; the next sweep tries again
                        combined.append(combine_cells(results_dir, name, members))
                    except (MtbenchError, OSError) as exc:
                        not_combined.append(f"{name}: {first_line(exc)}")
    return SweepReport(n_cells=len(cells), status=final, failed=failed, lost=lost, extracted=extracted,
                       seconds=time.perf_counter() - start, combined=combined, not_combined=not_combined)


def combinations(groups: list[Group]) -> dict[str, list[Cell]]:
    """The cells of each (model, dataset, subject, protocol, mode), by the name of the run that combines them.

    The name ends with a hash of the cells' hashes: another plan (more layers, other settings)
    names another combined run, and the same plan the same one.
    """
    by_key: dict[tuple, list[Cell]] = {}
    for group in groups:
        for cell in group.cells:
            s = cell.settings
            by_key.setdefault((group.name, s.subject, s.protocol, s.mode), []).append(cell)
    named = {}
    for members in by_key.values():
        s = members[0].settings
        tag = get_registry().analysis(s.mode).load().tag
        name = "-".join([model_slug(s.model), slug(s.dataset), slug(s.subject), "combined",
                         *([tag] if tag else []), slug(s.protocol), digest(sorted(c.hash for c in members))[:10]])
        named[name] = members
    return named


def combined_is_valid(results_dir: Path, name: str, members: list[Cell]) -> bool:
    """True when ``runs/<name>/`` is an undamaged combination of exactly these cells."""
    try:
        manifest = read_whole_run(Path(results_dir) / "runs" / name).manifest
    except Exception:  # missing or damaged: combined again
        return False
    return manifest.get("run_id") == name and sorted(manifest.get("combined_from") or []) == sorted(
        c.name for c in members)


def combine_cells(results_dir: Path, name: str, members: list[Cell]) -> str:
    """Write (or keep) the run combining ``members`` (all done); returns its name.

    Under a lock, so that two sweeps finishing together write it once; a damaged or stale
    folder of that name is set aside first, like a cell's.
    """
    with exclusive_lock(sweep_dir(results_dir, "combined") / f"{name}.lock"):
        if not combined_is_valid(results_dir, name, members):
            set_aside(results_dir, name)
            combine_runs([Path(results_dir) / "runs" / c.name for c in members], results_dir, name)
    return name


def _extract_problem(results_dir: Path, name: str, status: str) -> str:
    """One line on an extraction that did not finish, with its log when it failed."""
    if status != "failed":
        return f"extract {name}: {status}"
    files = task_files(results_dir, "extract", name)
    failed = [e for e in read_events(files["events"]) if e["event"] == "failed"]
    error = failed[-1].get("error", "?") if failed else "?"
    return f"extract {name} failed: {error}  log: {files['log']} (its cells were not started)"


def describe_plan(plan: Plan, results_dir: Path, retry_failed: bool = False) -> dict:
    """The dry run: counts, what is done, resources and a rough cost, without running anything."""
    groups, status, extract, fit = plan_tasks(plan, results_dir, retry_failed)
    rows = []
    for group in groups:
        names = [c.name for c in group.cells]
        widest = max(plan.modes, key=lambda mode: cell_cost(plan, mode)[0] * cell_cost(plan, mode)[1])
        res_fit, res_ext = fit_resources(group, plan, widest), extract_resources(group, plan)
        todo = [t for t in fit if t.settings.model == group.model and t.settings.dataset == group.dataset
                and t.name in names]
        needs_extract = any(t.name == group.name for t in extract)
        estimates = {}  # per mode: seconds of one cell, measured on finished cells where there are some
        for mode in plan.modes:
            measured = _measured_seconds(Path(results_dir), [c.name for c in group.cells if c.settings.mode == mode
                                                             and status[c.name] == "done"])
            estimates[mode] = ((measured, "measured") if measured is not None
                               else (cell_seconds(group, plan, mode), "formula"))
        cpu_hours = (sum(estimates[t.settings.mode][0] * t.resources.cpus for t in todo) / 3600
                     + (res_ext.minutes / 3 * res_ext.cpus / 60 if needs_extract else 0))
        rows.append({
            "model": group.model, "dataset": group.dataset, "cells": len(names),
            "done": sum(status[n] == "done" for n in names), "failed": sum(status[n] == "failed" for n in names),
            "interrupted": sum(status[n] == "interrupted" for n in names), "to_run": len(todo),
            "extract": "needed" if needs_extract else "no", "fit_resources": asdict(res_fit),
            "extract_resources": asdict(res_ext), "cpu_hours": cpu_hours,
            "estimate": "measured" if all(how == "measured" for _, how in estimates.values()) else "formula",
        })
    combos = combinations(groups)
    written = sum(combined_is_valid(results_dir, name, members) for name, members in combos.items())
    return {"n_cells": len(status), "rows": rows, "executor": plan.executor,
            "cells": [c.name for g in groups for c in g.cells], "totals": plan_totals(groups, plan, fit, extract),
            "combined": {"runs": len(combos) if plan.combine else 0, "written": written if plan.combine else 0}}


def _measured_seconds(results_dir: Path, done: list[str], sample: int = 20) -> float | None:
    """Median seconds of finished cells (from their manifests), or None when none is done."""

    seconds = []
    for name in done[:sample]:
        try:
            seconds.append(float(json.loads((results_dir / "runs" / name / "manifest.json").read_text())["seconds"]))
        except (OSError, ValueError, KeyError):
            continue
    return statistics.median(seconds) if seconds else None
