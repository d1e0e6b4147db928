"""``--protocol mindtransformer``: mtbench reproduces the reference (MindTransformer) protocol.

The reference below is written directly from the protocol's description with scikit-learn:
trim 10 scans at both ends of each run, z-score each run, then for each outer (test) run:
train ``Ridge(alpha, fit_intercept=False)`` on the remaining runs except the first remaining
one, validate on that run, keep the alpha with the largest voxel-mean Pearson r, refit on all
remaining runs, Pearson r per voxel on the test run; average over the outer runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sklearn.linear_model import Ridge

from mtbench.alignment import hrf_operator
from mtbench.api import StimulusRun
from mtbench.settings import RunSettings
from mtbench.settings import PROTOCOLS, resolve_protocol
from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError

TR = 2.0
MT = PROTOCOLS["mindtransformer"]
TRUTH = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "input_hidden_state"}]


# --------------------------------------------------------------------------- reference
def _z(a):
    a = np.asarray(a, dtype=np.float64)
    return (a - a.mean(0)) / a.std(0)


def _r(y, p):
    return np.array([np.corrcoef(y[:, v], p[:, v])[0, 1] for v in range(y.shape[1])])


def mindtransformer_reference(x_scans, y_scans, trim=10, alphas=None):
    """Per-voxel test r (mean over outer runs), chosen alpha and validation r per outer run."""
    alphas = np.logspace(2, 7, 16) if alphas is None else alphas
    xs = [_z(x[trim:-trim]) for x in x_scans]
    ys = [_z(y[trim:-trim]) for y in y_scans]
    n_runs = len(xs)
    test, chosen, validation = [], [], []
    for o in range(n_runs):
        remaining = [r for r in range(n_runs) if r != o]
        val_run, inner_train = remaining[0], remaining[1:]
        x_in, y_in = np.concatenate([xs[r] for r in inner_train]), np.concatenate([ys[r] for r in inner_train])
        val = [_r(ys[val_run], Ridge(alpha=a, fit_intercept=False).fit(x_in, y_in).predict(xs[val_run]))
               for a in alphas]
        best = int(np.argmax([v.mean() for v in val]))
        x_tr, y_tr = np.concatenate([xs[r] for r in remaining]), np.concatenate([ys[r] for r in remaining])
        pred = Ridge(alpha=alphas[best], fit_intercept=False).fit(x_tr, y_tr).predict(xs[o])
        test.append(_r(ys[o], pred))
        chosen.append(alphas[best])
        validation.append(val[best])
    return np.mean(test, 0), np.array(chosen), np.array(validation)


# --------------------------------------------------------------------------- data
def _data(seed=0, n_runs=5, n_scans=70, n_features=30, n_voxels=40):
    """Random word features through mtbench's HRF operator; signal planted in half the voxels."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    weights[:, n_voxels // 2:] = 0.0
    x_scans, y_scans = [], []
    for _ in range(n_runs):
        n_words = int(n_scans * TR * 2)  # ~2 words per second
        onsets = np.sort(rng.uniform(0, (n_scans - 6) * TR, n_words))
        run = StimulusRun(words=["w"] * n_words, onsets=onsets, offsets=onsets + rng.uniform(0.15, 0.5, n_words),
                          n_scans=n_scans)
        x = (hrf_operator(run, TR, "glover") @ rng.standard_normal((n_words, n_features))).astype(np.float32)
        signal = _z(x) @ weights
        y = (signal + rng.standard_normal((n_scans, n_voxels)) * signal.std() * 3.0).astype(np.float32)
        x_scans.append(x)
        y_scans.append(y)
    return x_scans, y_scans


# --------------------------------------------------------------------------- equivalence
def test_mindtransformer_protocol_matches_sklearn_reference():
    from mtbench.alignment import zscore
    from mtbench.registry import get_registry
    from mtbench.runner import scan_features, trim_run
    from mtbench_plugins.analyses.mode1.fit import fit_all

    x_scans, y_scans = _data()
    settings = resolve_protocol(RunSettings(model="m", dataset="d", states=["s"], protocol="mindtransformer"))
    # mtbench's own pipeline from scan-level features on: the runner's trimming, z-scoring and fit
    identity = [np.eye(x.shape[0]) for x in x_scans]  # features already at scan level
    y_runs = [zscore(trim_run(y, settings.trim_scans)) for y in y_scans]
    scans = {(1, "s"): scan_features(x_scans, identity, settings)}  # the runner's alignment, trim, z-score
    got = fit_all([(1, "s")], scans, y_runs, 0, settings, get_registry().metric("pearson"), None)

    test, chosen, validation = mindtransformer_reference(x_scans, y_scans)
    assert test[:20].mean() > 0.2 and abs(test[20:].mean()) < 0.1  # planted signal is found
    assert len(set(chosen)) > 1  # the alpha choice differs between outer folds: the test sees it
    np.testing.assert_allclose(got["test"][0], test, atol=1e-4)
    np.testing.assert_allclose(got["alpha"][0], np.exp(np.log(chosen).mean()), rtol=1e-5)
    np.testing.assert_allclose(got["validation_per_run"][0], validation, atol=1e-4)
    # the default inner leave-one-run-out is a different protocol: the comparison can tell them apart
    xs, ys = [zscore(trim_run(x, 10)) for x in x_scans], y_runs
    loro = fit_nested_loro(xs, ys, MT["alphas"], shared_alpha=True, inner="loro", precision="float32")
    assert np.abs(loro.test - test).max() > 1e-3


