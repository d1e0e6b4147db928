"""Word-level features of a model, cached on disk, written while they are extracted.

The cache key is (model name, model revision, extraction settings -- context window,
stride, pooling, dtype... --, stimulus fingerprint): one folder. In it, each
(layer, state) is one ``.npy`` file of word vectors for all runs concatenated
(``L004_per_head_q.npy``, float16 by default; ``L004_per_head_q.float32.npy`` with
``dtype="float32"``), and ``index.json`` records the run lengths. Precision is chosen per
state when its file is finished: a state some of whose values float16 cannot hold (beyond
65,504) is kept in float32 under the same name (its ``.npy`` header says so, and
:attr:`CachedFeatures.widened` lists it for the run's manifest), so no model fails for it;
every other state is exactly the float16 rounding it always was. A second run of the same
model on the same stimulus reads these files instead of running the model.

Streaming and resuming: while a model extracts, finished words go straight into
preallocated float32 files under ``partial-<dtype>-w32-<hash of the requested keys>/`` (one
per (layer, state), at their final row; narrowed to ``dtype`` when finished), and ``progress.json`` (written atomically after the
rows it counts) says how many words of each run are done. The files are renamed to their
final names when every run is done. An interrupted extraction (crash, Ctrl-C) rerun with
the same request resumes after the last recorded word; nothing before it is recomputed.
Extraction into one folder holds ``extract.lock`` (an ``fcntl`` lock, released by the kernel
if the process dies): a second process asking for the same features (two runs, or sweep
cells on a cold cache) waits (:func:`mtbench.paths.wait_lock`), then reads what the first wrote.
Every finished file (word and aligned features) ends with its checksum (:func:`mtbench.paths.read_sealed`),
checked when it is read: a damaged one is extracted (aligned) again, with a note, never used.
Adapters that have an ``extract_stream`` method (the Hugging Face adapter) stream window
by window, so memory stays at one window's words; others are extracted in one call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .api import ModelAdapter, Stimulus
from .errors import MtbenchError
from .paths import SEAL_SIZE, DamagedFile, atomic_write_bytes, cache_dir, is_sealed, note, read_sealed, seal_file
from .paths import waiting_lock
from .settings import FEATURE_DTYPES

FeatureSet = dict[tuple[int, str], list[np.ndarray]]
_PROGRESS = "progress.json"
_LOCK = "extract.lock"


def _cache_folder(adapter: ModelAdapter, stimulus: Stimulus) -> Path:
    settings = json.dumps(adapter.settings(), sort_keys=True)
    key = hashlib.sha256(f"{adapter.revision}|{settings}|{stimulus.fingerprint()}".encode()).hexdigest()[:20]
    return cache_dir("features", adapter.name.replace("/", "_").replace(":", "_"), key)


def _file(folder: Path, layer: int, state: str, dtype: str = "float16") -> Path:
    # float16 files keep their original names (caches written before the dtype option stay valid)
    suffix = "" if dtype == "float16" else f".{dtype}"
    return folder / f"L{layer:03d}_{state}{suffix}.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_view(data: np.ndarray) -> np.ndarray:
    """The array in ``.npy`` file bytes (uint8, from :func:`mtbench.paths.read_sealed`), a view; ValueError if none."""
    header = io.BytesIO(data[:65536].tobytes())  # a header is far shorter
    version = np.lib.format.read_magic(header)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                             np.lib.format.read_array_header_2_0)(header)
    if dtype.hasobject or fortran or np.prod(shape, dtype=np.int64) * dtype.itemsize != data.size - header.tell():
        raise ValueError("not the array its header says")
    return data[header.tell():].view(dtype).reshape(shape)


def _npy_size(path: Path) -> int:
    """Size of a ``.npy`` file's header and array (a seal after them not counted)."""
    array = np.load(path, mmap_mode="r")
    return array.offset + array.nbytes


class _ReadOnce(Mapping):
    """A mapping whose values are read on access; ``pop`` reads and forgets, ``del`` only forgets."""

    def pop(self, key: tuple[int, str], *default):
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value


