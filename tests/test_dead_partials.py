"""A ``.partial`` run folder left by a writer killed while writing (issue 32, item 9: kill -9 while the
results were written left a 5.5 MB ``.partial`` for good unless the same id was run again) is reported
by the leaderboard and removed by the next run written into the same results folder."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
from test_results import make_inputs

from mtbench import results
from mtbench.paths import exclusive_lock
from mtbench.results import STALE_PARTIAL_SECONDS, write_run
from mtbench_plugins.analyses.mode1.analysis import Mode1Result
from mtbench_plugins.commands.board.leaderboard import find_run_folders


class _StuckWhileWriting:
    """A run whose writing stops half-way (a file written, the rest never): to be killed there."""

    def __init__(self, result):
        self.result = result

    def write_files(self, partial, meta, mask_img, truth):
        (partial / "scores.parquet").write_bytes(b"half of the results")
        time.sleep(120)


def _write_and_hang(results_dir: str) -> None:
    meta, table, mask_img, labels = make_inputs(np.random.default_rng(1))
    write_run(Path(results_dir), "killed", meta, _StuckWhileWriting(Mode1Result(table, labels, {1: "a"}, None, 0.05)),
              mask_img, None)


def _age(folder: Path, seconds: float) -> None:
    """Make everything in ``folder`` look untouched for ``seconds``."""
    then = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then), follow_symlinks=False)


def _write(results_dir: Path, run_id: str) -> Path:
    meta, table, mask_img, labels = make_inputs(np.random.default_rng(2))
    return write_run(results_dir, run_id, dict(meta, run_id=run_id), Mode1Result(table, labels, {1: "a"}, None, 0.05),
                     mask_img, None)


def test_a_run_killed_while_writing_is_reported_then_removed_by_the_next_run(tmp_path, capfd):
    writer = multiprocessing.get_context("spawn").Process(target=_write_and_hang, args=(str(tmp_path),))
    writer.start()
    partial = tmp_path / "runs" / "killed.partial"
    deadline = time.monotonic() + 60
    while not (partial / "scores.parquet").exists():
        assert time.monotonic() < deadline and writer.is_alive(), "the writer never started writing"
        time.sleep(0.05)
    # while it writes, nothing touches its folder, however old it looks
    _age(partial, 2 * STALE_PARTIAL_SECONDS)
    _write(tmp_path, "beside-a-live-one")
    assert (partial / "scores.parquet").exists()
    os.kill(writer.pid, signal.SIGKILL)  # kill -9 while the results are written
    writer.join(timeout=30)
    assert partial.is_dir()

    folders, notes = find_run_folders([tmp_path])  # the leaderboard reports it and skips it
    assert partial.resolve() not in folders and any(str(partial) in note and ".partial" in note for note in notes)

    _age(partial, 0)
    _write(tmp_path, "soon-after")  # just killed: left for now (an older mtbench may still be writing it)
    assert partial.is_dir() and capfd.readouterr().err == ""
    _age(partial, STALE_PARTIAL_SECONDS + 1)
    _write(tmp_path, "later")
    assert not partial.exists()
    assert capfd.readouterr().err.splitlines() == [
        f"note: removed {partial}: the unfinished results of a run whose writer (process {writer.pid} on "
        f"{socket.gethostname()} (killed)) died; run its command again to redo it (its finished fits, if kept, are "
        "reused)"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["beside-a-live-one", "later", "soon-after"]


def test_looking_at_a_partial_does_not_change_it(tmp_path):
    """The leaderboard's look at a dead ``.partial`` leaves its lock file (naming the dead writer) as it was."""
    partial = tmp_path / "runs" / "r1.partial"
    partial.mkdir(parents=True)
    (partial / ".writing").write_text("otherhost 1234 r1\n")
    _age(partial, 1000)
    before = (partial / ".writing").stat().st_mtime
    assert results.partial_writer(partial) is None
    assert (partial / ".writing").read_text() == "otherhost 1234 r1\n"
    assert (partial / ".writing").stat().st_mtime == before
    with exclusive_lock(partial / ".writing", owner="r1"):
        assert results.partial_writer(partial) == f"{socket.gethostname()} {os.getpid()} r1"
