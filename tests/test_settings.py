"""Every value of a run's settings is checked before anything loads, in one line naming it."""

from __future__ import annotations

import numpy as np
import pytest

from mtbench.settings import RunSettings
from mtbench.errors import MtbenchError
from mtbench.settings import resolve_protocol


def settings(**values) -> RunSettings:
    return RunSettings(**{"model": "random", "dataset": "synthetic", "states": ["all"], **values})


@pytest.mark.parametrize("values", [
    {},
    {"alphas": (1, 10.0)},
    {"alphas": np.logspace(0, 8, 9)},  # an array, as a script would pass it
    {"delays": np.arange(1, 5)},
    {"layers": [1, 3], "states": ["per_head_q", "ffn_output"]},
    {"layers": "1-5,8", "mode": 2, "inputs": ["per_head_q_rope", "ffn_output"]},
    {"trim_scans": np.int64(10), "seed": 3, "permutations": 0, "fdr": 0.1, "hrf": "fir", "inner": "first"},
])
def test_usable_values_pass(values):
    settings(**values).check()


def test_the_reference_protocol_passes():
    resolve_protocol(settings(protocol="mindtransformer")).check()


@pytest.mark.parametrize("values, message", [
    ({"alphas": "1e0:1e8:9"}, "alphas (--alphas) must be a non-empty list of positive, finite penalties"),
    ({"alphas": []}, "alphas (--alphas) must be a non-empty list"),
    ({"alphas": [1.0, float("nan")]}, "got [1.0, nan]"),
    ({"alphas": [0, 1]}, "positive, finite"),
    ({"hrf": "box"}, "hrf (--hrf) must be one of glover, spm, fir, got 'box'"),
    ({"trim_scans": -1}, "trim_scans (--trim) must be a whole number of scans >= 0"),
    ({"trim_scans": 2.5}, "got 2.5"),
    ({"seed": "1"}, "seed (--seed) must be a whole number, got '1'"),
    ({"permutations": -3}, "permutations (--permutations) must be a whole number >= 0"),
    ({"fdr": 1.0}, "fdr (--fdr) must be a level in (0, 1), got 1.0"),
    ({"shared_alpha": "yes"}, "shared_alpha must be true or false"),
    ({"inner": "kfold"}, "inner must be one of loro, first"),
    ({"backend": "cuda"}, "backend (--backend) must be one of torch, torch_cuda, himalaya, himalaya_cuda"),
    ({"precision": "bf16"}, "precision (--precision) must be one of"),
    ({"feature_dtype": "int8"}, "feature_dtype (--feature-dtype) must be one of float16, float32"),
    ({"delays": []}, "delays (--delays) must be a non-empty list of scans >= 0"),
    ({"delays": [1, -1]}, "got [1, -1]"),
    ({"states": "all"}, "states (--states) must be a list of state names"),  # was read as states a, l, l
    ({"inputs": "ffn_output"}, "inputs (--inputs) must be a list of state names"),
    ({"layers": 3}, "layers (--layers) must be 'all', a range such as '1-5,8', or a list"),  # was a TypeError
])
def test_bad_values_are_one_line_errors_naming_the_setting(values, message):
    with pytest.raises(MtbenchError) as err:
        settings(**values).check()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_first_line_of_an_error_never_fails_on_an_empty_message():
    from mtbench.errors import first_line

    assert first_line(ValueError("bad header\ntraceback detail")) == "bad header"
    assert first_line(OSError()) == "OSError"  # "".splitlines()[0] was an IndexError inside the error path


def test_tuples_arrays_and_numpy_numbers_mean_what_lists_mean(tmp_path):
    """A script's ``states=("all",)`` was an unknown state 'all'; arrays reached the JSON manifest."""
    import json

    import pyarrow.parquet as pq

    from mtbench.runner import run

    as_lists = settings(layers=[1], alphas=[1.0, 100.0, 1e4], permutations=0, hrf="fir", delays=[1, 2], trim_scans=2)
    as_a_script_writes_them = settings(states=("all",), layers=(np.int64(1),), alphas=np.logspace(0, 4, 3),
                                       permutations=np.int64(0), hrf="fir", delays=np.arange(1, 3),
                                       trim_scans=np.int64(2))
    assert as_a_script_writes_them == as_lists  # so a sweep cell hashes and resumes them alike
    runs = [run(s, tmp_path / str(i)).run_dir for i, s in enumerate((as_lists, as_a_script_writes_them))]
    recorded = [json.loads((r / "manifest.json").read_text())["settings"] for r in runs]
    assert recorded[0] == recorded[1] and recorded[1]["states"] == ["embedding"]
    scores = [pq.read_table(r / "scores.parquet").column("value").to_numpy() for r in runs]
    np.testing.assert_array_equal(scores[0], scores[1])


def test_a_run_that_fails_early_leaves_no_empty_output_folder(tmp_path):
    from mtbench.runner import run

    fresh = tmp_path / "fresh" / "results"
    with pytest.raises(MtbenchError, match="layer 3 is out of range"):
        run(settings(layers=[3]), fresh)
    assert not fresh.exists() and (tmp_path / "fresh").exists()  # only what the run made is removed
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(MtbenchError, match="layer 3 is out of range"):
        run(settings(layers=[3]), existing)
    assert existing.is_dir()  # the user's folder stays, even empty
