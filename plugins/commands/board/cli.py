"""The ``mtbench leaderboard`` and ``mtbench report`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from mtbench.cli.options import OUT_FOLDER
from mtbench.display import console
from mtbench.errors import MtbenchError
from mtbench.paths import atomic_write_bytes, writable_folder

from .report import write_report


@click.command("leaderboard")
@click.argument("results_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", default="leaderboard", show_default=True, type=OUT_FOLDER,
              help="Folder for leaderboard.parquet, leaderboard.md, index.html and reports/.")
@click.option("--dataset", default=None, help="Only runs on this dataset (default: all).")
@click.option("--subject", default="average", show_default=True,
              help="'average' (group-average subject), 'each' (a row per model and subject) or a subject name.")
@click.option("--parcels", default="all", show_default=True,
              help="'all' or a comma list of parcel names or ids shown next to the whole brain.")
@click.option("--metric", type=click.Choice(["raw", "normalized"]), default="raw", show_default=True,
              help="raw held-out r, or r / noise ceiling (missing where the dataset has no ceiling).")
@click.option("--mode", default=None, help="Only runs of this encoding mode (1 or 2; default: all).")
@click.option("--reports/--no-reports", default=True, show_default=True,
              help="Build each shown run's report (figures) under OUT/reports/ and link rows to it.")
@click.option("--strict", is_flag=True, help="Fail on the first invalid run instead of skipping it.")
def leaderboard_command(results_dirs, out, dataset, subject, parcels, metric, mode, reports, strict):
    """Collect runs under RESULTS_DIRS (default: mtbench-results), validate them, write the leaderboard."""
    from . import leaderboard  # pyarrow, nibabel
    from .scaling import embed, write_scaling  # mtbench.results: pyarrow, nibabel

    unreportable: dict[str, str] = {}  # run id -> why its report could not be drawn (a damaged map)

    def link(run_id: str) -> str:
        relative = f"reports/{run_id}/index.html"
        if run_id in unreportable:
            return ""
        return relative if reports or (out / relative).is_file() else ""

    def build():
        return leaderboard.build(list(results_dirs) or [Path("mtbench-results")], dataset=dataset, subject=subject,
                                 parcels=parcels, metric=metric, mode=mode, strict=strict, report_link=link)

    board = build()
    for note in board.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if reports:
        writable_folder(out)  # one line for the whole board, not per report
        for run in board.runs:
            try:
                write_report(run.path, out / "reports" / run.manifest["run_id"])
            except MtbenchError as exc:  # one run's damaged map costs its report, not the board
                if strict:
                    raise
                unreportable[run.manifest["run_id"]] = str(exc)
                console.print(f"[yellow]note:[/yellow] no report for {run.manifest['run_id']}: {exc}",
                              highlight=False, soft_wrap=True)
        if unreportable:
            board = build()  # again, so that no row links to a report that was not written
    files = leaderboard.write(board, out)
    section = write_scaling(board.rows, out)  # score against size (and training step) when the board has them
    if section:
        page = files["html"].read_text(encoding="utf-8")
        atomic_write_bytes(files["html"], embed(page, section).encode("utf-8"))
    console.print(leaderboard.terminal_table(board))
    console.print(f"wrote {', '.join(str(p) for p in files.values())}", highlight=False, soft_wrap=True)


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", default=None, type=OUT_FOLDER,
              help="Folder for the PNG figures and index.html (default: RUN_DIR/report).")
def report_command(run_dir, out):
    """Figures of one run (layer x state heatmaps, brain maps, winning ratios) as PNG and one HTML page.

    RUN_DIR may also be a folder written by `mtbench compare`: its map of significant differences and its
    parcel table on the same page."""
    page = write_report(run_dir, out)
    console.print(f"wrote {page} and its figures", highlight=False, soft_wrap=True)
