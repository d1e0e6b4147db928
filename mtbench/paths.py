"""Where mtbench keeps converted models, extracted features and derived atlases."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """mtbench's cache folder (``$MTBENCH_CACHE``, else ``~/.cache/mtbench``), created on demand.

    Parameters
    ----------
    *parts : str
        Sub-folders to join and create.
    """
    root = Path(os.environ.get("MTBENCH_CACHE") or Path.home() / ".cache" / "mtbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def writable_folder(path: Path, fix: str = "give --out a folder you can write to") -> Path:
    """Create the folder ``path`` (with its parents) and check that files can be written in it.

    Called before any long work, so that an output folder that cannot be written fails at once
    with one line instead of after hours of fitting.

    Parameters
    ----------
    path : Path
    fix : str
        What the user can do about it, the end of the error's line.

    Raises
    ------
    MtbenchError
        When ``path`` cannot be created or written (a file in the way, no permission, a
        read-only or full file system).
    """
    import tempfile

    from .errors import MtbenchError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mtbench-write-test-"):
            pass
    except OSError as exc:
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        in_the_way = existing is not None and not existing.is_dir()
        reason = f"{existing} is a file" if in_the_way else exc.strerror or type(exc).__name__
        raise MtbenchError(f"cannot write to {path} ({reason}); {fix}") from None
    return path


def results_folder_of(run_dir: Path, results_dir: Path | None) -> Path:
    """Where a run derived from ``run_dir`` goes: ``results_dir``, else the results folder ``run_dir`` is in.

    Checked writable (its ``runs/``) before any work. A run folder outside ``RESULTS/runs/`` (a
    copy) has no results folder to guess: the user says where with ``--out``.
    """
    from .errors import MtbenchError

    if results_dir is None:
        runs = Path(run_dir).resolve().parent
        if runs.name != "runs":  # its grandparent is no results folder: do not guess
            raise MtbenchError(f"{run_dir} is not in a results folder (RESULTS/runs/<id>); say where the new run "
                               "goes with --out RESULTS")
        results_dir, fix = runs.parent, "give --out a results folder you can write to"
    else:
        results_dir, fix = Path(results_dir), "give --out a folder you can write to"
    writable_folder(Path(results_dir) / "runs", fix)
    return Path(results_dir)


def read_npz(path: Path) -> dict | None:
    """The arrays of a cached ``.npz`` by name; None when it is missing or unreadable.

    For files mtbench can make again (derived atlases, checkpointed fits): a truncated or
    overwritten copy (a full disk, a killed writer of an older version) means "build it again".
    """
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # FileNotFoundError is an OSError
        return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextmanager
def exclusive_lock(path: Path, wait: bool = True, owner: str = "", create: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``fcntl`` lock on the file ``path`` (created if missing).

    The kernel releases the lock when its process dies (Ctrl-C, a killed job), so a crash
    never leaves it held. While held, the file names its holder (host, pid, ``owner``).

    Parameters
    ----------
    path : Path
    wait : bool
        Block until the lock is free; when False, yield False at once if another holds it.
    owner : str
        Appended to the holder line (e.g. a cluster job id).
    create : bool
        Create ``path`` if missing; when False, a missing file raises ``FileNotFoundError``.

    Yields
    ------
    bool
        True when this process holds the lock.
    """
    import fcntl  # POSIX only: imported here so that every other helper still imports anywhere

    fd = os.open(path, (os.O_CREAT if create else 0) | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            acquired = False
        else:
            acquired = True
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()} {owner}\n".encode())
        yield acquired
    finally:
        os.close(fd)  # releases the lock
