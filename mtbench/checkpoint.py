"""Finished fits of an unfinished run, kept so that re-running the same command resumes it.

A run of every (layer, state) at full LPP scale is 390 fits and hours of CPU; an interruption (Ctrl-C, a
killed job, a full session) must not throw away the fits already done. Each finished
(layer, state) fit is written at once to ``<results>/checkpoints/<fingerprint>/`` (one
``.npz`` per fit, written atomically); the same command run again finds them and fits only
the rest. The fingerprint covers everything a fit's numbers depend on: the effective run
settings, the model's revision and extraction settings, the dataset's version and stimulus,
and a hash of the BOLD actually fitted, so a changed input never reuses a stale fit. The
folder is removed once the run's results are written.

Two runs of the same command at once (two shells, a repeated job) share the folder: each
reuses the fits the other has saved. A run marks the checkpoint in use while it fits (a shared
lock on ``checkpoints/<fingerprint>.users``, released by the kernel if the run dies), and a
finished run removes it only when no run is using it, so it never deletes the folder under one
that is still saving there; the last one removes it. They split the fits: each is claimed before it
is computed (a lock on ``<fit>.claim``), and a run skips the fits another has claimed. A fit's file is
a zip, whose CRC-32s zipfile checks: a damaged one is fitted again, with a note.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import MtbenchError
from .paths import LockTimeout, atomic_write_bytes, note, read_npz, release_lock, try_lock, wait_lock

__all__ = ["FitCheckpoint", "fingerprint"]

# Tries at marking a checkpoint in use. Each retry needs another run to remove checkpoints/ or the
# .users file in a window of microseconds, so many in a row mean the path itself is the problem.
_ATTEMPTS = 100


def fingerprint(parts: dict, arrays: Sequence[np.ndarray] = ()) -> str:
    """Hex digest of JSON-able ``parts`` and the bytes of ``arrays`` (e.g. the BOLD runs)."""
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


class FitCheckpoint:
    """One ``.npz`` of arrays per finished fit, under ``results_dir/checkpoints/<key>/``.

    Use it as a context manager while fitting: ``with FitCheckpoint(...) as checkpoint`` marks
    it in use, so that another run of the same command never removes it under this one's saves.

    Parameters
    ----------
    results_dir : Path
        The run's results folder.
    key : str
        :func:`fingerprint` of what the fits depend on.
    """

    def __init__(self, results_dir: Path, key: str) -> None:
        self.folder = Path(results_dir) / "checkpoints" / key
        self._users = self.folder.with_name(f"{key}.users")  # beside the folder: it outlives a removal
        self._fd: int | None = None  # our shared lock on _users, while in use
        self._claims: dict[str, int] = {}  # fits this run is computing: name -> the lock held on its claim

    def __enter__(self) -> FitCheckpoint:
        import fcntl

        if self._fd is not None:  # already in use (remove() inside the with block)
            return self
        for attempt in range(_ATTEMPTS):
            try:
                self.folder.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._users, os.O_CREAT | os.O_RDWR, 0o644)
            except (FileNotFoundError, FileExistsError) as exc:  # another run removed the empty checkpoints/
                # just as we made it (mkdir(exist_ok=True) raises FileExistsError when it is gone again);
                # the same error every time is no race but a path that cannot be made (a file in the way)
                if attempt == _ATTEMPTS - 1:
                    raise MtbenchError(f"cannot keep fit checkpoints in {self.folder.parent} ({exc.strerror}); "
                                       "move what is in the way or give --out another folder") from None
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _is_file_at(fd, self._users):
                self._fd = fd
                return self
            os.close(fd)  # the last user removed the checkpoint while we waited: start on a new file
        raise MtbenchError(f"could not mark {self._users} in use: other runs kept removing it; run again")

    def __exit__(self, *exc_info) -> None:
        for name in list(self._claims):
            self.release(name)
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.npz"

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays saved for fit ``name``, or None when there are none (or they are damaged: a note)."""
        path = self._path(name)
        arrays = read_npz(path)
        if arrays is None and path.exists():  # damaged (a CRC-32 that does not match, truncated): fit it again
            note(f"the checkpoint {path} is damaged (unreadable, or its checksum does not match); fitting it again")
            path.unlink(missing_ok=True)
        return arrays

    def claim(self, name: str, wait: bool = False) -> bool:
        """Claim fit ``name`` (in the ``with`` block) until :meth:`save` or :meth:`release`; True when claimed.

        ``wait``: for the run holding it while it shows signs of life (:func:`mtbench.paths.wait_lock`);
        False then means that run seems stopped: this one may compute the fit itself.
        """
        if name in self._claims:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.claim"
        try:
            fd = (wait_lock(path, f"the fit {name}, computed by another run of this command in {self.folder}")
                  if wait else try_lock(path))
        except LockTimeout as exc:
            note(f"the fit {name} is claimed by {exc.holder}, which has shown no sign of life for {exc.seconds:.0f} s: "
                 "computing it here")
            return False
        if fd is not None:
            self._claims[name] = fd
        return fd is not None

    def release(self, name: str) -> None:
        """End this run's claim of fit ``name`` (if it has one)."""
        fd = self._claims.pop(name, None)
        if fd is not None:
            release_lock(fd)

    def save(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Write fit ``name``'s arrays atomically (readers see all of them or none), then release its claim.

        A file that cannot be written (a full disk) is a one-line :class:`MtbenchError`; the fits saved
        before are kept, nothing half-written is left.
        """
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path(name), buffer.getvalue())
        except OSError as exc:
            raise MtbenchError(f"could not save the fit {name} in {self.folder} ({exc.strerror or exc}); free space "
                               "there (or give --out another folder), then run the same command again: it reuses "
                               "the fits saved there") from None
        self.release(name)

    def remove(self) -> None:
        """Delete the checkpoint (the run's results are written), unless another run is using it.

        That run removes it when it finishes. Ends this run's use either way.
        """
        import fcntl

        with self:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another run of the same command: it removes the folder when done
                return
            if not _is_file_at(self._fd, self._users):  # another run removed it in the instant we let go
                return
            shutil.rmtree(self.folder, ignore_errors=True)
            self._users.unlink(missing_ok=True)
        try:  # checkpoints/ goes too when no other run keeps one there; rmdir checks that atomically
            self.folder.parent.rmdir()
        except OSError:  # not empty (a concurrent run's checkpoint), or already gone
            pass


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