def test_inner_first_himalaya_agrees_with_torch():
    pytest.importorskip("himalaya")
    x_scans, y_scans = _data(seed=1, n_runs=4)
    xs = [_z(x[10:-10]).astype(np.float32) for x in x_scans]
    ys = [_z(y[10:-10]).astype(np.float32) for y in y_scans]
    for shared in (True, False):
        a = fit_nested_loro(xs, ys, MT["alphas"], shared_alpha=shared, inner="first", precision="float32")
        b = fit_nested_loro(xs, ys, MT["alphas"], shared_alpha=shared, inner="first", backend="himalaya")
        np.testing.assert_allclose(a.test_per_run, b.test_per_run, atol=1e-4)
        np.testing.assert_allclose(a.validation_per_run, b.validation_per_run, atol=1e-4)


def test_unknown_inner_is_an_error():
    x_scans, y_scans = _data(n_runs=3, n_voxels=4)
    with pytest.raises(MtbenchError, match="inner validation"):
        fit_nested_loro(x_scans, y_scans, [1.0], inner="second")


# --------------------------------------------------------------------------- settings
def test_resolve_protocol_settings_and_conflicts():
    base = {"model": "m", "dataset": "d", "states": ["s"]}
    default = RunSettings(**base)
    assert resolve_protocol(default) == default  # "mtbench" changes nothing
    mt = resolve_protocol(RunSettings(**base, protocol="mindtransformer"))
    assert (mt.trim_scans, mt.shared_alpha, mt.inner, mt.hrf, mt.precision) == (10, True, "first", "glover", "float32")
    np.testing.assert_allclose(mt.alphas, np.logspace(2, 7, 16))
    assert resolve_protocol(mt) == mt  # idempotent; the protocol's own values never conflict
    with pytest.raises(MtbenchError, match="conflicts with --trim 5"):
        resolve_protocol(RunSettings(**base, protocol="mindtransformer", trim_scans=5))
    with pytest.raises(MtbenchError, match="conflicts with --trim 0"):  # explicitly given default
        resolve_protocol(RunSettings(**base, protocol="mindtransformer"), explicit=["trim_scans"])
    with pytest.raises(MtbenchError, match="unknown protocol"):
        resolve_protocol(RunSettings(**base, protocol="other"))


def test_cli_conflicting_flag_is_one_line_error():
    from mtbench.cli import main

    result = CliRunner().invoke(main, ["run", "--model", "x", "--protocol", "mindtransformer", "--alphas", "1:10:3"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--protocol mindtransformer sets alphas" in lines[0] and "--alphas" in lines[0]


def test_runner_records_protocol_settings(tmp_path, monkeypatch):
    from mtbench.runner import run
    from mtbench_plugins.models.hf.tiny import save_tiny_llama

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    model = save_tiny_llama(tmp_path / "tiny-llama", seed=0, n_layers=2)
    settings = RunSettings(model=f"hf:{model}", dataset="synthetic", states=["input_hidden_state"], layers="1",
                           dataset_options={"scale": "tiny", "truth_model": f"hf:{model}", "truth": json.dumps(TRUTH)},
                           protocol="mindtransformer")
    output = run(settings, tmp_path / "results")
    manifest = json.loads((output.run_dir / "manifest.json").read_text())["settings"]
    assert manifest["protocol"] == "mindtransformer"
    assert manifest["trim_scans"] == 10 and manifest["shared_alpha"] is True and manifest["inner"] == "first"
    assert len(manifest["alphas"]) == 16 and manifest["precision_used"] == "float32"
    np.testing.assert_allclose(manifest["alphas"], np.logspace(2, 7, 16))
    assert asdict(settings)["trim_scans"] == 0  # the caller's settings are left alone
    # one alpha for all voxels: significance from a refit of null columns with the fit's alphas
    inflation = json.loads((output.run_dir / "manifest.json").read_text())["significance"]["null_inflation"]
    assert list(inflation) == ["L1-input_hidden_state"] and inflation["L1-input_hidden_state"] >= 1
    p_value = pq.read_table(output.run_dir / "voxels.parquet", columns=["p_value"]).column(0).to_numpy()
    assert ((p_value > 0) & (p_value <= 1)).all() and len(np.unique(p_value)) > 10
