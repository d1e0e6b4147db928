"""`mtbench run` end to end on a tiny synthetic dataset planted with a tiny random Llama.

The embedded proof that the harness works: the planted (layer, state) must win in its
parcel, and a parcel that got only noise must score near zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from mtbench_plugins.models.hf.tiny import save_tiny_llama

PLANTED = [
    {"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "per_head_q_rope"},
    {"parcel": "Superior Temporal Gyrus, posterior division", "layer": 3, "state": "ffn_activated_state"},
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model = save_tiny_llama(root / "tiny-llama", seed=0, n_layers=3)
    return root, model


def run_cli(root: Path, model: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MTBENCH_CACHE=str(root / "cache"), COLUMNS="200")
    args = [
        sys.executable, "-m", "mtbench.cli", "run",
        "--model", f"hf:{model}", "--states", "all",
        "--dataset", "synthetic",
        "--dataset-option", "scale=tiny",
        "--dataset-option", "snr=2.0",
        "--dataset-option", f"truth_model=hf:{model}",
        "--dataset-option", f"truth={json.dumps(PLANTED)}",
        "--out", str(out),
    ]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def first_run(workspace):
    root, model = workspace
    result = run_cli(root, model, root / "results")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((root / "results" / "runs").iterdir())
    assert len(runs) == 1
    return result, runs[0]


def test_planted_truth_is_recovered(first_run):
    result, run_dir = first_run
    table = pq.read_table(run_dir / "summary.parquet").to_pylist()
    by_parcel = {row["parcel"]: row for row in table}
    for plant in PLANTED:
        row = by_parcel[plant["parcel"]]
        assert (row["layer"], row["state"]) == (plant["layer"], plant["state"]), row
        assert row["test"] > 0.2, row  # a real held-out fit (nested choice), not a fluke
    nulls = [row for row in table if row["parcel_id"] > 0 and row["parcel"] not in {p["parcel"] for p in PLANTED}]
    assert nulls, "the tiny dataset must keep null parcels"
    for row in nulls:
        assert abs(row["test"]) < 0.05, row
        assert abs(row["voxel_best_test"]) < 0.05, row
    assert "recovered?" in result.stdout and "no" not in _truth_lines(result.stdout)


def _truth_lines(stdout: str) -> str:
    block = stdout.split("recovered?", 1)[1]
    return " ".join(line.split()[-1] for line in block.splitlines() if "L" in line and "│" in line)


def test_results_layout_and_provenance(first_run, workspace):
    _, run_dir = first_run
    root, model = workspace
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model"]["spec"] == f"hf:{model}"
    assert len(manifest["model"]["revision"]) >= 12
    assert manifest["dataset"]["name"] == "synthetic" and manifest["dataset"]["version"]
    assert manifest["mtbench_version"] and "git_commit" in manifest
    assert manifest["settings"]["seed"] == 0 and manifest["settings"]["layers"] == [1, 2, 3]
    assert len(manifest["settings"]["states"]) == 13

    scores = pq.read_table(run_dir / "scores.parquet")
    assert json.loads(scores.schema.metadata[b"mtbench"])["model"]["revision"] == manifest["model"]["revision"]
    rows = scores.to_pylist()
    assert {r["split"] for r in rows} == {"test", "validation"}
    assert {(r["layer"], r["state"]) for r in rows} == {(layer, s) for layer in (1, 2, 3) for s in manifest["settings"]["states"]}

    mask = nib.load(run_dir / "maps" / "mask.nii.gz")
    assert mask.shape == (37, 46, 38)
    n_voxels = int(np.asarray(mask.dataobj).sum())
    voxels = pq.read_table(run_dir / "voxels.parquet")
    assert voxels.num_rows == 39 * n_voxels
    best = nib.load(run_dir / "maps" / "best_test_r.nii.gz").get_fdata()
    assert best.shape == (37, 46, 38) and np.isfinite(best).all()
    per_state = nib.load(run_dir / "maps" / "test_r_ffn_activated_state.nii.gz")
    assert per_state.shape == (37, 46, 38, 3)
    # the map and the Parquet agree on the planted voxels
    vox = voxels.to_pydict()
    sel = [i for i, (layer, s) in enumerate(zip(vox["layer"], vox["state"])) if layer == 3 and s == "ffn_activated_state"]
    volume = np.asarray(per_state.dataobj)[..., 2][np.asarray(mask.dataobj) > 0]
    np.testing.assert_allclose(volume, np.asarray(vox["test"])[sel], atol=1e-6)
    truth = json.loads((run_dir / "truth.json").read_text())
    assert [(p["layer"], p["state"]) for p in truth["planted"]] == [(p["layer"], p["state"]) for p in PLANTED]


def test_second_run_reuses_cache_and_agrees(first_run, workspace):
    _, run_dir = first_run
    root, model = workspace
    again = run_cli(root, model, root / "results")
    assert again.returncode == 0, again.stderr[-3000:]
    runs = sorted(p for p in (root / "results" / "runs").iterdir())
    assert len(runs) == 2 and not any(p.name.endswith(".partial") for p in runs)
    assert "cached" in again.stdout
    a = pq.read_table(runs[0] / "scores.parquet").column("value").to_numpy()
    b = pq.read_table(runs[1] / "scores.parquet").column("value").to_numpy()
    np.testing.assert_array_equal(a, b)
