"""FIR alignment: word features summed per scan, delayed copies side by side (checked against loops)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtbench.alignment import align_runs, delay_operator, hrf_operator, stimulus_operators, tr_sum_operator, zscore
from mtbench.api import Stimulus, StimulusRun
from mtbench.settings import RunSettings
from mtbench.errors import MtbenchError

TR = 2.0


def random_stimulus(rng, n_runs=3, n_scans=40):
    runs = []
    for _ in range(n_runs):
        n_words = 70
        onsets = np.sort(rng.uniform(0.0, n_scans * TR + 5.0, n_words))  # a few words after the last scan
        onsets[:3] = [0.0, TR, 3 * TR - 1e-9]  # scan boundaries
        onsets.sort()
        runs.append(StimulusRun(words=["w"] * n_words, onsets=onsets, offsets=onsets + 0.3, n_scans=n_scans))
    return Stimulus(language="en", tr=TR, runs=runs)


def direct_fir(run, feats, delays):
    """Loop over words, then over delays: the FIR design written out."""
    per_scan = np.zeros((run.n_scans, feats.shape[1]))
    for w, onset in enumerate(run.onsets):
        t = int(onset // TR)
        if t < run.n_scans:
            per_scan[t] += feats[w]
    blocks = []
    for delay in delays:
        shifted = np.zeros_like(per_scan)
        shifted[delay:] = per_scan[: run.n_scans - delay]
        blocks.append(shifted)
    return np.concatenate(blocks, axis=1)


@pytest.mark.parametrize("delays", [(1, 2, 3, 4), (0, 2), (5,)])
def test_fir_alignment_matches_direct_computation(delays):
    rng = np.random.default_rng(0)
    stim = random_stimulus(rng)
    feats = [rng.standard_normal((len(run.words), 6)).astype(np.float32) for run in stim.runs]
    ops = stimulus_operators(stim, "fir", delays)
    assert ops[0].shape == (len(delays), 40, 70)
    raw = align_runs(feats, ops, zscore_runs=False)
    scored = align_runs(feats, ops, zscore_runs=True)
    for run, f, x, xz in zip(stim.runs, feats, raw, scored):
        expected = direct_fir(run, f, delays)
        assert x.shape == (run.n_scans, len(delays) * 6)
        np.testing.assert_allclose(x, expected, atol=1e-5)
        np.testing.assert_allclose(xz, zscore(expected), atol=1e-4)
        # the runner's order: trim, then z-score per run
        np.testing.assert_allclose(zscore(x[3:-3]), zscore(expected[3:-3]), atol=1e-4)


def test_fir_defaults_and_delayed_hrf():
    rng = np.random.default_rng(1)
    stim = random_stimulus(rng, n_runs=1)
    (fir,) = stimulus_operators(stim, "fir")
    assert fir.shape[0] == 4  # delays 1-4 by default
    np.testing.assert_array_equal(fir[0, 1:], tr_sum_operator(stim.runs[0], TR)[:-1])
    (plain,) = stimulus_operators(stim, "glover")
    assert plain.ndim == 2
    (delayed,) = stimulus_operators(stim, "glover", [0, 1])
    np.testing.assert_allclose(delayed[0], hrf_operator(stim.runs[0], TR))
    np.testing.assert_allclose(delayed[1, 1:], delayed[0, :-1])
    assert (delayed[1, 0] == 0).all()
    with pytest.raises(MtbenchError, match="unknown HRF 'gamma'"):
        stimulus_operators(stim, "gamma")
    with pytest.raises(MtbenchError, match="delays"):
        delay_operator(fir[0], [-1, 2])


def test_runner_fir_and_significance(tmp_path, monkeypatch):
    """End to end on the tiny synthetic dataset: FIR features, p-values, CIs and normalized r written."""
    import pyarrow.parquet as pq

    from mtbench.runner import run
    from mtbench_plugins.models.hf.tiny import save_tiny_llama

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    model = save_tiny_llama(tmp_path / "tiny-llama", seed=0, n_layers=2)
    truth = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "input_hidden_state"}]
    settings = RunSettings(model=f"hf:{model}", dataset="synthetic", states=["input_hidden_state"], layers="1",
                           dataset_options={"scale": "tiny", "truth_model": f"hf:{model}", "truth": json.dumps(truth)},
                           hrf="fir", delays=[1, 2, 3], permutations=200, precision="float32")
    output = run(settings, tmp_path / "results")
    voxels = pq.read_table(output.run_dir / "voxels.parquet").to_pandas()
    assert {"p_value", "q_value", "test_normalized"} <= set(voxels.columns)
    p = voxels["p_value"].to_numpy(np.float64)
    assert ((p > 0) & (p <= 1)).all()
    # permutation p-values (k / 201), except under 10 exceedances (empirical p <= 10/201): the
    # Gaussian tail there, which goes below the permutation floor for the planted voxels
    off_grid = np.abs(p * 201 - np.round(p * 201)) > 1e-3
    assert off_grid.any() and (p[off_grid] < 0.1).all()
    assert (p < 1 / 201).any()
    summary = {r["parcel"]: r for r in output.summary}
    planted = summary[truth[0]["parcel"]]
    assert planted["test_ci_low"] <= planted["test"] <= planted["test_ci_high"]
    assert 0 <= planted["share_significant"] <= 1
    scores = pq.read_table(output.run_dir / "scores.parquet").to_pandas()
    assert {"ci_low", "ci_high", "share_significant"} <= set(scores.columns)


@pytest.mark.parametrize("args, message", [
    (["--delays", "1,x"], "cannot read --delays"),
    (["--delays", "-1,2"], "delays are scans after the word"),
    (["--fdr", "1.5"], "fdr (--fdr) must be a level in (0, 1), got 1.5"),
    (["--permutations", "-3"], "permutations (--permutations) must be a whole number >= 0"),
    (["--protocol", "mindtransformer", "--delays", "1,2"], "--protocol mindtransformer sets delays"),
])
def test_cli_bad_alignment_and_significance_options_are_one_line_errors(args, message):
    from click.testing import CliRunner

    from mtbench.cli import main

    result = CliRunner().invoke(main, ["run", "--model", "x", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
