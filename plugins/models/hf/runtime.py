"""What the adapter and the loaders share about torch and transformers: dtypes by name,
device names, and loading without transformers' progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mtbench.errors import MtbenchError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when torch sees a GPU, else the CPU; other names as torch reads them.

    Raises
    ------
    MtbenchError
        An unknown device name, or a CUDA device on a machine where torch sees no GPU.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise MtbenchError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MtbenchError(f"device {device!r} was asked for but torch sees no CUDA GPU here: "
                           "use --device cpu (or auto), or install a CUDA build of torch")
    return resolved


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' loading progress bars (restores the previous setting)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
