"""The example's analysis: its similarity measures, and a run of it that finds the planted parcel."""

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from mtbench.cli import main
from mtbench_example.rsa import linear_cka, rdm_similarity

HESCHL = "Heschl's Gyrus (includes H1 and H2)"


def test_cka_and_rdm_similarity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert abs(linear_cka(x, 3 * x @ rotation, null=False) - 1) < 1e-9  # invariant to scale and rotation
    assert abs(rdm_similarity(x, x, null=False) - 1) < 1e-9
    unrelated = [linear_cka(x, rng.normal(size=(60, 300)), null=False) for _ in range(50)]  # many voxels, few scans
    assert abs(np.mean(unrelated)) < 3 * np.std(unrelated) / np.sqrt(50) + 0.01  # debiased: no pull toward 1
    assert linear_cka(x, x[:, :4]) > 0.3 > max(unrelated)  # shared dimensions score higher
    # smooth in time (stationary: white noise through an 8-scan window), unrelated: raw CKA is large, the
    # circular-shift null takes it away
    window = np.hanning(8)

    def smooth(k):
        noise = rng.normal(size=(120, k))
        return np.stack([np.convolve(noise[:, j], window, mode="same") for j in range(k)], axis=1)

    pairs = [(smooth(8), smooth(300)) for _ in range(10)]
    assert np.mean([linear_cka(a, b, null=False) for a, b in pairs]) > 0.1
    assert abs(np.mean([linear_cka(a, b) for a, b in pairs])) < 0.05


def test_an_rsa_run_scores_the_planted_parcel_highest(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    truth = [{"parcel": HESCHL, "layer": 1, "state": "embedding"}]
    args = ["run", "--model", "random", "--mode", "rsa", "--dataset-option", "scale=tiny", "--dataset-option",
            "snr=4", "--dataset-option", "truth_model=random", "--dataset-option", f"truth={json.dumps(truth)}",
            "--out", str(tmp_path / "results")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = {row["parcel"]: row for row in pq.read_table(run_dir / "rsa_summary.parquet").to_pylist()}
    others = [row["cka"] for parcel, row in summary.items() if parcel not in (HESCHL, "whole brain")]
    assert summary[HESCHL]["cka"] > 0.1 > max(others)  # the planted parcel shares the state's geometry, noise none
    shown = CliRunner().invoke(main, ["rsa-table", str(run_dir), "--parcel", HESCHL])
    assert shown.exit_code == 0 and "embedding" in shown.output, shown.output
    wrong = CliRunner().invoke(main, ["rsa-table", str(run_dir), "--parcel", "Heschl"])
    assert wrong.exit_code == 2 and "no parcel named 'Heschl'" in wrong.output