class CachedFeatures(_ReadOnce):
    """Features in the cache, read from disk one (layer, state) at a time.

    Behaves like a :data:`FeatureSet` (``features[key]`` -> list of float32 arrays
    (n_words_r, dim), one per run); ``pop(key)`` reads and forgets a key, ``del features[key]``
    only forgets it. Nothing is held in memory between accesses, so a caller that handles
    one key at a time never holds them all.
    ``extract(key)`` (from :func:`word_features`) writes the file of ``key`` again: files are then sealed
    and one missing or damaged is extracted again, with a note. Without it, plain ``.npy`` files are read.
    """

    def __init__(self, files: dict[tuple[int, str], Path], bounds: np.ndarray,
                 extract: Callable[[tuple[int, str]], None] | None = None, dtype: str = "float16"):
        self._files, self._bounds, self._extract = dict(files), bounds, extract
        self.widened = _widened({key: _stored_dtype(path) for key, path in self._files.items()}, dtype)

    def _read(self, key: tuple[int, str]) -> np.ndarray:
        path = self._files[key]
        if self._extract is None and not is_sealed(path):
            return np.load(path)  # a caller's own plain .npy
        for attempt in (0, 1):
            try:
                return npy_view(read_sealed(path))
            except (OSError, ValueError) as exc:  # missing, a DamagedFile, not a .npy
                problem = "missing" if isinstance(exc, FileNotFoundError) else f"damaged ({exc})"
            if self._extract is None or attempt:
                raise MtbenchError(f"the features in {path} are {problem}{' after their extraction' * attempt}; "
                                   f"delete {path.parent} and run again (they are extracted again)") from None
            note(f"the cached features {path} are {problem}; extracting them again")
            path.unlink(missing_ok=True)
            self._extract(key)

    def __getitem__(self, key: tuple[int, str]) -> list[np.ndarray]:
        flat = self._read(key)
        b = self._bounds
        return [flat[lo:hi].astype(np.float32) for lo, hi in zip(b[:-1], b[1:])]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __delitem__(self, key: tuple[int, str]) -> None:
        del self._files[key]  # forget it without reading it

    def __contains__(self, key) -> bool:
        return key in self._files  # without reading the file

    def file(self, key: tuple[int, str]) -> Path:
        """The cache file of one (layer, state)."""
        return self._files[key]


class ScanFeatures(_ReadOnce):
    """TR-level features: word features aligned to the scans, cached next to the word features.

    ``scans[key]`` -> list of float32 arrays (n_scans_r, dim), one per run, as ``align`` makes
    them from ``words[key]``. When the word features come from the disk cache
    (:class:`CachedFeatures`), each aligned (layer, state) is saved once in
    ``<word cache>/scans-<alignment>/`` and read back by every later fit with the same
    alignment (a run with another metric, alpha grid, mode or parcellation), so neither the
    model nor the alignment runs again. ``alignment`` must change whenever ``align`` would give
    other numbers (:func:`mtbench.alignment.alignment_fingerprint`). ``pop`` and ``del``
    forget a key as :class:`CachedFeatures` does.

    Parameters
    ----------
    words : mapping
        ``(layer, state) -> [array (n_words_r, dim) per run]``.
    align : callable
        ``align(word_runs) -> scan_runs``.
    alignment : str
        Fingerprint of everything ``align`` depends on besides the words.
    run_lengths : list of int
        Scans per run after alignment (to split the cached rows and check them).
    """

    def __init__(self, words: Mapping, align: Callable[[list[np.ndarray]], list[np.ndarray]], alignment: str,
                 run_lengths: Sequence[int]):
        self._words, self._align, self._alignment = words, align, alignment
        self._bounds = np.cumsum([0, *run_lengths])
        #: states kept wider than the requested cache dtype (:func:`word_features`): ``{"L004 state": "float32"}``
        self.widened = dict(getattr(words, "widened", {}))

    def _file(self, key: tuple[int, str]) -> Path | None:
        if not isinstance(self._words, CachedFeatures):
            return None  # features held in memory (no cache): align every time
        words = self._words.file(key)  # its name says the word features' dtype
        return words.parent / f"scans-{self._alignment}" / words.name

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            flat = npy_view(read_sealed(path))
        except DamagedFile as exc:  # never used: aligned again (an older mtbench's file, unsealed, quietly)
            if is_sealed(path):
                note(f"the aligned features {path} are damaged ({exc}); aligning them again")
            return None
        except (OSError, ValueError):
            return None  # missing, or not the right file: align again
        return flat if flat.ndim == 2 and flat.shape[0] == self._bounds[-1] and flat.dtype == np.float32 else None

    def __getitem__(self, key: tuple[int, str]) -> list[np.ndarray]:
        if key not in self._words:
            raise KeyError(key)
        path = self._file(key)
        flat = None if path is None else self._read(path)
        if flat is None:
            flat = np.ascontiguousarray(np.concatenate(self._align(self._words[key])), dtype=np.float32)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, npy_bytes(flat), seal=True)  # a reader sees the whole file or none
        b = self._bounds
        # views of one buffer (the ridge fit then reads them without a copy)
        return [flat[lo:hi] for lo, hi in zip(b[:-1], b[1:])]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __delitem__(self, key: tuple[int, str]) -> None:
        del self._words[key]

    def __contains__(self, key) -> bool:
        return key in self._words


