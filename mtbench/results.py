"""Writing a run: provenance, the run folder written atomically, and what every analysis's tables share.

Layout of a results directory (several runs share it)::

    RESULTS/runs/<run_id>/manifest.json      provenance: versions, revisions, settings
    RESULTS/runs/<run_id>/...                the tables and maps of the run's analysis
                                             (its part of the result schema, mtbench.schema)
    RESULTS/checkpoints/<fingerprint>/       finished fits of a run not written yet (mtbench.checkpoint)

A run is written into ``<run_id>.partial`` and renamed when complete, so an interrupted
run never leaves a half-written result where readers look. Two processes never write one
folder: ids are claimed one at a time (``RESULTS/.runs.lock``) and the writer holds a lock
inside its ``.partial`` until the rename (:func:`remove_dead_partials`: those of writers that died).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import MtbenchError
from .memory import usable_cpus
from .paths import check_run_id, exclusive_lock, holder, lock_is_held, note

SCHEMA_VERSION = "1"
WHOLE_BRAIN = "whole brain"


def nested_best(validation_per_run: np.ndarray, test_per_run: np.ndarray) -> np.ndarray:
    """Held-out score of the best fit, with the choice made inside each outer fold.

    In outer fold ``r`` the winner is the fit with the highest validation score computed
    without run ``r``; its score on run ``r`` is kept; the result is the mean over folds.
    Choosing once on fold-averaged validation scores would use run ``r`` to pick the
    model scored on run ``r`` (biased upward: +0.19 r on pure noise, measured).

    Parameters
    ----------
    validation_per_run, test_per_run : ndarray, shape (n_fits, n_runs, ...)

    Returns
    -------
    ndarray, shape (...)
    """
    pick = np.argmax(validation_per_run, axis=0)[None]
    return np.take_along_axis(test_per_run, pick, axis=0)[0].mean(0)


def parcel_groups(labels: np.ndarray, names: dict[int, str]) -> list[tuple[int, str, np.ndarray]]:
    """(id, name, voxel indices) for the whole brain (id -1) and every non-empty parcel."""
    groups = [(-1, WHOLE_BRAIN, np.arange(labels.size))]
    for pid in sorted(names):
        idx = np.flatnonzero(labels == pid)
        if idx.size:
            groups.append((pid, names[pid], idx))
    return groups


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "transformers", "himalaya", "nilearn", "pyarrow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(settings: dict, model: dict, dataset: dict) -> dict:
    """Everything needed to know where a result came from."""
    return {
        "schema_version": SCHEMA_VERSION,
        "mtbench_version": __version__,
        "git_commit": _git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "usable_cpus": usable_cpus()},
        "versions": _versions(),
        "model": model,
        "dataset": dataset,
        "settings": settings,
    }


def identity_of(meta: dict) -> dict:
    """The :data:`mtbench.schema.IDENTITY` values of a run (from its manifest ``meta``), in the schema's order."""
    return {"run_id": meta["run_id"], "model": meta["model"]["name"], "dataset": meta["dataset"]["name"],
            "subject": meta["settings"]["subject"], "metric": meta["settings"]["metric"]}


def rows_with_identity(meta: dict, rows: list[dict]) -> dict:
    """Column dict of ``rows`` (dicts with the same keys), the run's identity columns first."""
    return ({k: [v] * len(rows) for k, v in identity_of(meta).items()}
            | {k: [r[k] for r in rows] for k in rows[0]})


def write_parquet(path: Path, columns: dict, meta: dict) -> None:
    """``columns`` as a zstd Parquet file whose schema metadata holds the run's manifest (key ``mtbench``)."""
    table = pa.table(columns)
    table = table.replace_schema_metadata({b"mtbench": json.dumps(meta, sort_keys=True).encode()})
    pq.write_table(table, path, compression="zstd")


def volume_image(values: np.ndarray, mask: np.ndarray, affine: np.ndarray, fill=0) -> nib.Nifti1Image:
    """Scatter (n_voxels,) or (n_voxels, k) values into the mask volume."""
    values = np.asarray(values)
    shape = mask.shape + values.shape[1:]
    vol = np.full(shape, fill, dtype=values.dtype)
    vol[mask] = values
    return nib.Nifti1Image(vol, affine)


