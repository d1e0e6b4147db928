"""The ``mtbench sweep`` command (the plan is :mod:`.plan`, the engine :mod:`.engine`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from mtbench.cli.options import (
    OUT_FOLDER,
    analysis_flags,
    analysis_values,
    key_value_options,
    parse_alphas,
)
from mtbench.cli.signals import sigterm_as_interrupt, stopped_by
from mtbench.display import console
from mtbench.registry import get_registry

from .plan import load_plan


def _per_name(names: tuple[str, ...], options: dict) -> dict:
    """Options given once on the command line apply to every named model or dataset."""
    return {name: dict(options) for name in names} if options else {}


@click.command("sweep")
@click.argument("plan_file", required=False, type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, help="Model (repeatable); replaces the plan's `models`.")
@click.option("--states", default=None, help="'all' or a comma list of state names.")
@click.option("--layers", default=None, help="'all', '4' or '1-5,8' (1-based blocks).")
@click.option("--dataset", "datasets", multiple=True, help="Dataset (repeatable).")
@click.option("--subject", "subjects", multiple=True, help="Subject (repeatable) or 'all'.")
@click.option("--protocol", "protocols", multiple=True, help="Protocol (repeatable): mtbench, mindtransformer.")
@click.option("--mode", "modes", multiple=True,
              help="Analysis (repeatable; `mtbench list analyses`): e.g. 1, a cell per layer and state; 2, a cell per "
                   "layer fitting --inputs together.")
@analysis_flags
@click.option("--metric", default=None)
@click.option("--alphas", default=None, help="Ridge penalties: 'start:stop:count' or a comma list.")
@click.option("--trim", "trim_scans", type=int, default=None, help="Scans dropped at both ends of each run.")
@click.option("--backend", default=None, help="Ridge backend (torch, torch_cuda, himalaya, himalaya_cuda).")
@click.option("--precision", type=click.Choice(["mixed", "float32"]), default=None)
@click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE",
              help="Applies to every dataset of the sweep.")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Applies to every model of the sweep.")
@click.option("--executor", default=None, help="Where cells run: `mtbench list executors` (default local).")
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE",
              help="e.g. workers=4 (local); partition=gpu, account=..., qos=... (slurm).")
@click.option("--cache", default=None, help="Feature cache shared by all tasks (default $MTBENCH_CACHE).")
@click.option("--out", "results_dir", default="mtbench-results", show_default=True, type=OUT_FOLDER,
              help="Results directory (shared with `mtbench run` and `mtbench leaderboard`).")
@click.option("--folds/--no-folds", default=None,
              help="Write each cell's folds.parquet (default: the plan's `folds`, else yes); "
                   "`mtbench rescore` and --combine need it, no score depends on it.")
@click.option("--combine/--no-combine", default=None,
              help="When all cells of a model, dataset, subject and mode are done, also write them as one run "
                   "(best layer x state per parcel across cells; default: the plan's `combine`, else yes).")
@click.option("--dry-run", is_flag=True, help="Print the plan (cells, what is done, resources, cost); run nothing.")
@click.option("--retry-failed", is_flag=True, help="Also rerun the cells whose last attempt failed.")
def sweep(plan_file, models, states, layers, datasets, subjects, protocols, modes, metric, alphas, trim_scans, backend,
          precision, dataset_options, model_options, executor, executor_options, cache, results_dir, folds, combine,
          dry_run, retry_failed, **analysis_options):
    """Run models x states x layers x datasets x subjects x protocols x modes as resumable cells.

    PLAN_FILE is a TOML file (keys: models, states, layers, datasets, subjects, protocols, modes, [mode2] (an
    analysis's table),
    [settings], [dataset_options.NAME], [model_options."SPEC"], executor, [executor_options], [resources], cache,
    folds, combine); flags override it. Cells with valid results are skipped, so running the same sweep again
    resumes it. When every cell of a (model, dataset, subject, protocol, mode) is done, they are also written as
    one run.
    """
    from .engine import describe_plan, run_sweep  # pyarrow, nibabel (combined runs)

    settings = {key: value for key, value in (("metric", metric), ("trim_scans", trim_scans), ("backend", backend),
                                              ("precision", precision)) if value is not None}
    if alphas is not None:
        settings["alphas"] = parse_alphas(alphas)
    tables: dict[str, dict] = {}  # flags of an analysis's settings go to its plan table (e.g. --inputs: [mode2])
    for name, value in analysis_values(analysis_options).items():
        owner = next(e for e in get_registry().entries["analysis"].values()
                     if e.plan_table and name in {o.field for o in e.options})
        tables.setdefault(owner.plan_table, {})[name] = value
    dataset_opts = key_value_options(dataset_options, "--dataset-option")
    model_opts = key_value_options(model_options, "--model-option")
    plan = load_plan(
        plan_file, models=list(models), states=states, layers=layers, datasets=list(datasets),
        subjects=list(subjects), protocols=list(protocols), modes=list(modes), analysis_options=tables,
        settings=settings, executor=executor,
        executor_options=key_value_options(executor_options, "--executor-option"), cache=cache, folds=folds,
        combine=combine,
    )
    # options given as flags apply to every dataset / model of the (possibly file-given) plan
    for name in plan.datasets:
        plan.dataset_options[name] = {**plan.dataset_options.get(name, {}), **dataset_opts}
    for spec in plan.models:
        plan.model_options[spec] = {**plan.model_options.get(spec, {}), **model_opts}
    for note in plan.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    if dry_run:
        print_plan(describe_plan(plan, results_dir, retry_failed), console)
        return
    try:
        with sigterm_as_interrupt():  # scancel, a time limit: the same line as Ctrl-C
            report = run_sweep(plan, results_dir, retry_failed=retry_failed, console=console)
    except KeyboardInterrupt as exc:
        how, status = stopped_by(exc)
        click.echo(f"Error: sweep {how}; finished cells are kept, run the same command to resume", err=True)
        sys.exit(status)
    print_report(report, console)
    if not report.complete:
        sys.exit(1)


def print_plan(description: dict, console) -> None:
    table = Table(title=f"sweep plan: {description['n_cells']} cells, executor {description['executor']}")
    for col in ("model", "dataset", "cells", "done", "failed", "interrupted", "to run", "extract",
                "extract task (cpus/mem/gpus/min)", "fit task (cpus/mem/gpus/min)", "est. CPU-h"):
        table.add_column(col, justify="left" if col in ("model", "dataset") else "right")
    total = 0.0
    for row in description["rows"]:
        res, ext = row["fit_resources"], row["extract_resources"]
        total += row["cpu_hours"]
        table.add_row(row["model"], row["dataset"], str(row["cells"]), str(row["done"]), str(row["failed"]),
                      str(row["interrupted"]), str(row["to_run"]), row["extract"],
                      f"{ext['cpus']}/{ext['mem_gb']:g}G/{ext['gpus']}/{ext['minutes']}",
                      f"{res['cpus']}/{res['mem_gb']:g}G/{res['gpus']}/{res['minutes']}", f"{row['cpu_hours']:.2f}")
    console.print(table)
    how = {row["estimate"] for row in description["rows"]}
    basis = "median of finished cells" if how == {"measured"} else "rough: from data and model size"
    console.print(f"estimated cost of what is left: {total:.2f} CPU-hours ({basis})")
    totals = description.get("totals")
    if totals is not None:
        print_totals(totals, console)
    combined = description["combined"]
    if combined["runs"]:
        console.print(f"combined runs (each model, dataset, subject, protocol and mode as one run): {combined['runs']}, "
                      f"{combined['written']} already written")


def print_totals(totals, console) -> None:
    """The plan's totals from the architecture (:func:`.resources.plan_totals`) and the partition warnings."""
    console.print(f"planned from the architecture, {totals.cells} fit cells and their extractions: "
                  f"{totals.gpu_hours:,.1f} GPU-hours, {totals.cpu_hours:,.1f} CPU-hours "
                  f"(extraction {totals.extract_hours:,.1f} h, fits {totals.fit_hours:,.1f} h of wall time one after "
                  f"another), feature cache {totals.disk_gb:,.1f} GB")
    for warning in totals.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}", highlight=False, soft_wrap=True)


def print_report(report, console) -> None:
    counts: dict[str, int] = {}
    for status in report.status.values():
        counts[status] = counts.get(status, 0) + 1
    line = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("done", "failed", "interrupted", "pending"))
    console.print(f"sweep: {report.n_cells} cells: {line} ({report.seconds:.0f} s)")
    for name, error, log in report.failed:
        console.print(f"[red]failed[/red] {name}: {error}  log: {log}")
    for lost in report.lost:
        console.print(f"[yellow]lost[/yellow] {lost}")
    for name in report.combined:
        console.print(f"combined: runs/{name} (its cells as one run: `mtbench report`, `mtbench leaderboard`)")
    for reason in report.not_combined:
        console.print(f"not combined yet: {reason}")
    if report.failed:
        console.print("rerun with --retry-failed to retry the failed cells (the others are kept)")
    elif not report.complete:
        console.print("run the same command again to resume")
