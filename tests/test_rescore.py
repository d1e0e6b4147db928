"""`mtbench rescore`: another metric refits only (the run's own alphas), other parcels fit nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from mtbench_plugins.analyses.mode1 import rescore as mode1_rescore  # where rescoring refits
from mtbench.api import MetricEntry
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry
from mtbench_plugins.commands.runs.rescore import rescore
from mtbench_plugins.analyses.mode1.tables import read_score_table
from mtbench.runner import run
from run_helpers import tiny_run_settings, voxel_table

STATES = ["input_hidden_state", "per_head_v"]
NEG_MSE = MetricEntry(name="neg-mse", summary="negative mean squared error",
                      score=lambda t, p: -((t - p) ** 2).mean(0))


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setitem(get_registry().entries["metric"], "neg-mse", NEG_MSE)
    return tiny_run_settings(tmp_path, monkeypatch, STATES, "per_head_v", permutations=50)


@pytest.fixture
def first_run(settings, tmp_path):
    return run(settings, tmp_path / "results").run_dir


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _summary(run_dir):
    return pq.read_table(run_dir / "summary.parquet").to_pandas().drop(columns=["run_id", "metric"])


def test_folds_round_trip(first_run):
    """folds.parquet holds what the summary is made of: its per-fold means are voxels.parquet's."""
    table = read_score_table(first_run)
    voxels = voxel_table(first_run)
    n_fits = len(table.keys)
    assert table.keys == [(1, "input_hidden_state"), (1, "per_head_v"), (2, "input_hidden_state"), (2, "per_head_v")]
    np.testing.assert_allclose(table.test_per_run.mean(1).ravel(), voxels["test"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.validation_per_run.mean(1).ravel(), voxels["validation"], rtol=1e-5, atol=1e-6)
    # the reported alpha is the geometric mean over folds of the per-fold alphas
    np.testing.assert_allclose(np.exp(np.log(table.alpha_per_run).mean(1)).ravel(), voxels["alpha"], rtol=1e-4)
    assert set(np.unique(table.alpha_per_run)) <= {1.0, 1e2, 1e4}
    assert table.p_value.shape == (n_fits, table.test.shape[1])


def test_another_metric_refits_with_the_runs_alphas_and_equals_a_run_with_that_metric(settings, first_run, tmp_path,
                                                                                     monkeypatch):
    before = _digest(first_run)
    direct = run(replace(settings, metric="neg-mse"), tmp_path / "direct").run_dir

    calls = []
    real = mode1_rescore.fit_nested_loro

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mode1_rescore, "fit_nested_loro", recorded)
    output = rescore(first_run, metric="neg-mse")
    assert len(calls) == 4 and all(c["alpha_per_run"] is not None and c["score"].function is NEG_MSE.score
                                for c in calls)  # its plugin named if it raises
    assert output.run_dir == first_run.parent / f"{first_run.name}-neg-mse"

    rescored, fresh, original = voxel_table(output.run_dir), voxel_table(direct), voxel_table(first_run)
    assert (rescored["test"] < 0).all()  # negative MSE, no longer r
    np.testing.assert_allclose(rescored["test"], fresh["test"], rtol=1e-5, atol=1e-6)
    for column in ("validation", "alpha", "p_value"):  # the run's own: chosen on validation Pearson r
        np.testing.assert_array_equal(rescored[column], original[column], err_msg=column)
    got, want = _summary(output.run_dir), _summary(direct)
    assert list(got["state"]) == list(want["state"]) and list(got["layer"]) == list(want["layer"])
    np.testing.assert_allclose(got["test"], want["test"], rtol=1e-5, atol=1e-6)
    manifest = json.loads((output.run_dir / "manifest.json").read_text())
    assert manifest["settings"]["metric"] == "neg-mse"
    assert manifest["rescored_from"] == {"run_id": first_run.name, "metric": "pearson", "parcels": None,
                                         "refitted": True}
    assert set(pq.read_table(output.run_dir / "scores.parquet")["metric"].to_pylist()) == {"neg-mse"}
    assert _digest(first_run) == before  # the original run is untouched


