"""Winner stability for Mode 1 (tables.fold_support / winner_stability): bootstrap of the outer folds from
the stored per-fold scores, shown next to the winner (terminal summary, leaderboard cells)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from mtbench_plugins.analyses.mode1.present import print_summary, stability_of
from mtbench_plugins.analyses.mode1.tables import fold_support
from mtbench_plugins.commands.compare import board_stats
from rich.console import Console
from run_helpers import tiny_run_settings

from mtbench.runner import run

HESCHL = "Heschl's Gyrus (includes H1 and H2)"


def test_support_is_high_for_a_clear_winner_and_not_for_a_coin_toss():
    """2,000 units, 9 folds, validation noise SD 0.05 per fold: a winner 0.2 above the runner-up is kept
    by (nearly) every draw (mean support > 0.99); between two fits of equal true score the chosen one is
    kept by about half the draws more than chance (mean support 0.5-0.85), never by all of them."""
    rng = np.random.default_rng(0)
    clear = np.stack([0.3 + rng.normal(0, 0.05, (9, 2000)), 0.1 + rng.normal(0, 0.05, (9, 2000))])
    assert fold_support(clear, n_boot=200).mean() > 0.99
    tie = 0.2 + rng.normal(0, 0.05, (2, 9, 2000))
    support = fold_support(tie, n_boot=200)
    assert 0.5 < support.mean() < 0.85 and np.mean(support == 1.0) < 0.2


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stability")
    with pytest.MonkeyPatch.context() as mp:
        settings = tiny_run_settings(tmp, mp, ["per_head_q", "per_head_q_rope"], "per_head_q_rope", permutations=0)
        yield run(settings, tmp / "results")


def test_stability_next_to_the_winner(finished):
    rows = stability_of(finished.run_dir)
    assert stability_of(finished.run_dir, finished) == rows  # the run's in-memory table: same numbers, no read
    winners = pq.read_table(finished.run_dir / "winners.parquet").to_pylist()
    for pid, row in rows.items():
        top = max((w for w in winners if w["parcel_id"] == pid), key=lambda w: w["n_won"])
        assert (row["top_layer"], row["top_state"]) == (top["layer"], top["state"])
        assert row["top_share"] == pytest.approx(top["share"])
        assert 0 <= row["share_low"] <= row["share_high"] <= 1 and 0 <= row["p_best"] <= 1
    heschl = next(r for r in rows.values() if r["parcel"] == HESCHL)
    assert heschl["p_best"] > 0.9  # the planted (layer, state) wins in every draw of the folds
    console = Console(record=True, width=250)
    print_summary(finished, console)
    text = console.export_text()
    assert "P(best)" in text and f"{heschl['p_best']:.2f} · L{heschl['top_layer']}" in text
    support = {}
    board_stats.fold_scores(finished.run_dir, support)
    assert support[rows[next(iter(rows))]["parcel_id"]] == pytest.approx(rows[next(iter(rows))]["p_best"], abs=0.1)
