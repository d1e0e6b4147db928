"""A command of the example plugin: ``mtbench rsa-table RUN_DIR``, the CKA and RSA of every (layer, state)
in one parcel of a finished ``--mode rsa`` run."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mtbench.display import console
from mtbench.errors import MtbenchError
from mtbench.schema import validate_run



@click.command("rsa-table")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--parcel", default="whole brain", show_default=True, help="Parcel name (as in the run's tables).")
def rsa_table(run_dir, parcel):
    """CKA and RSA of every (layer, state) in one parcel of a `--mode rsa` run, best first."""
    from .rsa import read_rows  # pyarrow, scipy: when the command runs, not when mtbench starts

    run = validate_run(run_dir)
    if run.mode != "rsa":
        raise MtbenchError(f"{run_dir}: a mode {run.mode} run; rsa-table reads runs of `mtbench run --mode rsa`")
    rows = [r for r in read_rows(run.path / "rsa.parquet") if r["parcel"] == parcel]
    if not rows:
        names = sorted({r["parcel"] for r in read_rows(run.path / "rsa_summary.parquet")})
        raise MtbenchError(f"no parcel named {parcel!r} in {run_dir}; parcels: {', '.join(names)}")
    means: dict[tuple, list] = {}
    for r in rows:
        means.setdefault((r["layer"], r["state"]), []).append((r["cka"], r["rsa"]))
    table = Table(title=f"{parcel}: CKA and RSA per layer x state (mean over runs)")
    for column in ("layer", "state", "CKA", "RSA"):
        table.add_column(column)
    for (layer, state), values in sorted(means.items(), key=lambda kv: -sum(v[0] for v in kv[1])):
        cka, rsa = (sum(v[i] for v in values) / len(values) for i in (0, 1))
        table.add_row(str(layer), state, f"{cka:.3f}", f"{rsa:.3f}")
    console.print(table)
