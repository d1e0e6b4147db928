"""``tiny-example``: a model family alias that resolves to a folder mtbench builds itself.

Shows how a plugin reuses the built-in Hugging Face adapter instead of writing its own:
look the ``hf`` entry up in the registry and load a folder through it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mtbench.errors import MtbenchError
from mtbench.paths import cache_dir

NAME = "tiny-example"
FOLDER = "tiny-example-llama-v1"  # bump when the model changes, so a stale folder is never reused


def tiny_folder() -> Path:
    """The tiny Llama's folder in mtbench's cache, built on first use (atomically)."""
    folder = cache_dir("example-plugin") / FOLDER
    if not (folder / "config.json").is_file():
        from mtbench_plugins.models.hf.tiny import save_tiny_llama

        tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=folder.parent))
        save_tiny_llama(tmp, seed=0, n_layers=3)
        try:
            os.replace(tmp, folder)  # another process may have won the race: keep its folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_tiny_example(argument=None, **options):
    """Load the tiny Llama through the built-in ``hf`` adapter, named ``tiny-example``.

    Parameters
    ----------
    argument : None
        ``tiny-example`` takes no ``:ARGUMENT``.
    **options
        Passed to the ``hf`` adapter (``context``, ``stride``, ``pooling``...).
    """
    if argument:
        raise MtbenchError(f"{NAME} takes no argument, got {NAME}:{argument}")
    from mtbench.registry import get_registry

    adapter = get_registry().model("hf").load(argument=str(tiny_folder()), **options)
    adapter.name = NAME  # run ids and the feature cache use this name, not the cache path
    return adapter
