"""Where mtbench keeps converted models, extracted features and derived atlases."""

from __future__ import annotations

import os
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
