"""The built-in metric plugins against scipy and scikit-learn, column by column."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from mtbench.registry import get_registry


def test_pearson_matches_scipy():
    score = get_registry().metric("pearson").score
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 6))
    p = y + rng.normal(size=(50, 6))
    expected = [pearsonr(y[:, v], p[:, v])[0] for v in range(6)]
    np.testing.assert_allclose(score(y, p), expected, atol=1e-6)


def test_pearson_constant_and_shape():
    score = get_registry().metric("pearson").score
    y = np.random.default_rng(1).normal(size=(10, 2))
    assert np.all(score(y, np.ones((10, 2))) == 0)
    with pytest.raises(ValueError, match="shapes differ"):
        score(y, np.ones((9, 2)))


def test_r2_matches_scikit_learn():
    from sklearn.metrics import r2_score

    score = get_registry().metric("r2").score
    rng = np.random.default_rng(2)
    y = rng.normal(size=(40, 5))
    p = 0.5 * y + rng.normal(size=(40, 5))
    np.testing.assert_allclose(score(y, p), r2_score(y, p, multioutput="raw_values"), atol=1e-6)
    assert np.all(score(y, y) == 1) and np.all(score(y, -3 * y) < 0)  # a prediction worse than the mean
    constant = np.ones((40, 1))
    assert score(constant, p[:, :1])[0] == 0
    with pytest.raises(ValueError, match="shapes differ"):
        score(y, p[:-1])