def test_other_parcels_fit_nothing_and_match_the_datasets_own(first_run, tmp_path, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("rescoring on parcels must not fit")

    monkeypatch.setattr(mode1_rescore, "fit_nested_loro", no_fit)
    mask_img = nib.load(first_run / "maps" / "mask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    voxels = voxel_table(first_run)
    labels = voxels["parcel_id"].to_numpy()[: int(mask.sum())]
    original = pq.read_table(first_run / "summary.parquet").to_pandas()

    # the dataset's own parcels, as an image and a names file: the same summary
    volume = np.zeros(mask.shape, np.int16)
    volume[mask] = labels
    nib.save(nib.Nifti1Image(volume, mask_img.affine), tmp_path / "same.nii.gz")
    names = original[original["parcel_id"] >= 0][["parcel_id", "parcel"]]
    (tmp_path / "names.tsv").write_text("label\tname\n" + "".join(f"{i}\t{n}\n" for i, n in names.values))
    same = rescore(first_run, parcels=tmp_path / "same.nii.gz", parcel_names=tmp_path / "names.tsv")
    got = _summary(same.run_dir)
    pd_cols = [c for c in got.columns if got[c].dtype.kind == "f"]
    assert list(got["parcel"]) == list(original["parcel"]) and list(got["state"]) == list(original["state"])
    np.testing.assert_allclose(got[pd_cols].to_numpy(), original[pd_cols].to_numpy(), rtol=1e-6, equal_nan=True)

    # two coarse parcels (left/right of the x midline) on a 2x finer grid: resampled nearest
    coords = np.argwhere(mask)
    halves = np.where(coords[:, 0] < mask.shape[0] // 2, 1, 2)
    coarse = np.zeros(mask.shape, np.int16)
    coarse[mask] = halves
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    affine = mask_img.affine.copy()
    affine[:3, :3] /= 2
    affine[:3, 3] -= np.diag(mask_img.affine)[:3] / 4  # voxel centres of the finer grid
    nib.save(nib.Nifti1Image(fine, affine), tmp_path / "halves.nii.gz")
    output = rescore(first_run, parcels=tmp_path / "halves.nii.gz")
    summary = _summary(output.run_dir).set_index("parcel")
    assert list(summary.index) == ["whole brain", "parcel 1", "parcel 2"]
    fits = list(dict.fromkeys(zip(voxels["layer"], voxels["state"])))
    for label in (1, 2):
        row = summary.loc[f"parcel {label}"]
        assert row["n_voxels"] == int((halves == label).sum())
        # winner: the fit with the highest parcel-mean validation r, computed here from voxels.parquet
        means = [(voxels[(voxels["layer"] == layer) & (voxels["state"] == state)]["validation"].to_numpy()
                  [halves == label].mean(), layer, state) for layer, state in fits]
        _, layer, state = max(means)
        assert (row["layer"], row["state"]) == (layer, state)
        winner = voxels[(voxels["layer"] == layer) & (voxels["state"] == state)]["test"].to_numpy()
        assert row["winner_test"] == pytest.approx(winner[halves == label].mean(), rel=1e-5)
    manifest = json.loads((output.run_dir / "manifest.json").read_text())
    assert manifest["rescored_from"]["refitted"] is False and manifest["dataset"]["atlas"].startswith("halves")


def test_rescore_refuses_in_one_line(first_run, tmp_path):
    with pytest.raises(MtbenchError, match="nothing to rescore"):
        rescore(first_run)
    with pytest.raises(MtbenchError, match="unknown metric 'spearmann'"):
        rescore(first_run, metric="spearmann")
    rescore(first_run, metric="neg-mse", run_id="mine")
    with pytest.raises(MtbenchError, match="already exists; give another --run-id"):
        rescore(first_run, metric="neg-mse", run_id="mine")
    empty = np.zeros(nib.load(first_run / "maps" / "mask.nii.gz").shape, np.int16)
    nib.save(nib.Nifti1Image(empty, np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(MtbenchError, match="no labelled voxel inside the run's mask"):
        rescore(first_run, parcels=tmp_path / "empty.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(MtbenchError, match="cannot read parcels"):
        rescore(first_run, parcels=tmp_path / "broken.nii.gz")
    damaged = first_run.parent / "damaged"  # a folds.parquet without its alpha column
    shutil.copytree(first_run, damaged)
    folds = pq.read_table(damaged / "folds.parquet")
    pq.write_table(folds.drop_columns(["alpha"]), damaged / "folds.parquet")
    with pytest.raises(MtbenchError, match="folds.parquet: column 'alpha' is missing"):
        rescore(damaged, metric="neg-mse")
    older = first_run.parent / "older"
    shutil.copytree(first_run, older)
    (older / "folds.parquet").unlink()  # as written by an mtbench that did not keep per-fold scores
    with pytest.raises(MtbenchError, match="no folds.parquet"):
        rescore(older, metric="neg-mse")
    # a copy outside any results folder: the new run goes where --out says, never to a guessed grandparent
    copy = shutil.copytree(first_run, tmp_path / "shared" / "a-run")
    with pytest.raises(MtbenchError, match=r"a-run is not in a results folder \(RESULTS/runs/<id>\); say where the "
                                           r"new run goes with --out RESULTS$"):
        rescore(copy, metric="neg-mse")
    assert not (tmp_path / "runs").exists()
    output = rescore(copy, metric="neg-mse", run_id="copied", results_dir=tmp_path / "elsewhere")
    assert output.run_dir == tmp_path / "elsewhere" / "runs" / "copied"


def test_leaderboard_keeps_metrics_apart_and_leaves_out_other_parcels(first_run, tmp_path):
    from mtbench_plugins.commands.board import leaderboard

    by_metric = rescore(first_run, metric="r2")  # a built-in metric
    mask_img = nib.load(first_run / "maps" / "mask.nii.gz")
    nib.save(nib.Nifti1Image((np.asarray(mask_img.dataobj) > 0).astype(np.int16), mask_img.affine),
             tmp_path / "one.nii.gz")
    by_parcels = rescore(first_run, parcels=tmp_path / "one.nii.gz")
    board = leaderboard.build([tmp_path / "results"])
    _, models = leaderboard.wide(board)
    assert sorted((m["metric"], m["run_id"]) for m in models) == [("pearson", first_run.name),
                                                                   ("r2", by_metric.run_dir.name)]
    assert all(m["rank"] == 1 for m in models)  # each metric ranks on its own
    assert any(note.startswith(f"{by_parcels.run_dir.name}: rescored on other parcels") for note in board.notes)


def test_no_folds_writes_the_same_scores_without_folds_parquet(settings, first_run, tmp_path):
    """`--no-folds` is an output choice: every score is the run's own, only folds.parquet is missing,
    the manifest says so, and rescore refuses that run in one line naming the cause."""
    lean = run(settings, tmp_path / "lean", folds=False).run_dir
    assert not (lean / "folds.parquet").exists() and (first_run / "folds.parquet").is_file()
    assert json.loads((lean / "manifest.json").read_text())["folds_file"] is False
    assert json.loads((first_run / "manifest.json").read_text())["folds_file"] is True
    full, thin = voxel_table(first_run), voxel_table(lean)
    for column in ("test", "validation", "alpha", "p_value"):
        np.testing.assert_array_equal(thin[column], full[column])
    with pytest.raises(MtbenchError, match="no folds.parquet .*--no-folds"):
        rescore(lean, metric="neg-mse")


def test_no_folds_flag_reaches_the_runner(monkeypatch):
    from click.testing import CliRunner

    from mtbench.cli import main
    from mtbench.cli import run_command

    seen = []

    def fake_run(settings, results_dir, progress=None, folds=True):
        seen.append(folds)
        raise MtbenchError("stop here")

    monkeypatch.setattr(run_command, "run_pipeline", fake_run)
    for flags, expected in (([], True), (["--no-folds"], False), (["--folds"], True)):
        result = CliRunner().invoke(main, ["run", "--model", "random", *flags])
        assert "stop here" in result.output
        assert seen[-1] is expected
