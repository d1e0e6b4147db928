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
    assert [m["rank_label"] for m in models] == ["1=", "1="] and sorted(m["rank"] for m in models) == [1, 1]
    n_parcels = len({r["parcel_id"] for r in board.rows})
    assert len(board.pairwise) == n_parcels and all(r["p_holm"] == 1.0 for r in board.pairwise)
    files = leaderboard.write(board, tmp_path / "board")
    assert pq.read_table(files["pairwise"]).num_rows == n_parcels
    assert "model-a" in files["pairwise_markdown"].read_text() and "vs leader" in files["markdown"].read_text()
    # the label in every output; the page still sorts on the numeric rank, the Parquet table has both
    assert "| 1= | model-a |" in files["markdown"].read_text()
    assert '<td data-value="1">1=</td>' in files["html"].read_text()
    table = pq.read_table(files["parquet"])
    assert set(table.column("rank_label").to_pylist()) == {"1="} and set(table.column("rank").to_pylist()) == {1}


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


def _board_rows(per_run: dict) -> list[dict]:
    return [{"dataset": "d", "subject": "average", "mode": "1", "protocol": "mtbench", "metric": "pearson",
             "dataset_version": "1", "parcel_id": -1, "parcel": "whole brain", "model": name, "run_id": name,
             "score": float(scores.mean())} for name, scores in per_run.items()]


def test_rank_labels_are_tiers_decided_by_the_test(monkeypatch):
    """A planted clear winner is '1' alone; two models within noise of each other below it share '2='; a
    clearly worse fourth opens its own tier '4'; a model without per-fold scores keeps its score rank."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 0.01, 9)
    per_run = {"winner": 0.40 + base + rng.normal(0, 0.002, 9), "b": 0.25 + base + rng.normal(0, 0.002, 9),
               "c": 0.2505 + base + rng.normal(0, 0.002, 9), "d": 0.10 + base + rng.normal(0, 0.002, 9)}
    monkeypatch.setattr(board_stats, "fold_scores", lambda folder, support=None: (
        None if folder == "untested" else {-1: per_run[folder]}))
    rows = _board_rows(per_run) + _board_rows({"untested": np.array([0.05])})
    leaderboard._rank(rows)
    pairwise, _ = board_stats.annotate(rows, {r["run_id"]: r["run_id"] for r in rows})
    leaderboard._rank_labels(rows, pairwise)
    labels = {r["run_id"]: r["rank_label"] for r in rows}
    assert labels == {"winner": "1", "b": "2=", "c": "2=", "d": "4", "untested": "5"}
    assert [r["rank"] for r in sorted(rows, key=lambda r: r["rank"])] == [1, 2, 3, 4, 5]  # numeric rank kept


def test_two_equal_models_share_1_and_a_planted_winner_does_not(monkeypatch):
    """Two models with the same planted mean and independent per-run noise: '1=' both (checked over 200
    repetitions: at most 0.05 + 2.58 sqrt(0.05 x 0.95 / 200) = 0.090 of them split, since splitting them is a
    false rejection of the null; measured 0.0 with the conservative corrected variance); a third 0.1 above
    them in every run is '1' alone and they become '2=' in every repetition (power 1.0)."""
    rng = np.random.default_rng(2)
    split, winner_alone = 0, 0
    for _ in range(200):
        per_run = {"a": 0.2 + rng.normal(0, 0.01, 9), "b": 0.2 + rng.normal(0, 0.01, 9)}
        monkeypatch.setattr(board_stats, "fold_scores",
                            lambda folder, support=None, per_run=per_run: {-1: per_run[folder]})
        rows = _board_rows(per_run)
        leaderboard._rank(rows)
        pairwise, _ = board_stats.annotate(rows, {r["run_id"]: r["run_id"] for r in rows})
        leaderboard._rank_labels(rows, pairwise)
        split += sorted(r["rank_label"] for r in rows) != ["1=", "1="]
        per_run["top"] = per_run["a"] + 0.1 + rng.normal(0, 0.005, 9)
        rows = _board_rows(per_run)
        leaderboard._rank(rows)
        pairwise, _ = board_stats.annotate(rows, {r["run_id"]: r["run_id"] for r in rows})
        leaderboard._rank_labels(rows, pairwise)
        winner_alone += {r["run_id"]: r["rank_label"] for r in rows} == {"top": "1", "a": "2=", "b": "2="}
    assert split / 200 <= 0.05 + 2.58 * np.sqrt(0.05 * 0.95 / 200)
    assert winner_alone == 200


def test_a_clearly_better_run_is_ranked_1_alone_on_a_built_board(tiny_run, tmp_path):
    """End to end through ``leaderboard.build``: the tiny run against a copy whose held-out r is 0.2-0.21 lower in
    every outer fold and parcel (folds.parquet and summary.parquet): the original is '1' alone, the copy '2'
    (its corrected paired t-test against the leader rejects); the two exact copies of the worse run share '2='."""
    import pyarrow as pa

    results = tmp_path / "results" / "runs"
    for name, shift in (("best", 0.0), ("worse", -0.2), ("worse-twin", -0.2)):
        copy = results / name
        shutil.copytree(tiny_run, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["run_id"], manifest["model"]["name"] = name, f"model-{name}"
        (copy / "manifest.json").write_text(json.dumps(manifest))
        for file in ("folds.parquet", "summary.parquet"):
            table = pq.read_table(copy / file)
            # 0.2 lower, give or take 0.01 by fold (a constant difference has no variance to test)
            by_fold = shift * (1 + 0.05 * (table["fold"].to_numpy() % 2)) if "fold" in table.column_names else \
                shift * 1.025
            shifted = table["test"].to_numpy() + by_fold
            table = table.set_column(table.schema.get_field_index("test"), "test",
                                     pa.array(shifted, type=table.schema.field("test").type))
            pq.write_table(table, copy / file)
    board = leaderboard.build([tmp_path / "results"])
    _, models = leaderboard.wide(board)
    labels = {m["model"]: m["rank_label"] for m in models}
    assert labels == {"model-best": "1", "model-worse": "2=", "model-worse-twin": "2="}
    brain = {r["model"]: r for r in board.rows if r["parcel_id"] == -1}
    assert brain["model-worse"]["leader_p"] < 0.05 and brain["model-worse"]["vs_leader"].startswith("below")
    assert "| 1 | model-best |" in leaderboard.markdown(board)


def test_paired_t_of_constant_differences():
    """A run against its copy has no difference (p 1); a constant non-zero difference in every run is
    certain (p 0), not 'no evidence'; two runs cannot be tested (p 1, no interval)."""
    base = np.linspace(0.1, 0.2, 6)
    assert board_stats.paired_t(base, base.copy())["p_value"] == 1.0
    shifted = board_stats.paired_t(base + 0.01, base)
    assert shifted["p_value"] < 1e-12 and abs(shifted["delta"] - 0.01) < 1e-12
    few = board_stats.paired_t(base[:2] + 0.01, base[:2])
    assert few["p_value"] == 1.0 and np.isnan(few["ci_low"])