def write_run(
    results_dir: Path,
    run_id: str,
    meta: dict,
    result,
    mask_img: nib.Nifti1Image,
    truth: dict | None,
    unique: bool = False,
) -> Path:
    """Write every file of one run atomically; returns the run's folder.

    ``result`` (an :class:`mtbench.api.AnalysisResult`) writes its files
    (``result.write_files(folder, meta, mask_img, truth)``) into ``<run_id>.partial``.

    Files go to ``<run_id>.partial`` first; it is renamed when complete and removed if
    anything (including Ctrl-C) interrupts the writing. The writer holds a lock inside it, so a
    ``.partial`` left by a run that died is recognised as such and replaced, while one that
    another process is still writing is never touched.

    Parameters
    ----------
    unique : bool
        For generated ids (:func:`mtbench.runner.run_id_for`): when ``run_id`` is taken (two
        identical runs finishing in the same second), write ``<run_id>-2`` (``-3``, ...) instead
        and set ``meta["run_id"]`` to it. Otherwise a taken id raises ``FileExistsError``.
    """
    check_run_id(run_id)  # a name, never a path: before anything is created
    runs = Path(results_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as holding:
        with exclusive_lock(runs.parent / _CLAIM_LOCK):  # claims are short and one at a time
            remove_dead_partials(runs)
            run_id = _claim_run_id(runs, run_id, unique)
            partial = runs / f"{run_id}.partial"
            holding.enter_context(exclusive_lock(partial / _WRITING_LOCK, owner=run_id))
        meta["run_id"] = run_id
        final = runs / run_id
        try:
            result.write_files(partial, meta, mask_img, truth)
            os.replace(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (final / _WRITING_LOCK).unlink()  # still held until the stack closes; nobody looks inside a final run
    return final


_CLAIM_LOCK = ".runs.lock"  # in RESULTS/, beside runs/ (which holds nothing but runs)

_WRITING_LOCK = ".writing"  # in RESULTS/runs/<run_id>.partial/, held by the process writing it



def _claim_run_id(runs: Path, run_id: str, unique: bool) -> str:
    """Create ``<id>.partial`` for the first free id; call it holding the claim lock.

    A ``.partial`` is checked before the final folder: outside the claim lock a ``.partial``
    only ever becomes the final folder or disappears, so this order never misses a run.
    """
    for n in range(1, 1000):
        candidate = run_id if n == 1 else f"{run_id}-{n}"
        partial = runs / f"{candidate}.partial"
        writer = partial_writer(partial)
        if writer is None and not (runs / candidate).exists():
            if partial.is_dir() and not partial.is_symlink():  # left by a run that died, if any
                shutil.rmtree(partial, ignore_errors=True)
            else:  # a stray file or link of that name (not a run: runs are folders)
                partial.unlink(missing_ok=True)
            (partial / "maps").mkdir(parents=True)
            return candidate
        if not unique:
            if writer is not None:
                raise MtbenchError(f"{partial} is being written by another process ({writer}); wait for it "
                                   "or give this run another id")
            raise FileExistsError(f"{runs / candidate} already exists")
    raise MtbenchError(f"{runs}: 999 runs named {run_id}[-n]; give this run another id")


#: A dead writer's ``.partial`` untouched for this long is removed by the next run written beside it.
STALE_PARTIAL_SECONDS = 300


def remove_dead_partials(runs: Path) -> list[Path]:
    """Remove, with a note, the ``.partial`` folders in ``runs`` (call it holding the claim lock) that nobody
    writes (:func:`partial_writer`: their writer died, e.g. kill -9 while writing) and in which nothing
    changed for :data:`STALE_PARTIAL_SECONDS` (an older mtbench's writer held no lock). Returns them."""
    removed = []
    for partial in sorted(runs.glob("*.partial")):
        if not partial.is_dir() or partial.is_symlink() or partial_writer(partial) is not None:
            continue
        try:
            changed = max(path.lstat().st_mtime for path in [partial, *partial.rglob("*")])
        except OSError:  # changing as we look: left alone
            continue
        if time.time() - changed >= STALE_PARTIAL_SECONDS:
            who = holder(partial / _WRITING_LOCK)
            shutil.rmtree(partial, ignore_errors=True)
            if partial.exists():  # could not be removed (permissions): leaderboard keeps listing it
                continue
            note(f"removed {partial}: the unfinished results of a run whose writer ({who}) died; run its command "
                 "again to redo it (its finished fits, if kept, are reused)")
            removed.append(partial)
    return removed


def partial_writer(partial: Path) -> str | None:
    """Who is writing the run folder ``partial`` (``<run_id>.partial``): "host pid run_id", or None.

    None means that nobody is: the ``.partial`` was left by a run that died. Only looks.
    """
    if not lock_is_held(partial / _WRITING_LOCK):  # no .partial, no lock (a writer that died before locking)
        return None
    try:
        return (partial / _WRITING_LOCK).read_text().strip() or "unknown"
    except OSError:
        return "unknown"