def word_features(
    adapter: ModelAdapter,
    stimulus: Stimulus,
    states: Sequence[str],
    layers: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
    dtype: str = "float16",
) -> Mapping[tuple[int, str], list[np.ndarray]]:
    """Features of every requested (layer, state), from the cache when present.

    Parameters
    ----------
    adapter : ModelAdapter
    stimulus : Stimulus
    states : sequence of str
    layers : sequence of int
        1-based block numbers.
    progress : callable, optional
        Forwarded to the adapter.
    use_cache : bool
        Read and write the on-disk cache (else: extract in memory, same rounding).
    dtype : {"float16", "float32"}
        Storage precision of the cache; features are returned as float32 either way,
        rounded to it (a cached and an uncached run give identical numbers). With
        ``float16``, a state some of whose values float16 cannot hold is kept in float32
        instead (exact), chosen per state; the result's ``widened`` names those states.

    Returns
    -------
    mapping
        ``(layer, state) -> [array (n_words_r, dim) per run]``, float32; with the cache, a
        :class:`CachedFeatures` that reads each key from disk when asked.
    """
    if dtype not in FEATURE_DTYPES:
        raise MtbenchError(f"unknown feature cache dtype {dtype!r}: use one of {', '.join(FEATURE_DTYPES)}")
    run_lengths = [len(r.words) for r in stimulus.runs]
    bounds = np.cumsum([0, *run_lengths])
    wanted = list(dict.fromkeys((int(layer), state) for layer in layers for state in states))
    if not use_cache or bounds[-1] == 0:
        return _in_memory(adapter, stimulus, wanted, run_lengths, dtype, progress)

    folder = _cache_folder(adapter, stimulus)
    files = {key: _file(folder, *key, dtype) for key in wanted}
    missing = [key for key in wanted if not _complete(files[key], bounds[-1])]
    if unsealed := [files[key] for key in missing if files[key].exists()]:  # the right shape, no checksum
        note(f"{len(unsealed)} cached feature file(s) in {folder} have no checksum (written by an older mtbench, "
             "or damaged); extracting them again")
        for path in unsealed:
            path.unlink(missing_ok=True)
    if missing:
        # one extraction per cache folder at a time: two processes would write (and restart,
        # wiping) the same partial folder; the one that waited then finds its keys done
        with waiting_lock(folder / _LOCK, f"the feature extraction of {adapter.name} into {folder}"):
            missing = [key for key in missing if not _complete(files[key], bounds[-1])]
            if missing:
                _extract_to_disk(adapter, stimulus, missing, folder, files, run_lengths, dtype, progress)
                index = {"model": adapter.name, "revision": adapter.revision, "settings": adapter.settings(),
                         "stimulus": stimulus.fingerprint(), "run_lengths": run_lengths}
                atomic_write_bytes(folder / "index.json", json.dumps(index, indent=1, default=str).encode())

    def extract(key: tuple[int, str]) -> None:  # a cache file found damaged when read: extracted again
        word_features(adapter, stimulus, [key[1]], [key[0]], dtype=dtype)

    return CachedFeatures(files, bounds, extract, dtype)


