"""Where mtbench keeps converted models, extracted features and derived atlases."""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


def atomic_write_bytes(path: Path, data: bytes, seal: bool = False) -> None:
    """Write a file so that readers see either the old or the complete new content (``seal``: then its
    checksum, :func:`read_sealed`). A failed write (a full disk) raises and leaves no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.write(_SEAL + f"{zlib.crc32(data):08x}".encode() if seal else b"")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def note(message: str) -> None:
    """Tell the user something that is no error (on stderr: above the progress bars)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


# Checksums. A cache file mtbench can make again (word and scan features) ends with a seal: this marker
# and the CRC-32 of what comes before it (numpy reads a sealed .npy as it is). CRC-32 is also what zips
# (np.savez: the fit checkpoints) keep per member, checked by zipfile on every read: it finds accidental
# damage (not tampering) at several GB/s (benchmarks/cache_checksums.py).
_SEAL = b"\n#mtbench-crc32:"
SEAL_SIZE = len(_SEAL) + 8


class DamagedFile(ValueError):
    """A sealed file with no seal, or whose content does not match it."""


def file_checksum(path: Path, size: int | None = None) -> str:
    """CRC-32 (8 hex digits) of a file's first ``size`` bytes (default: all)."""
    value, left = 0, float("inf") if size is None else size
    with open(path, "rb", buffering=0) as handle:
        while left > 0 and (chunk := handle.read(int(min(2**22, left)))):
            value, left = zlib.crc32(chunk, value), left - len(chunk)
    return f"{value:08x}"


def seal_file(path: Path, size: int) -> None:
    """Seal the file ``path`` whose content is its first ``size`` bytes (anything after them is dropped)."""
    digest = file_checksum(path, size).encode()
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.seek(size)
        handle.write(_SEAL + digest)


def is_sealed(path: Path) -> bool:
    """Whether the file ends with a seal (not whether its content matches it)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-SEAL_SIZE, os.SEEK_END)
            return handle.read(SEAL_SIZE).startswith(_SEAL)
    except OSError:  # missing, or shorter than a seal
        return False


def read_sealed(path: Path) -> np.ndarray:
    """A sealed file's content without its seal (uint8), checked.

    Raises :class:`DamagedFile` when it has no seal (cut short; an older mtbench's) or does not match it.
    """
    with open(path, "rb", buffering=0) as handle:
        data = np.empty(os.fstat(handle.fileno()).st_size, dtype=np.uint8)  # not zeroed: read into at once
        done = 0
        while done < data.size and (n := handle.readinto(data[done:])):
            done += n
    seal, data = data[done - SEAL_SIZE:done].tobytes(), data[:done - SEAL_SIZE]
    if done < SEAL_SIZE or not seal.startswith(_SEAL):
        raise DamagedFile("it has no checksum: cut short, or written by an older mtbench")
    if f"{zlib.crc32(data):08x}".encode() != seal[len(_SEAL):]:
        raise DamagedFile("its content does not match its checksum")
    return data


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


# Locks waited for. A holder refreshes its lock file's time every HEARTBEAT seconds (one thread per
# process); a waiter says whom it waits for after LOCK_NOTE_AFTER seconds, and gives up on a holder
# whose file has not changed for $MTBENCH_LOCK_TIMEOUT seconds (stopped by Ctrl-Z or kill -STOP, hung).
LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT = "MTBENCH_LOCK_TIMEOUT", 120.0
LOCK_NOTE_AFTER, HEARTBEAT = 5.0, 1.0


class LockTimeout(MtbenchError):
    """A lock whose ``holder`` showed no sign of life for ``seconds`` (:func:`wait_lock`)."""

    def __init__(self, message: str, holder: str, seconds: float) -> None:
        super().__init__(message)
        self.holder, self.seconds = holder, seconds


def lock_timeout() -> float:
    """``$MTBENCH_LOCK_TIMEOUT`` (default 120): seconds a lock holder may show no sign of life."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip() or str(DEFAULT_LOCK_TIMEOUT)
    try:
        if float(text) > 0:  # not NaN either
            return float(text)
    except ValueError:
        pass
    raise MtbenchError(f"{LOCK_TIMEOUT_ENV}={text!r} is not a number of seconds above 0; set it to one (e.g. "
                       f"{DEFAULT_LOCK_TIMEOUT:.0f}, or inf to wait for ever) or unset it")


class _Heartbeat(threading.Thread):
    """Refreshes the time of the lock files this process holds (their fds) every :data:`HEARTBEAT` s."""

    guard, fds, thread_pid = threading.Lock(), set(), None

    def run(self) -> None:
        while _Heartbeat.thread_pid == os.getpid():
            time.sleep(HEARTBEAT)
            with self.guard:  # release_lock closes an fd under it: never utime a reused fd number
                for fd in self.fds:
                    with suppress(OSError):
                        os.utime(fd)


def _forked() -> None:  # a forked child has no heartbeat thread, nor the parent's locks to refresh
    _Heartbeat.guard, _Heartbeat.fds, _Heartbeat.thread_pid = threading.Lock(), set(), None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forked)


