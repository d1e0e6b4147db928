"""Words -> scans: the operator must equal nilearn's own regressor, word by word."""

from __future__ import annotations

import numpy as np
import pytest
from nilearn.glm.first_level.hemodynamic_models import compute_regressor

from mtbench.alignment import align_runs, frame_times, hrf_operator, zscore
from mtbench.api import StimulusRun


def random_run(rng, n_words=80, n_scans=90, tr=2.0):
    onsets = np.sort(rng.uniform(0.0, (n_scans - 8) * tr, n_words))
    offsets = onsets + rng.uniform(0.0, 0.8, n_words)  # includes zero-length words
    return StimulusRun(words=[f"w{i}" for i in range(n_words)], onsets=onsets, offsets=offsets, n_scans=n_scans)


@pytest.mark.parametrize("hrf", ["glover", "spm"])
def test_operator_matches_nilearn_per_word(hrf):
    rng = np.random.default_rng(1)
    run = random_run(rng)
    op = hrf_operator(run, 2.0, hrf)
    assert op.shape == (run.n_scans, len(run.words))
    times = frame_times(run.n_scans, 2.0)
    for w in rng.choice(len(run.words), 12, replace=False):
        events = np.array([[run.onsets[w]], [run.offsets[w] - run.onsets[w]], [1.0]])
        expected, _ = compute_regressor(events, hrf, times)
        np.testing.assert_allclose(op[:, w], expected[:, 0], atol=1e-10)


def test_operator_is_linear_in_features():
    """A @ F equals nilearn's regressor for the amplitude-modulated events of one feature."""
    rng = np.random.default_rng(2)
    run = random_run(rng, n_words=40, n_scans=60)
    feature = rng.normal(size=40)
    events = np.vstack([run.onsets, run.offsets - run.onsets, feature])
    expected, _ = compute_regressor(events, "glover", frame_times(run.n_scans, 2.0))
    np.testing.assert_allclose(hrf_operator(run, 2.0) @ feature, expected[:, 0], atol=1e-9)


def test_align_runs_shapes_and_zscore():
    rng = np.random.default_rng(3)
    runs = [random_run(rng, 30, 40), random_run(rng, 50, 60)]
    ops = [hrf_operator(r, 2.0) for r in runs]
    feats = [rng.normal(size=(30, 7)), rng.normal(size=(50, 7))]
    out = align_runs(feats, ops)
    assert [o.shape for o in out] == [(40, 7), (60, 7)]
    for o in out:
        np.testing.assert_allclose(o.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(o.std(0), 1, atol=1e-4)
    with pytest.raises(ValueError, match="features have 30 words but the run has 50"):
        align_runs([feats[0], feats[0]], ops)


def test_zscore_constant_column_is_zero():
    x = np.column_stack([np.ones(10), np.arange(10.0)])
    z = zscore(x)
    assert np.all(z[:, 0] == 0) and abs(z[:, 1].std() - 1) < 1e-6
