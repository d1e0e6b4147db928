"""What the commands show on the terminal: progress bars that appear with their first task, the shared
console, and the planted-truth table every analysis prints."""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .registry import get_registry


class ShownProgress(Progress):
    """A :class:`rich.progress.Progress` that appears with its first task.

    Entering it shows nothing yet, so a command that fails before any work (a layer out of
    range, a missing file) prints its one-line error and nothing else; a plain ``Progress``
    leaves an empty line above the error.
    """

    def start(self) -> None:
        """Nothing yet: the display starts with the first task (``with progress:`` calls this)."""

    def add_task(self, *args, **kwargs):
        if not self.live.is_started:
            super().start()
        return super().add_task(*args, **kwargs)

    def stop(self) -> None:
        """Stop a display that was shown (rich ends even an unshown one with a newline when not on a terminal)."""
        if self.live.is_started:
            super().stop()


def progress_bars(console, download: bool = False) -> ShownProgress:
    """Task, bar and count (``download``: bytes, speed, time left) on ``console``."""
    columns = ((DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()) if download
               else (MofNCompleteColumn(), TimeElapsedColumn()))
    return ShownProgress(TextColumn("{task.description}"), BarColumn(), *columns, console=console)


#: Columns of :data:`console` when its output is not a terminal: no screen to fit, so tables print whole.
LOG_WIDTH = 500


class WholeConsole(Console):
    """A rich Console that prints tables whole off a terminal (Slurm logs, CI, ``| tee``), where rich would
    cut them to 80 columns ("Fron… Oper…"); on a terminal, or with ``COLUMNS`` set, rich's own width."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
            return ConsoleDimensions(LOG_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


#: The terminal every command prints on (progress, tables, notes).
console = WholeConsole()


def print_truth_check(output, title: str, score_label: str, out: Console | None = None) -> None:
    """The planted-truth table of a simulated dataset (if any), then where the results are.

    Parameters
    ----------
    output : mtbench.runner.RunOutput
    title, score_label : str
        The table's title and the header of its score column.
    out : rich.console.Console, optional
        Default :data:`console`.
    """
    out = out if out is not None else console
    if output.truth_check:
        check = Table(title=title)
        for col in ("parcel", "planted", "found", score_label, "ok"):
            check.add_column(col)
        for row in output.truth_check:
            check.add_row(row["parcel"], row["planted"], row["found"], f"{row['test']:.3f}",
                          "[green]yes[/green]" if row["recovered"] else "[red]no[/red]")
        out.print(check)
    out.print(f"results: {output.run_dir}  ({output.seconds:.0f} s)")


def print_run(output, out: Console | None = None) -> None:
    """A finished run's summary (:class:`mtbench.runner.RunOutput`), as its analysis shows it."""
    get_registry().analysis(output.mode).load().print_summary(output, out if out is not None else console)
