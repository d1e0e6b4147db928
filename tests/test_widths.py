"""Width-matched Mode 1 (``--mode widths``): a wide state that wins by capacity loses once matched.

The planted data: a 64-dimensional latent Z drives every voxel through one direction u = Z w;
the wide state W is a noisy copy of all of Z (64 features), the narrow state N (8 features)
carries a noisy copy of u and 7 unrelated features. With all its features W reconstructs u
better than N's noisy copy (W wins by width); reduced to N's width, W's top 8 principal
directions hold little of u and N wins.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from mtbench_plugins.analyses.widths import fit as widths_fit
from mtbench_plugins.analyses.widths.analysis import score_table, summarize_widths
from mtbench_plugins.analyses.widths.fit import PER_RUN, fit_matched
from mtbench_plugins.testing import check_analysis, check_analysis_result

from mtbench.encoding import fit_nested_loro
from mtbench.registry import get_registry
from mtbench.runner import run
from mtbench.schema import read_whole_run

N_RUNS, N_SCANS, WIDE, NARROW, N_VOXELS = 4, 150, 64, 8, 40
ALPHAS = np.logspace(-1, 5, 7)
OPTIONS = dict(backend="torch", precision="float32")


def _z(x):
    return (x - x.mean(0)) / x.std(0)


def planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(WIDE) / np.sqrt(WIDE)
    narrow, wide, y_runs = [], [], []
    for _ in range(N_RUNS):
        latent = rng.standard_normal((N_SCANS, WIDE))
        u = latent @ w
        wide.append(_z(latent + 0.3 * rng.standard_normal(latent.shape)).astype(np.float32))
        n = rng.standard_normal((N_SCANS, NARROW))
        n[:, 0] = u + rng.standard_normal(N_SCANS)  # a noisy copy of what drives the voxels
        narrow.append(_z(n).astype(np.float32))
        y_runs.append(_z(u[:, None] + rng.standard_normal((N_SCANS, N_VOXELS))).astype(np.float32))
    return {(1, "narrow"): narrow, (1, "wide"): wide}, y_runs


def test_a_narrow_state_beats_a_wider_correlated_one_once_matched_where_it_lost_before():
    scans, y_runs = planted()
    keys = list(scans)
    arrays = {"unmatched": {n: [] for n in PER_RUN}, "matched": {n: [] for n in PER_RUN}}
    for key in keys:
        plain = fit_nested_loro(scans[key], y_runs, ALPHAS, **OPTIONS)
        matched = fit_matched(scans[key], y_runs, ALPHAS, NARROW, **OPTIONS)
        for name in PER_RUN:
            arrays["unmatched"][name].append(getattr(plain, name))
            arrays["matched"][name].append(matched[name])
    arrays = {kind: {n: np.stack(v) for n, v in a.items()} for kind, a in arrays.items()}
    tables = {kind: score_table(keys, arrays[kind]) for kind in arrays}
    unmatched, matched = tables["unmatched"].test.mean(1), tables["matched"].test.mean(1)
    assert unmatched[1] > unmatched[0] + 0.05  # the wide state wins as it is (0.60 vs 0.49)
    assert matched[0] > matched[1] + 0.1  # and loses at the narrow state's width (0.49 vs 0.23)
    assert matched[0] == pytest.approx(unmatched[0])  # the narrow state is fitted as it is
    (brain,) = summarize_widths(tables, np.zeros(N_VOXELS, int), {})
    assert (brain["state"], brain["matched_state"], brain["by"]) == ("wide", "narrow", "width")


def test_pca_directions_never_see_the_test_run(monkeypatch):
    scans, y_runs = planted()
    x_runs = scans[(1, "wide")]
    seen = []
    real = widths_fit.pca_directions

    def spy(train_runs, width):
        seen.append([next(i for i, x in enumerate(x_runs) if x is run) for run in train_runs])
        return real(train_runs, width)

    monkeypatch.setattr(widths_fit, "pca_directions", spy)
    fit_matched(x_runs, y_runs, ALPHAS, NARROW, **OPTIONS)
    assert seen == [[r for r in range(N_RUNS) if r != o] for o in range(N_RUNS)]  # fold o: every run but o
    # a random projection is the same for every fold and independent of the data
    a = widths_fit.random_directions(WIDE, NARROW, seed=0)
    assert a.shape == (WIDE, NARROW) and np.array_equal(a, widths_fit.random_directions(WIDE, NARROW, seed=0))


def test_a_widths_run_writes_reads_combines_and_draws_what_its_entry_says(tmp_path, monkeypatch):
    from run_helpers import tiny_run_settings

    settings = tiny_run_settings(tmp_path, monkeypatch, ["per_head_k", "ffn_activated_state"], "per_head_k", 0)
    output = run(replace(settings, mode="widths", layers=[2]), tmp_path / "results")
    analysis = check_analysis(get_registry().analysis("widths"))
    folder = read_whole_run(output.run_dir)
    meta = json.loads((output.run_dir / "manifest.json").read_text())
    dims = meta["widths"]["dims"]
    assert meta["widths"]["width"] == min(dims.values()) < max(dims.values())
    combined = analysis.combine([folder], meta)
    check_analysis_result(combined)
    assert combined.summary == output.summary
    cells = analysis.board_cells(folder)
    assert cells[0]["parcel_id"] == -1 and "unmatched winner" in cells[0]["note"]
    assert [name for name, _, _ in analysis.figures(folder)] == ["widths_bars.png", "widths_matched_map.png"]
