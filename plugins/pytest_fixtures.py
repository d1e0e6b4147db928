"""pytest fixtures for plugin authors, loaded automatically wherever mtbench is installed.

Registered under the ``pytest11`` entry-point group, so any test suite in an environment
with mtbench can ask for these fixtures by name. Importing this module costs nothing:
every fixture imports what it needs (numpy, torch, the built-in plugins) when a test
first asks for it, and nothing here is ``autouse``.

Fixtures
--------
mtbench_registry
    The plugin registry of the current environment (:func:`mtbench.registry.get_registry`).
mtbench_tiny_stimulus
    :func:`mtbench_plugins.testing.tiny_stimulus`: 3 runs of ~20 English words.
mtbench_tiny_model_path
    A folder with a tiny random Llama (3 blocks, hidden 64) and its tokenizer (session).
mtbench_tiny_model
    That folder loaded through the built-in ``hf`` model entry: a real ``ModelAdapter``.
mtbench_tiny_dataset
    The built-in ``synthetic`` dataset at ``scale=tiny``, its signal planted from the
    ``random`` baseline (no torch): 4 runs, 150 words each, 3 parcels (session).
"""

from __future__ import annotations

import pytest

#: Options of the built-in synthetic dataset that make it tiny and torch-free.
TINY_DATASET_OPTIONS = {
    "scale": "tiny",
    "truth_model": "random",
    "truth": [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "embedding"}],
    "snr": 2.0,
}


@pytest.fixture(scope="session")
def mtbench_registry():
    """Every plugin installed in this environment, as mtbench sees it."""
    from mtbench.registry import get_registry

    return get_registry()


@pytest.fixture
def mtbench_tiny_stimulus():
    """A 3-run English stimulus of about 20 words per run (fresh for each test)."""
    from mtbench_plugins.testing import tiny_stimulus

    return tiny_stimulus()


@pytest.fixture(scope="session")
def mtbench_tiny_model_path(tmp_path_factory):
    """A tiny random Llama folder (loads with ``--model hf:<folder>``)."""
    from mtbench_plugins.models.hf.tiny import save_tiny_llama

    from mtbench_plugins.testing import tiny_stimulus

    words = [w for run in tiny_stimulus().runs for w in run.words]
    return save_tiny_llama(tmp_path_factory.mktemp("mtbench-tiny-llama"), seed=0, extra_text=[" ".join(words)])


@pytest.fixture(scope="session")
def mtbench_tiny_model(mtbench_tiny_model_path, mtbench_registry):
    """The tiny Llama as a loaded model adapter (built-in ``hf`` entry)."""
    return mtbench_registry.model("hf").load(argument=str(mtbench_tiny_model_path))


@pytest.fixture(scope="session")
def mtbench_tiny_dataset(mtbench_registry):
    """The built-in ``synthetic`` dataset, tiny and planted from the ``random`` baseline."""
    return mtbench_registry.dataset("synthetic").load(**TINY_DATASET_OPTIONS)
