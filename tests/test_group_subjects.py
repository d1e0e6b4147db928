"""Simulated subjects of the `synthetic` dataset, and `mtbench compare` across subjects (group test).

Subject k is the average's signal plus sqrt(n) x its own AR(1) noise, so a split half of n/2 subjects
has split-half reliability (snr/2) / (1 + snr/2): the relation lpp-en-sim uses to derive its SNR from
the real ISC.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mtbench_plugins.commands.compare.schema import validate_comparison
from mtbench_plugins.datasets.synthetic import load_synthetic
from run_helpers import tiny_run_settings

from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench.runner import run


@pytest.fixture(scope="module")
def tiny_truth(atlas_cache):
    """A tiny synthetic dataset's options (random-baseline truth model: no torch model to build), with the
    session's cache (the atlas derived once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTBENCH_CACHE", str(atlas_cache))
        yield _options()


def _options():
    from mtbench_plugins.pytest_fixtures import TINY_DATASET_OPTIONS

    return dict(TINY_DATASET_OPTIONS)


def test_subjects_leave_the_average_untouched(tiny_truth):
    plain = load_synthetic(**tiny_truth)
    with_subjects = load_synthetic(**tiny_truth, subjects=6)
    assert plain.subjects == ["average"]
    assert with_subjects.subjects == ["average"] + [f"sub-0{k}" for k in range(1, 7)]
    for a, b in zip(plain.load_bold("average"), with_subjects.load_bold("average")):
        assert np.array_equal(a, b)  # bit for bit
    assert "subjects" not in plain.truth and with_subjects.truth["subjects"]["n"] == 6
    one, two = with_subjects.load_bold("sub-01"), with_subjects.load_bold("sub-02")
    assert not np.array_equal(one[0], two[0])
    assert np.array_equal(one[0], with_subjects.load_bold("sub-01")[0])  # deterministic
    assert with_subjects.expand_subjects("all") == with_subjects.subjects[1:]
    assert with_subjects.expand_subjects("sub-02,sub-05") == ["sub-02", "sub-05"]
    ceiling = with_subjects.noise_ceiling("sub-01")
    assert np.all(ceiling <= with_subjects.noise_ceiling("average"))


def test_unknown_subject_and_bad_option_are_one_line(tiny_truth):
    with pytest.raises(MtbenchError, match="subjects=N"):
        load_synthetic(**tiny_truth).load_bold("sub-01")
    with pytest.raises(MtbenchError, match="no subject 'sub-09'"):
        load_synthetic(**tiny_truth, subjects=3).expand_subjects("sub-01,sub-09")
    with pytest.raises(MtbenchError, match="subjects must be between"):
        load_synthetic(**tiny_truth, subjects=-1)


def test_split_half_reliability_of_simulated_subjects_matches_the_formula(tiny_truth, monkeypatch, tmp_path):
    """20 subjects, halves of 10: in planted voxels the correlation of the two halves' mean time series is
    (snr_v/2) / (1 + snr_v/2) per voxel; its mean over the planted voxels matches within 0.05 (the
    split-half r of one voxel over ~250 autocorrelated scans has SD ~0.08; ~120 voxels average it)."""
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    dataset = load_synthetic(**tiny_truth, subjects=20)
    bold = [np.concatenate(dataset.load_bold(s)) for s in dataset.subjects[1:]]
    half_a, half_b = np.mean(bold[:10], 0), np.mean(bold[10:], 0)
    za = (half_a - half_a.mean(0)) / half_a.std(0)
    zb = (half_b - half_b.mean(0)) / half_b.std(0)
    measured = (za * zb).mean(0)
    planted = dataset.noise_ceiling("average") > 0
    snr = dataset._snr_v[planted]
    expected = (snr / 2) / (1 + snr / 2)
    assert abs(measured[planted].mean() - expected.mean()) < 0.05, (measured[planted].mean(), expected.mean())
    assert abs(measured[~planted].mean()) < 0.03  # null voxels: only noise, nothing shared


@pytest.mark.slow
def test_compare_across_simulated_subjects(tmp_path, monkeypatch):
    """4 subjects (tiny Llama, 2 layers): per-subject comparisons plus the group's one-sample t-test, in
    one folder the schema validates; the group's Δr is the mean of the subjects'."""
    settings = tiny_run_settings(tmp_path, monkeypatch, ["per_head_q", "per_head_q_rope"], "per_head_q_rope",
                                 permutations=0)
    settings = replace(settings, dataset_options={**settings.dataset_options, "subjects": 4})
    runs = [run(replace(settings, subject=f"sub-0{k}"), tmp_path / "results").run_dir for k in range(1, 5)]
    out = tmp_path / "group"
    result = CliRunner().invoke(main, ["compare", ",".join(map(str, runs)), "--a", "L2:per_head_q_rope", "--b",
                                       "L2:per_head_q", "--out", str(out), "--group-test", "sign-flip"])
    assert result.exit_code == 0, result.output
    manifest = validate_comparison(out)
    assert manifest["subjects"] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert manifest["test"]["group"].startswith("sign-flip")
    voxels = pq.read_table(out / "voxels.parquet").to_pandas()
    per_subject = voxels[voxels.subject != "group"].pivot(index="voxel", columns="subject", values="delta")
    group = voxels[voxels.subject == "group"].set_index("voxel")
    np.testing.assert_allclose(group["delta"], per_subject.mean(axis=1), atol=1e-5)
    assert "group" in result.output
    assert np.all(group["p_value"] >= 2 / 16 - 1e-12)  # 4 subjects: the 16 sign flips, exact
    json.loads((out / "manifest.json").read_text())
