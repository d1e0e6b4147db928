"""An interrupted `mtbench run` keeps its finished fits and the same command resumes it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtbench import encoding
from mtbench.api import RunSettings
from mtbench.checkpoint import FitCheckpoint, fingerprint
from mtbench.runner import run
from mtbench.testing import make_tiny_llama

STATES = ["input_hidden_state", "per_head_v", "ffn_output"]
REAL_FIT = encoding.fit_nested_loro


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    model = make_tiny_llama(tmp_path / "tiny-llama", seed=0, n_layers=2)
    truth = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 2, "state": "per_head_v"}]
    return RunSettings(model=f"hf:{model}", dataset="synthetic", states=STATES, layers="all",
                       alphas=[1.0, 1e2, 1e4], permutations=50,
                       dataset_options={"scale": "tiny", "truth_model": f"hf:{model}", "truth": json.dumps(truth)})


class _Stop(Exception):
    pass


def _counting_fit(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Patch the ridge fit to count its calls (and raise after ``stop_after`` of them).

    Only the fits of the real BOLD count: each (layer, state) also refits shifted BOLD first to
    calibrate its significance (those calls return their predictions).
    """
    calls = []

    def fit(*args, **kwargs):
        if kwargs.get("return_predictions"):
            return REAL_FIT(*args, **kwargs)
        if stop_after is not None and len(calls) == stop_after:
            raise _Stop("interrupted")
        calls.append(1)
        return REAL_FIT(*args, **kwargs)

    monkeypatch.setattr(encoding, "fit_nested_loro", fit)
    return calls


def _scores(run_dir):
    return pq.read_table(run_dir / "voxels.parquet").to_pandas().sort_values(["layer", "state", "voxel"],
                                                                               ignore_index=True)


def test_an_interrupted_run_resumes_from_its_finished_fits(settings, tmp_path, monkeypatch):
    n_fits = 2 * len(STATES)
    # reference: the same run, never interrupted, in its own results folder
    reference = run(settings, tmp_path / "reference").run_dir
    assert not (tmp_path / "reference" / "checkpoints").exists()  # removed once the results are written

    calls = _counting_fit(monkeypatch, stop_after=4)
    with pytest.raises(_Stop):
        run(settings, tmp_path / "results")
    assert len(calls) == 4
    runs = tmp_path / "results" / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # no half-written run
    saved = list((tmp_path / "results" / "checkpoints").glob("*/*.npz"))
    assert len(saved) == 4  # each finished fit was kept at once

    calls = _counting_fit(monkeypatch)
    output = run(settings, tmp_path / "results")
    assert len(calls) == n_fits - 4  # only the fits that were missing
    assert not (tmp_path / "results" / "checkpoints").exists()
    resumed, fresh = _scores(output.run_dir), _scores(reference)
    for column in ("test", "validation", "alpha", "p_value"):
        np.testing.assert_array_equal(resumed[column].to_numpy(), fresh[column].to_numpy(), err_msg=column)
    inflation = json.loads((output.run_dir / "manifest.json").read_text())["significance"]["null_inflation"]
    assert len(inflation) == n_fits and min(inflation.values()) >= 1.0  # resumed fits kept their calibration
    assert inflation == json.loads((reference / "manifest.json").read_text())["significance"]["null_inflation"]


def test_a_changed_input_never_reuses_a_checkpoint(settings, tmp_path, monkeypatch):
    calls = _counting_fit(monkeypatch, stop_after=2)
    with pytest.raises(_Stop):
        run(settings, tmp_path / "results")
    # other alphas: the saved fits do not apply, everything is fitted again
    calls = _counting_fit(monkeypatch)
    changed = RunSettings(**{**settings.__dict__, "alphas": [1.0, 1e3]})
    run(changed, tmp_path / "results")
    assert len(calls) == 2 * len(STATES)
    # the first run's checkpoint is left for its own command to resume
    assert len(list((tmp_path / "results" / "checkpoints").glob("*/*.npz"))) == 2


def test_fingerprint_covers_the_data_and_a_truncated_fit_is_refitted(tmp_path):
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    key = fingerprint({"a": 1}, [y])
    assert key == fingerprint({"a": 1}, [y.copy()])
    assert key != fingerprint({"a": 1}, [y + 1e-6])
    assert key != fingerprint({"a": 2}, [y])
    checkpoint = FitCheckpoint(tmp_path, key)
    checkpoint.save("L1-x", {"test": y[0]})
    np.testing.assert_array_equal(checkpoint.load("L1-x")["test"], y[0])
    path = checkpoint.folder / "L1-x.npz"
    path.write_bytes(path.read_bytes()[:20])  # e.g. a disk that filled up mid-write elsewhere
    assert checkpoint.load("L1-x") is None and not path.exists()
    checkpoint.remove()
    assert not (tmp_path / "checkpoints").exists()