def _complete(path: Path, n_words: int, sealed: bool = True) -> bool:
    """A finished cache file of the right length (else deleted), ``sealed`` (its content is checked when read)."""
    if not path.exists():
        return False
    try:
        ok = np.load(path, mmap_mode="r").shape[0] == n_words
    except (OSError, ValueError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
    return ok and (not sealed or (is_sealed(path) and path.stat().st_size == _npy_size(path) + SEAL_SIZE))


def _round(adapter: ModelAdapter, key, x: np.ndarray, dtype: str) -> np.ndarray:
    y = np.asarray(x).astype(dtype, copy=False)  # written out at once: a view is fine
    if not np.isfinite(y).all():
        raise RuntimeError(f"model {adapter.name} gave non-finite or {dtype}-overflowing values for {key}")
    return y


def _fits(x: np.ndarray, dtype: str) -> bool:
    """Whether every value of ``x`` stays finite in ``dtype`` (float16 holds |x| < 65,520 after rounding)."""
    with np.errstate(over="ignore"):  # an overflow is the answer here, not a problem
        return bool(np.isfinite(x.astype(dtype)).all())


def _stored_dtype(path: Path) -> str:
    """The dtype a finished cache file holds (its ``.npy`` header), without reading it."""
    try:
        return str(np.load(path, mmap_mode="r").dtype)
    except (OSError, ValueError):
        return ""  # missing or damaged: extracted again when read, and then whole


def _widened(stored: dict[tuple[int, str], str], dtype: str) -> dict[str, str]:
    """``{"L004 state": stored dtype}`` for the keys stored wider than ``dtype`` (for the manifest)."""
    return {f"L{layer:03d} {state}": kind for (layer, state), kind in sorted(stored.items())
            if kind and kind != dtype}


def _in_memory(adapter, stimulus, wanted, run_lengths, dtype, progress) -> FeatureSet:
    states = list(dict.fromkeys(s for _, s in wanted))
    layers = list(dict.fromkeys(layer for layer, _ in wanted))
    extracted = adapter.extract(stimulus, states, layers, progress=progress)
    out: FeatureSet = {}
    stored = {}
    for key in wanted:
        runs = [_round(adapter, key, r, "float32") for r in extracted[key]]
        _check_lengths(adapter, key, [r.shape[0] for r in runs], run_lengths)
        stored[key] = dtype if all(_fits(r, dtype) for r in runs) else "float32"  # as the disk cache chooses
        out[key] = [r.astype(stored[key]).astype(np.float32) for r in runs]
    if widened := _widened(stored, dtype):
        note(f"{len(widened)} state(s) exceed {dtype} and are kept in float32: {', '.join(widened)}")
    return _Features(out, widened)


class _Features(dict):
    """A :data:`FeatureSet` in memory, with the ``widened`` states of :class:`CachedFeatures`."""

    def __init__(self, features: FeatureSet, widened: dict[str, str]):
        super().__init__(features)
        self.widened = widened


def _check_lengths(adapter, key, got: list[int], expected: list[int]) -> None:
    if got != expected:
        raise RuntimeError(f"model {adapter.name} returned {got} words per run for {key}, expected {expected}")


def _stream(adapter, stimulus, states, layers, start_words, progress):
    """(run, first word, {key: array}) blocks: the adapter's own stream, or one block per run."""
    if hasattr(adapter, "extract_stream"):
        yield from adapter.extract_stream(stimulus, states, layers, start_words=start_words, progress=progress)
        return
    extracted = adapter.extract(stimulus, states, layers, progress=progress)
    for r, start in enumerate(start_words):
        block = {key: runs[r][start:] for key, runs in extracted.items()}
        if any(len(x) for x in block.values()):
            yield r, start, block


def _extract_to_disk(adapter, stimulus, missing, folder, files, run_lengths, dtype, progress) -> None:
    """Extract ``missing`` keys into their cache files, resuming a partial extraction."""
    tag = hashlib.sha256(json.dumps(sorted(missing)).encode()).hexdigest()[:12]
    # rows are kept in float32 until a state is finished: only then is it known whether float16 holds it
    partial = folder / f"partial-{dtype}-w32-{tag}"
    done = _read_progress(partial, run_lengths)
    if done is not None and any(done) and not all(_complete(partial / files[k].name, sum(run_lengths), sealed=False)
                                                   for k in missing):
        done = None  # progress without its files
    if done is None:  # nothing usable: start afresh
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        done = [0] * len(run_lengths)
    offsets = np.cumsum([0, *run_lengths])
    states = list(dict.fromkeys(s for _, s in missing))
    layers = list(dict.fromkeys(layer for layer, _ in missing))
    writers = {key: _RowWriter(partial / files[key].name, int(offsets[-1]), "float32") for key in missing}
    for r, first, block in _stream(adapter, stimulus, states, layers, done, progress):
        if first != done[r]:
            raise RuntimeError(f"model {adapter.name} streamed words from {first} in run {r + 1}, "
                               f"expected {done[r]}")
        n = None
        for key in missing:
            x = _round(adapter, key, block[key], "float32")
            n = x.shape[0] if n is None else n
            if x.shape[0] != n or first + n > run_lengths[r]:
                raise RuntimeError(f"model {adapter.name} streamed {x.shape[0]} words for {key} in run {r + 1}")
            writers[key].write(int(offsets[r]) + first, x)
        for writer in writers.values():
            writer.flush()  # rows reach the file before the progress that counts them
        done[r] = first + (n or 0)
        atomic_write_bytes(partial / _PROGRESS, json.dumps({"done": done, "run_lengths": run_lengths}).encode())
    for key in missing:
        writers[key].close()
    if done != list(run_lengths):
        raise RuntimeError(f"model {adapter.name} stopped after {done} words per run, expected {run_lengths}")
    widened = []
    for key in missing:
        path = partial / files[key].name
        if not _narrow(path, dtype):
            widened.append(f"L{key[0]:03d} {key[1]}")
        seal_file(path, _npy_size(path))  # its checksum: every later read checks it
        os.replace(path, files[key])
    shutil.rmtree(partial, ignore_errors=True)
    if widened:
        note(f"{len(widened)} state(s) of {adapter.name} exceed {dtype} and are cached in float32: "
             f"{', '.join(widened)}")


def _narrow(path: Path, dtype: str, rows: int = 16384) -> bool:
    """Rewrite the float32 ``.npy`` at ``path`` in ``dtype`` when every value fits in it; False if kept in float32.

    The same rounding as writing ``dtype`` directly (float32 -> float16 is one rounding), in
    blocks of ``rows`` rows so memory stays at one block.
    """
    if dtype == "float32":
        return True
    wide = np.load(path, mmap_mode="r")
    if not all(_fits(wide[r0:r0 + rows], dtype) for r0 in range(0, wide.shape[0], rows)):
        return False
    narrow_path = path.with_name(path.name + ".narrow")
    narrow = np.lib.format.open_memmap(narrow_path, mode="w+", dtype=dtype, shape=wide.shape)
    for r0 in range(0, wide.shape[0], rows):
        narrow[r0:r0 + rows] = wide[r0:r0 + rows]
    narrow.flush()
    del narrow, wide
    os.replace(narrow_path, path)
    return True


def _read_progress(partial: Path, run_lengths: list[int]) -> list[int] | None:
    try:
        info = json.loads((partial / _PROGRESS).read_text())
        done = [int(d) for d in info["done"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("run_lengths") != list(run_lengths) or any(not 0 <= d <= n for d, n in zip(done, run_lengths)):
        return None
    return done


class _RowWriter:
    """Rows of one ``.npy`` file of shape (n_rows, dim), written in place as they come.

    The file (header and its full size, sparse) is created at the first write, when
    ``dim`` is known; an existing file of the right shape and dtype (a resumed extraction)
    is written into. Plain positioned writes, not a memory map: written pages stay in the
    OS cache instead of the process's memory.
    """

    def __init__(self, path: Path, n_rows: int, dtype: str):
        self.path, self.n_rows, self.dtype = path, n_rows, np.dtype(dtype)
        self.handle = None
        self.offset = 0

    def _open(self, dim: int) -> None:
        if self.path.exists():
            try:
                existing = np.load(self.path, mmap_mode="r")
                if existing.shape == (self.n_rows, dim) and existing.dtype == self.dtype:
                    self.offset = existing.offset
                    del existing
                    self.handle = open(self.path, "r+b")
                    return
            except (OSError, ValueError):
                pass
        created = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(self.n_rows, dim))
        self.offset = created.offset
        del created
        self.handle = open(self.path, "r+b")

    def write(self, row: int, x: np.ndarray) -> None:
        if self.handle is None:
            self._open(x.shape[1])
        if len(x):
            self.handle.seek(self.offset + row * x.shape[1] * self.dtype.itemsize)
            self.handle.write(np.ascontiguousarray(x, dtype=self.dtype).tobytes())

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
