"""Where mtbench keeps converted models, extracted features and derived atlases."""

from __future__ import annotations

import os
import re
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import MtbenchError


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


def inside(root: Path, relative: str, what: str, fix: str = "name a file inside it with a relative path") -> Path:
    """``root / relative`` resolved, checked to be a file name inside ``root``.

    For every path that comes from outside (a manifest row, a bucket listing, a plan): ``../``,
    an absolute path or a symlink must not make mtbench write elsewhere.

    Parameters
    ----------
    root : Path
        The folder the path belongs to.
    relative : str
        The path as given, relative to ``root``.
    what : str
        Where it came from, for the message (e.g. ``"manifest /data/m.tsv"``).
    fix : str
        What the user can do about it, the end of the error's line.

    Raises
    ------
    MtbenchError
        When ``relative`` is empty, absolute, has a ``..`` component, or resolves (through a
        symlink) outside ``root`` or to ``root`` itself.
    """

    text = str(relative)
    parts = Path(text).parts
    if not text.strip() or "\0" in text or not parts or parts == (".",):
        reason = "an empty name" if "\0" not in text else "a NUL character"
    elif Path(text).is_absolute():
        reason = "an absolute path"
    elif ".." in parts:
        reason = "a '..' component"
    else:
        base = Path(root).resolve()
        path = (base / text).resolve()
        if path == base or not path.is_relative_to(base):
            reason = f"it resolves to {path}"
        else:
            return path
    raise MtbenchError(f"{text!r} from {what} is not a path inside {root} ({reason}); {fix}")


#: Allowed run ids: letters, digits, '.', '_', '-', not starting with '.' or '-', 1 to 200 characters.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


def check_run_id(run_id: str) -> str:
    """``run_id`` itself when it is a valid run id (a folder name in ``RESULTS/runs/``, never a path).

    Raises
    ------
    MtbenchError
        Otherwise: empty, over 200 characters, starting with ``.`` or ``-``, holding any
        character but letters, digits, ``.``, ``_`` and ``-`` (so no ``/`` and no ``..`` alone),
        or ending in ``.partial`` (the name of a run still being written).
    """

    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or run_id.endswith(".partial"):
        raise MtbenchError(f"invalid run id {run_id!r}: use 1 to 200 letters, digits, '.', '_' or '-', not starting "
                           "with '.' or '-' nor ending in '.partial' (give another --run-id)")
    return run_id
