"""Progress bars of the commands that fit or download (imported by those commands only)."""

from __future__ import annotations

from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


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
