"""Scaling on the board (``plugins/commands/board/scaling.py``): the ln(params) slope per parcel and
family recovers a planted slope, checkpoints are drawn against training step, and `mtbench
leaderboard` on tiny finished runs of two model sizes and a baseline embeds the figure and table."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from mtbench_plugins.commands.board.scaling import (
    slope_rows,
    training_figure,
    training_step,
    write_scaling,
)
from mtbench_plugins.models.hf.tiny import save_tiny_llama

from mtbench.cli import main
from mtbench.results import WHOLE_BRAIN


def row(model, family, n_params, parcel, score, parcel_id=0):
    return {"model": model, "family": family, "n_params": n_params, "parcel": parcel, "parcel_id": parcel_id,
            "score": score, "dataset": "synthetic", "subject": "average", "mode": 1, "protocol": "mtbench",
            "metric": "pearson"}


def test_slope_per_parcel_and_family_recovers_a_planted_slope():
    """Scores planted on 0.02 + 0.0095 ln(params) (whole brain) and 0.0158 (a parcel), with family offsets
    for the per-family fits: the fits give the planted slopes; checkpoints, untrained controls and
    baselines do not enter."""
    rng = np.random.default_rng(0)
    sizes = {"llama": [1.2e9, 3.2e9, 8e9, 70e9], "qwen3": [0.6e9, 1.7e9, 4e9, 32e9]}
    rows = []
    for family, offset in (("llama", 0.0), ("qwen3", 0.01)):
        for n in sizes[family]:
            rows.append(row(f"{family}-{n:g}", family, n, WHOLE_BRAIN, 0.02 + offset + 0.0095 * np.log(n)))
            rows.append(row(f"{family}-{n:g}", family, n, "Heschl", 0.05 + offset + 0.0158 * np.log(n), 1))
    rows += [row("random", "baseline", None, WHOLE_BRAIN, 0.9), row("pythia-160m@step1000", "gpt_neox", 1.6e8,
                                                                     WHOLE_BRAIN, 0.9),
             row("qwen3-0.6b+untrained", "qwen3", 0.6e9, WHOLE_BRAIN, -0.9)]
    slopes = {(s["parcel"], s["family"]): s for s in slope_rows(rows)}
    for family in ("llama", "qwen3"):
        assert slopes[WHOLE_BRAIN, family]["slope"] == pytest.approx(0.0095)
        assert slopes["Heschl", family]["slope"] == pytest.approx(0.0158)
        assert slopes[WHOLE_BRAIN, family]["n_models"] == 4
    pooled = slopes[WHOLE_BRAIN, "all"]
    assert pooled["n_models"] == 8 and abs(pooled["slope"] - 0.0095) < 0.002  # offsets bias the pooled fit a little
    # noise: the slope's error shrinks like noise / spread of ln(params)
    noisy = [dict(r, score=r["score"] + rng.normal(0, 1e-3)) for r in rows[:16]]
    assert abs({(s["parcel"], s["family"]): s for s in slope_rows(noisy)}[WHOLE_BRAIN, "llama"]["slope"] - 0.0095) < 2e-3


def test_checkpoints_are_drawn_against_training_step():
    assert training_step("pythia-160m@step1000") == ("pythia-160m", 1000)
    assert training_step("qwen3-0.6b") is None and training_step("hf:/a@b") is None
    rows = [row(f"pythia-160m@step{s}", "gpt_neox", 1.6e8, WHOLE_BRAIN, 0.01 * np.log1p(s)) for s in (0, 1, 512, 143000)]
    fig = training_figure(rows)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0, 1, 512, 143000] and fig.axes[0].get_xscale() == "symlog"
    assert training_figure([row("qwen3-0.6b", "qwen3", 6e8, WHOLE_BRAIN, 0.1)]) is None
    assert write_scaling([row("qwen3-0.6b", "qwen3", 6e8, WHOLE_BRAIN, 0.1)], None) == ""  # one size: no fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs: two sizes of a random Llama (a family) and the random baseline."""
    from mtbench.runner import run
    from mtbench.settings import RunSettings

    root = tmp_path_factory.mktemp("scaling")
    before = os.environ.get("MTBENCH_CACHE")
    os.environ["MTBENCH_CACHE"] = str(root / "cache")
    try:
        small = save_tiny_llama(root / "small", n_layers=1, hidden=32, intermediate=64)
        large = save_tiny_llama(root / "large", n_layers=1, hidden=96, intermediate=192)
        truth = json.dumps([{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "embedding"}])
        data = {"scale": "tiny", "truth_model": "random", "truth": truth}
        for spec in (f"hf:{small}", f"hf:{large}", "random"):
            run(RunSettings(model=spec, dataset="synthetic", states=["all"] if spec == "random" else ["ffn_output"],
                            layers="1", alphas=[1.0, 1e2, 1e4], dataset_options=data, permutations=0), root / "results")
    finally:
        if before is None:
            os.environ.pop("MTBENCH_CACHE", None)
        else:
            os.environ["MTBENCH_CACHE"] = before
    return root


def test_the_board_page_embeds_the_scaling_figure_and_table(runs, tmp_path):
    out = tmp_path / "board"
    result = CliRunner().invoke(main, ["leaderboard", str(runs / "results"), "--out", str(out), "--no-reports"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<h2>Scaling</h2>" in page and "<!-- scaling -->" not in page
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)
    table = (out / "scaling.md").read_text()
    assert f"| synthetic | 1 | {WHOLE_BRAIN} | llama | 2 |" in table  # the two sizes; the baseline is no size
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "training.png").exists()
