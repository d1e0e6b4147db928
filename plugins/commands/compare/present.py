"""A comparison folder on the terminal: the whole brain and the parcels of the primary result."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .schema import validate_comparison


def print_comparison(folder: Path, console) -> None:
    """The parcels table (the group's with several subjects), most significant first, and where it is."""
    import pyarrow.parquet as pq

    manifest = validate_comparison(folder)
    rows = pq.read_table(Path(folder) / "parcels.parquet").to_pylist()
    primary = "group" if len(manifest["subjects"]) > 1 else manifest["subjects"][0]
    rows = [r for r in rows if r["subject"] == primary]
    fdr, level = manifest["test"]["fdr"], manifest["test"]["level"]
    table = Table(title=f"Δr = {manifest['a']['fit']} ({manifest['a']['model']}) − {manifest['b']['fit']} "
                        f"({manifest['b']['model']}), subject {primary}")
    for column in ("parcel", "voxels", "Δr", f"{level:.0%} interval", "p", "p Holm", "q BH", "voxels q<=" + str(fdr)):
        table.add_column(column, justify="left" if column == "parcel" else "right")
    rows = rows[:1] + sorted(rows[1:], key=lambda r: r["p_value"])
    for r in rows[:21]:
        table.add_row(r["parcel"], str(r["n_voxels"]), f"{r['delta']:+.4f}", f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
                      f"{r['p_value']:.2g}", f"{r['p_holm']:.2g}", f"{r['q_value']:.2g}", f"{r['share_significant']:.1%}")
    console.print(table)
    console.print(f"comparison written to {folder}")
