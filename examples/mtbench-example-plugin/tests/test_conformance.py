"""The example plugin's own tests: mtbench's conformance kit and pytest fixtures."""

import numpy as np
from scipy.stats import spearmanr

from mtbench_plugins.testing import check_metric, check_model_adapter, check_plugin


def test_registered_through_the_entry_point(mtbench_registry):
    found = check_plugin("mtbench-example-plugin")
    assert [m.name for m in found["metric"]] == ["spearman"]
    assert [m.name for m in found["model"]] == ["tiny-example"]
    assert [a.name for a in found["analysis"]] == ["rsa"]  # loaded and checked against mtbench.api.Analysis
    assert mtbench_registry.providers["metric"]["spearman"] == "example"


def test_spearman_conforms_and_matches_scipy(mtbench_registry):
    metric = mtbench_registry.metric("spearman")
    check_metric(metric)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 4))
    p = np.exp(y) + rng.normal(size=(30, 4))  # monotone transform + noise: rank-based score differs from r
    expected = [spearmanr(y[:, v], p[:, v])[0] for v in range(4)]
    np.testing.assert_allclose(metric.score(y, p), expected, atol=1e-6)


def test_tiny_example_conforms(mtbench_registry, mtbench_tiny_stimulus):
    adapter = mtbench_registry.model("tiny-example").load()
    assert adapter.name == "tiny-example" and adapter.n_layers == 3
    check_model_adapter(adapter, stimulus=mtbench_tiny_stimulus)
