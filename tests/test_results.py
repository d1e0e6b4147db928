"""Scores to results: the nested best-fit choice, parcel summaries, atomic writing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from concurrency import at_once

from mtbench.errors import MtbenchError
from mtbench.paths import exclusive_lock
from mtbench.results import nested_best, write_run
from mtbench_plugins.analyses.mode1.analysis import Mode1Result
from mtbench_plugins.analyses.mode1.tables import ScoreTable, summarize, winning_ratios


def noise_table(rng, n_fits=40, n_runs=4, n_voxels=300):
    """Fits with no signal: per-fold validation and test scores are independent noise."""
    val = rng.normal(0, 0.1, (n_fits, n_runs, n_voxels)).astype(np.float32)
    test = rng.normal(0, 0.1, (n_fits, n_runs, n_voxels)).astype(np.float32)
    keys = [(1 + f // 4, f"state{f % 4}") for f in range(n_fits)]
    return ScoreTable(keys=keys, test=test.mean(1), validation=val.mean(1), alpha=np.ones((n_fits, n_voxels)),
                      test_per_run=test, validation_per_run=val)


def test_nested_choice_is_unbiased_on_noise():
    rng = np.random.default_rng(0)
    table = noise_table(rng)
    nested = nested_best(table.validation_per_run, table.test_per_run)
    assert abs(nested.mean()) < 0.01  # selection inside each fold: nothing to gain on noise
    # the best test score, cherry-picked, is far above zero: what a biased protocol reports
    assert table.test.max(0).mean() > 0.1


def test_nested_choice_uses_only_each_folds_validation():
    # fit 0 wins validation in fold 0 only, fit 1 in folds 1-3; test scores identify who was picked
    val = np.zeros((2, 4, 1))
    val[0, 0], val[1, 1:] = 1, 1
    test = np.array([[10.0, 20, 30, 40], [1.0, 2, 3, 4]])[:, :, None]
    assert nested_best(val, test)[0] == pytest.approx((10 + 2 + 3 + 4) / 4)


def test_summary_finds_the_planted_parcel():
    rng = np.random.default_rng(1)
    table = noise_table(rng, n_voxels=200)
    labels = np.repeat([1, 2], 100)
    table.validation_per_run[7, :, :100] += 0.5
    table.test_per_run[7, :, :100] += 0.5
    table.validation = table.validation_per_run.mean(1)
    table.test = table.test_per_run.mean(1)
    rows = summarize(table, labels, {1: "planted", 2: "null"}, ceiling=np.full(200, 0.8))
    by = {r["parcel"]: r for r in rows}
    assert (by["planted"]["layer"], by["planted"]["state"]) == table.keys[7]
    assert by["planted"]["folds_agree"] == 1.0
    assert by["planted"]["test"] == pytest.approx(0.5, abs=0.05)
    assert by["planted"]["test_normalized"] == pytest.approx(by["planted"]["test"] / 0.8)
    assert abs(by["null"]["test"]) < 0.05
    assert rows[0]["parcel"] == "whole brain" and rows[0]["n_voxels"] == 200


def make_inputs(rng):
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1:4, 1:5, 2:6] = True
    n_voxels = int(mask.sum())
    table = noise_table(rng, n_fits=8, n_voxels=n_voxels)
    labels = (np.arange(n_voxels) % 3).astype(int)
    meta = {"run_id": "r1", "model": {"name": "m"}, "dataset": {"name": "d"},
            "settings": {"subject": "average", "metric": "pearson"}}
    return meta, table, nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), labels


def test_write_run_layout(tmp_path):
    meta, table, mask_img, labels = make_inputs(np.random.default_rng(2))
    run_dir = write_run(tmp_path, "r1", meta, Mode1Result(table, labels, {1: "a", 2: "b"}, None, 0.05), mask_img,
                        {"planted": []})
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "manifest.json", "maps", "scores.parquet", "summary.parquet", "truth.json", "voxels.parquet", "winners.parquet"]
    voxels = pq.read_table(run_dir / "voxels.parquet")
    assert voxels.num_rows == 8 * labels.size
    np.testing.assert_array_equal(voxels.column("test").to_numpy().reshape(8, -1), table.test)
    best_state = nib.load(run_dir / "maps" / "best_state.nii.gz")
    codes = json.loads((run_dir / "maps" / "index.json").read_text())["best_state.nii.gz"]
    winners = np.argmax(table.validation, axis=0)
    inside = np.asarray(best_state.dataobj)[np.asarray(mask_img.dataobj) > 0]
    assert [codes[str(c)] for c in inside] == [table.keys[w][1] for w in winners]


def test_interrupted_write_leaves_nothing_and_keeps_earlier_runs(tmp_path):
    meta, table, mask_img, labels = make_inputs(np.random.default_rng(3))
    first = write_run(tmp_path, "r1", meta, Mode1Result(table, labels, {1: "a"}, None, 0.05), mask_img, None)
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    with pytest.raises(IndexError):  # a ceiling of the wrong size fails mid-way through the files
        write_run(tmp_path, "r2", dict(meta, run_id="r2"), Mode1Result(table, labels, {1: "a"}, np.ones(3), 0.05),
                  mask_img, None)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r1"]
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before
    with pytest.raises(FileExistsError):
        write_run(tmp_path, "r1", meta, Mode1Result(table, labels, {1: "a"}, None, 0.05), mask_img, None)


class _SlowTable:
    """A Mode 1 run whose writing takes half a second, so that two writers overlap."""

    def __init__(self, result):
        self.result = result

    def write_files(self, partial, meta, mask_img, truth):
        self.result.write_files(partial, meta, mask_img, truth)
        time.sleep(0.5)


def _write_slowly(results_dir: str, unique: bool, wait: float = 0.0) -> dict:
    """One process's ``write_run`` of run "r1", ``wait`` seconds late: what it wrote, as the files say."""
    time.sleep(wait)
    meta, table, mask_img, labels = make_inputs(np.random.default_rng(5))
    run_dir = write_run(Path(results_dir), "r1", meta, _SlowTable(Mode1Result(table, labels, {1: "a"}, None, 0.05)),
                        mask_img, None,
                        unique=unique)
    return {"folder": run_dir.name, "manifest": json.loads((run_dir / "manifest.json").read_text())["run_id"],
            "scores": sorted(set(pq.read_table(run_dir / "scores.parquet").column("run_id").to_pylist())),
            "rows": pq.read_table(run_dir / "voxels.parquet").num_rows, "files": sorted(p.name for p in run_dir.iterdir())}