def try_lock(path: Path, owner: str = "") -> int | None:
    """The exclusive ``fcntl`` lock on ``path`` (created if missing) if free: the fd holding it, else None.

    While held (until :func:`release_lock`, or the process dies), the file names its holder (host,
    pid, ``owner``) and its time is refreshed every :data:`HEARTBEAT` seconds.
    """
    import fcntl

    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()} {owner}\n".encode())
    except OSError as exc:  # BlockingIOError: held by another
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            return None
        raise
    with _Heartbeat.guard:
        _Heartbeat.fds.add(fd)
        if _Heartbeat.thread_pid != os.getpid():
            _Heartbeat.thread_pid = os.getpid()
            _Heartbeat(name="mtbench-lock-heartbeat", daemon=True).start()
    return fd


def release_lock(fd: int) -> None:
    """Release a lock of :func:`try_lock` or :func:`wait_lock`."""
    with _Heartbeat.guard:
        _Heartbeat.fds.discard(fd)
        os.close(fd)


def lock_is_held(path: Path) -> bool:
    """Whether a process holds the lock file ``path``; only looks (never creates or writes the file)."""
    import fcntl

    with suppress(OSError), open(path, "rb") as handle:  # missing (no lock), unreadable: not held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at once, by the close
        except BlockingIOError:
            return True
    return False


def holder(path: Path) -> str:
    """Who holds (or last held) the lock file ``path``: "process PID on HOST (OWNER)"."""
    with suppress(OSError, ValueError):  # unreadable, or not "host pid ..." (being written)
        host, pid, *owner = Path(path).read_text().split(maxsplit=2)
        return f"process {pid} on {host}" + (f" ({owner[0].strip()})" if owner else "")
    return "an unknown process"


def wait_lock(path: Path, what: str, owner: str = "") -> int:
    """:func:`try_lock`, waiting while the holder shows signs of life; ``what`` it does is named in the messages.

    Raises :class:`LockTimeout` when the holder's lock file has not changed for :func:`lock_timeout` s.
    """
    timeout = lock_timeout()
    start = since = time.monotonic()
    seen, noted = None, False
    while (fd := try_lock(path, owner)) is None:
        with suppress(OSError):
            stat = os.stat(path)
            if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != seen:  # refreshed (or another holder): alive
                seen, since = (stat.st_ino, stat.st_mtime_ns, stat.st_size), time.monotonic()
        now, who = time.monotonic(), holder(path)
        if not noted and now - start >= LOCK_NOTE_AFTER:
            noted = note(f"waiting for {what}: {path} is held by {who}") or True
        if now - since >= timeout:
            pid = who.split()[1] if who.startswith("process ") else "PID"
            raise LockTimeout(f"gave up waiting for {what}: {path} is held by {who}, which has shown no sign of "
                              f"life for {now - since:.0f} s (stopped with Ctrl-Z or kill -STOP?); resume it "
                              f"(kill -CONT {pid}) or end it, then run again ({LOCK_TIMEOUT_ENV} sets this wait "
                              "in seconds)", who, now - since)
        time.sleep(0.2)
    return fd


@contextmanager
def waiting_lock(path: Path, what: str, owner: str = "") -> Iterator[None]:
    """Hold the lock of :func:`wait_lock` for the ``with`` block."""
    fd = wait_lock(path, what, owner)
    try:
        yield
    finally:
        release_lock(fd)


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
