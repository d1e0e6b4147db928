"""Leaderboard statistics (mtbench_plugins.commands.compare.board_stats): per-fold nested scores read back
from folds.parquet, the paired t-test across test runs, ties with the leader and the pairwise table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from mtbench_plugins.commands.board import leaderboard
from mtbench_plugins.commands.compare import board_stats
from run_helpers import tiny_run_settings

from mtbench.runner import run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("board")
    with pytest.MonkeyPatch.context() as mp:
        settings = tiny_run_settings(tmp, mp, ["per_head_q", "per_head_q_rope"], "per_head_q_rope", permutations=0)
        yield run(settings, tmp / "results").run_dir


def test_fold_scores_are_the_summarys_nested_scores(tiny_run):
    """The mean over folds of the per-fold nested score is summary.parquet's ``test``, per parcel."""
    scores = board_stats.fold_scores(tiny_run)
    summary = pq.read_table(tiny_run / "summary.parquet").to_pylist()
    assert {row["parcel_id"] for row in summary} == set(scores)
    for row in summary:
        assert scores[row["parcel_id"]].mean() == pytest.approx(row["test"], abs=1e-5)
        assert scores[row["parcel_id"]].size == 4  # the tiny dataset's runs


def test_paired_t_rejects_at_most_the_nominal_rate_on_null_per_run_scores():
    """5,000 repetitions of two models whose per-run scores differ by independent noise only (9 runs): the
    corrected paired t-test rejects at p < 0.05 in at most 0.05 + 2.58 sqrt(0.05 x 0.95 / 5000) = 0.058
    (measured 0.012: the correction for folds sharing training runs is conservative when they do not),
    and its 95% intervals cover a planted 0.01 difference in at least 95% of 5,000 more (measured 0.990)."""
    rng = np.random.default_rng(0)
    base = rng.normal(0.1, 0.05, (5000, 9))
    null = [board_stats.paired_t(b + rng.normal(0, 0.01, 9), b + rng.normal(0, 0.01, 9))["p_value"] for b in base]
    assert np.mean(np.array(null) < 0.05) <= 0.05 + 2.58 * np.sqrt(0.05 * 0.95 / 5000)
    covered = []
    for b in base:
        t = board_stats.paired_t(b + 0.01 + rng.normal(0, 0.01, 9), b + rng.normal(0, 0.01, 9))
        covered.append(t["ci_low"] <= 0.01 <= t["ci_high"])
    assert np.mean(covered) >= 0.95


def test_a_copy_of_the_leader_ties_and_the_pairwise_table_is_written(tiny_run, tmp_path):
    """The same run twice (another model name): identical per-run scores, so the test cannot tell them
    apart: both are '1=' against each other (p = 1); the pairwise table has the pair on every parcel."""
    results = tmp_path / "results" / "runs"
    for name in ("a", "b"):
        copy = results / name
        shutil.copytree(tiny_run, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["run_id"], manifest["model"]["name"] = name, f"model-{name}"
        (copy / "manifest.json").write_text(json.dumps(manifest))
    board = leaderboard.build([tmp_path / "results"])
    brain = [r for r in board.rows if r["parcel_id"] == -1]
    assert all(r["leader_p"] == 1.0 for r in brain)
    assert all(r["ci_low"] <= r["test"] <= r["ci_high"] for r in brain)
    _, models = leaderboard.wide(board)
    labels = sorted(m["vs_leader"] for m in models)
    assert labels == ["1= (p 1)", "leader"]
    n_parcels = len({r["parcel_id"] for r in board.rows})
    assert len(board.pairwise) == n_parcels and all(r["p_holm"] == 1.0 for r in board.pairwise)
    files = leaderboard.write(board, tmp_path / "board")
    assert pq.read_table(files["pairwise"]).num_rows == n_parcels
    assert "model-a" in files["pairwise_markdown"].read_text() and "vs leader" in files["markdown"].read_text()


def test_a_clearly_worse_model_is_below_the_leader(monkeypatch):
    """Per-run scores 0.3 vs 0.1 (+- 0.01): the second model is 'below' with a tiny Holm p; a third within
    noise of the leader is '1='."""
    per_run = {"a": np.array([0.30, 0.31, 0.29, 0.30, 0.32]), "b": np.array([0.10, 0.11, 0.09, 0.12, 0.10]),
               "c": np.array([0.31, 0.29, 0.30, 0.31, 0.29])}
    monkeypatch.setattr(board_stats, "fold_scores", lambda folder, support=None: {-1: per_run[str(folder)]})
    rows = [{"dataset": "d", "subject": "average", "mode": "1", "protocol": "mtbench", "metric": "pearson",
             "dataset_version": "1", "parcel_id": -1, "parcel": "whole brain", "model": name, "run_id": name,
             "score": float(per_run[name].mean())} for name in per_run]
    pairwise, _ = board_stats.annotate(rows, {name: name for name in per_run})
    by = {r["run_id"]: r["leader_p"] for r in rows}
    assert by["a"] == 1.0 and by["b"] < 1e-3 and board_stats.tied_with_leader(by["c"])
    assert len(pairwise) == 3 and all(r["p_holm"] >= r["p_value"] for r in pairwise)