def test_two_identical_runs_written_at_once_get_one_complete_folder_each(tmp_path):
    """Two runs of one command that finish in the same second share a generated id: the second gets <id>-2."""
    written = at_once(_write_slowly, (str(tmp_path), True), (str(tmp_path), True))
    assert sorted(w["folder"] for w in written) == ["r1", "r1-2"], written
    for w in written:  # each folder says its own id everywhere, and is whole
        assert w["manifest"] == w["folder"] and w["scores"] == [w["folder"]]
        assert w["rows"] == 8 * 48 and w["files"] == written[0]["files"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r1", "r1-2"]


def test_a_given_id_being_written_is_refused_and_the_writer_finishes(tmp_path):
    """A second writer of one explicit id, arriving mid-write, is refused and touches nothing."""
    first, second = at_once(_write_slowly, (str(tmp_path), False), (str(tmp_path), False, 0.2))
    assert isinstance(first, dict), first
    assert first["folder"] == first["manifest"] == "r1" and first["rows"] == 8 * 48
    assert isinstance(second, str) and second.startswith("MtbenchError: ") and "being written" in second, second
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "runs").iterdir())


def test_a_partial_left_by_a_dead_run_is_replaced_and_a_live_one_kept(tmp_path):
    meta, table, mask_img, labels = make_inputs(np.random.default_rng(6))
    partial = tmp_path / "runs" / "r1.partial"
    partial.mkdir(parents=True)
    (partial / "junk").write_text("from a run that was killed")
    (partial / ".writing").write_text("host 1 r1")  # nobody holds it: its writer died
    run_dir = write_run(tmp_path, "r1", dict(meta), Mode1Result(table, labels, {1: "a"}, None, 0.05), mask_img, None)
    assert not (run_dir / "junk").exists() and not (run_dir / ".writing").exists()
    assert not partial.exists()
    (tmp_path / "runs" / "r2.partial").write_text("a stray file, not a run")  # was NotADirectoryError
    assert write_run(tmp_path, "r2", dict(meta), Mode1Result(table, labels, {1: "a"}, None, 0.05), mask_img, None).is_dir()
    assert not (tmp_path / "runs" / "r2.partial").exists()

    partial = tmp_path / "runs" / "r9.partial"
    partial.mkdir()
    (partial / "theirs").write_text("being written")
    with exclusive_lock(partial / ".writing", owner="r9"):  # another writer, alive (a lock of its own)
        with pytest.raises(MtbenchError, match="being written by another process.*r9"):
            write_run(tmp_path, "r9", dict(meta, run_id="r9"), Mode1Result(table, labels, {1: "a"}, None, 0.05),
                      mask_img, None)
        again = dict(meta)
        run_dir = write_run(tmp_path, "r9", again, Mode1Result(table, labels, {1: "a"}, None, 0.05), mask_img, None,
                            unique=True)
        assert run_dir.name == again["run_id"] == "r9-2"
    assert (partial / "theirs").read_text() == "being written"


def test_winning_ratios_count_validation_winners():
    rng = np.random.default_rng(4)
    table = noise_table(rng, n_fits=6, n_voxels=60)
    labels = np.repeat([1, 2], 30)
    table.validation[2, :20] += 5  # fit 2 wins 20 of parcel 1's 30 voxels, and no other
    table.validation[2, 20:] -= 5
    rows = [r for r in winning_ratios(table, labels, {1: "p1", 2: "p2"}) if r["parcel"] == "p1"]
    assert (rows[0]["layer"], rows[0]["state"], rows[0]["n_won"]) == (*table.keys[2], 20)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["n_won"] for r in rows) == 30
