"""`mtbench leaderboard` and `mtbench report` on results of real small runs.

One module fixture runs the real pipeline four times on the tiny synthetic dataset planted
with a tiny random Llama: that Llama, its untrained control, and the `random` and
`word-rate` baselines; a second one adds a real Mode 2 run of that Llama. Everything below
reads those results: nothing is hand-written except the deliberately broken copies that
the schema must refuse.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mtbench_plugins.analyses.mode2.tables import nested_choices
from mtbench_plugins.commands.board import leaderboard, report
from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench.paths import exclusive_lock
from mtbench.schema import RESULT_SCHEMA, validate_run
from mtbench_plugins.models.hf.tiny import save_tiny_llama

PLANTED = [
    {"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "per_head_q_rope"},
    {"parcel": "Superior Temporal Gyrus, posterior division", "layer": 3, "state": "ffn_activated_state"},
]
HESCHL = PLANTED[0]["parcel"]
STATES = ["per_head_q_rope", "ffn_activated_state"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two results folders: the Llama and its untrained control in `a`, the baselines in `b`."""
    from mtbench.settings import RunSettings
    from mtbench.runner import run

    root = tmp_path_factory.mktemp("board")
    before = os.environ.get("MTBENCH_CACHE")
    os.environ["MTBENCH_CACHE"] = str(root / "cache")
    try:
        model = save_tiny_llama(root / "tiny-llama", seed=0, n_layers=3)
        data = {"scale": "tiny", "snr": 2.0, "truth_model": f"hf:{model}", "truth": json.dumps(PLANTED)}
        plan = {
            "llama": ("a", f"hf:{model}", {}, STATES, "1,3"),
            "untrained": ("a", f"hf:{model}", {"untrained": 1}, STATES[:1], "1"),
            "random": ("b", "random", {"dim": 20}, ["all"], "all"),
            "word-rate": ("b", "word-rate", {}, ["all"], "all"),
        }
        made = {}
        for key, (folder, spec, options, states, layers) in plan.items():
            settings = RunSettings(model=spec, dataset="synthetic", states=states, layers=layers,
                                   alphas=[1.0, 1e2, 1e4], dataset_options=data, model_options=options)
            made[key] = run(settings, root / folder).run_dir
    finally:
        if before is None:
            os.environ.pop("MTBENCH_CACHE", None)
        else:
            os.environ["MTBENCH_CACHE"] = before
    return root, model, made


@pytest.fixture(scope="module")
def mode2(runs):
    """A real Mode 2 run (pivot selection) of the same Llama at layers 1 and 3, in its own results folder `m2`."""
    from mtbench.settings import RunSettings
    from mtbench.runner import run

    root, model, _ = runs
    before = os.environ.get("MTBENCH_CACHE")
    os.environ["MTBENCH_CACHE"] = str(root / "cache")
    try:
        data = {"scale": "tiny", "snr": 2.0, "truth_model": f"hf:{model}", "truth": json.dumps(PLANTED)}
        settings = RunSettings(model=f"hf:{model}", dataset="synthetic", states=["all"], layers="1,3",
                               alphas=[1.0, 1e2, 1e4], dataset_options=data, mode=2, inputs=STATES,
                               pivot="input_hidden_state")
        return run(settings, root / "m2").run_dir
    finally:
        if before is None:
            os.environ.pop("MTBENCH_CACHE", None)
        else:
            os.environ["MTBENCH_CACHE"] = before


def run_doc_examples(doc: str, n_blocks: int, folder: Path, monkeypatch) -> dict:
    """Run the ```python blocks of ``doc`` (repository-relative) in ``folder``; their shared globals."""
    blocks = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / doc).read_text(), re.S)
    assert len(blocks) == n_blocks, f"{doc}: expected {n_blocks} python examples, found {len(blocks)}"
    monkeypatch.chdir(folder)
    scope: dict = {}
    for block in blocks:
        exec(block, scope)
    return scope


def summary_of(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "summary.parquet").to_pylist()


def board_of(root: Path, **options) -> leaderboard.Board:
    return leaderboard.build([root / "a", root / "b"], **options)


# --------------------------------------------------------------------------- aggregation

def _assert_refused_in_one_line(copies: dict, expected: dict) -> None:
    """Each broken copy fails validation with its expected one-line message."""
    for name, message in expected.items():
        with pytest.raises(MtbenchError) as info:
            validate_run(copies[name])
        assert message in str(info.value) and "\n" not in str(info.value), (name, str(info.value))

def test_one_row_per_model_with_the_runs_validated_choices(runs):
    root, model, made = runs
    board = board_of(root)
    assert board.notes == []
    parcels, models = leaderboard.wide(board)
    assert sorted(m["model"] for m in models) == sorted([f"hf:{model}", f"hf:{model}+untrained", "random",
                                                         "word-rate"])
    assert parcels[0] == "whole brain" and HESCHL in parcels
    by_run = {}
    for row in board.rows:
        by_run.setdefault(row["run_id"], {})[row["parcel"]] = row
    for key, run_dir in made.items():
        rows = by_run[json.loads((run_dir / "manifest.json").read_text())["run_id"]]
        summary = summary_of(run_dir)
        assert len(rows) == len(summary)
        for expected in summary:  # the cell is the run's own validated (nested) choice, untouched
            got = rows[expected["parcel"]]
            assert (got["layer"], got["state"], got["score"], got["test"]) == (
                expected["layer"], expected["state"], expected["test"], expected["test"])
    llama = {r["parcel"]: r for r in board.rows if r["model"] == f"hf:{model}"}
    assert (llama[HESCHL]["layer"], llama[HESCHL]["state"]) == (1, "per_head_q_rope")
    assert llama[HESCHL]["top_state"] == "per_head_q_rope" and llama[HESCHL]["top_state_share"] > 0.5
    # size and family from the manifests; baselines have no parameter count: missing, not 0
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
    assert llama[HESCHL]["n_params"] == n_params and llama[HESCHL]["n_layers"] == 3
    assert llama[HESCHL]["family"] == "llama"
    baseline = next(r for r in board.rows if r["model"] == "random")
    assert baseline["family"] == "baseline" and baseline["n_params"] is None
    # ranks follow the whole-brain score
    brain = sorted((r for r in board.rows if r["parcel_id"] == -1), key=lambda r: r["rank"])
    assert [r["rank"] for r in brain] == [1, 2, 3, 4]
    assert [r["score"] for r in brain] == sorted((r["score"] for r in brain), reverse=True)
    # the rank label is decided by the paired test against the leader (4 test runs, 3 df: on this tiny data
    # the test finds no model significantly below the planted Llama, so all share "1="; a clear winner is
    # tested in tests/test_compare_board.py)
    assert brain[0]["model"] == f"hf:{model}" and brain[0]["leader_p"] == 1.0
    tied = [r for r in brain[1:] if r["leader_p"] >= 0.05]
    assert brain[0]["rank_label"] == ("1=" if tied else "1") and all(r["rank_label"] == "1=" for r in tied)
    assert not any(r["rank_label"].startswith("1") for r in brain[1:] if r["leader_p"] < 0.05)
    # winning states: parcels each state wins, for the Llama
    entry = next(m for m in models if m["model"] == f"hf:{model}")
    wins = {}
    for row in summary_of(made["llama"])[1:]:
        wins[row["state"]] = wins.get(row["state"], 0) + 1
    assert entry["wins"] == wins


def test_normalized_metric_and_missing_cells(runs):
    root, model, made = runs
    board = board_of(root, metric="normalized")
    llama = {r["parcel"]: r for r in board.rows if r["model"] == f"hf:{model}"}
    assert llama[HESCHL]["score"] == pytest.approx(llama[HESCHL]["test"] / llama[HESCHL]["ceiling"])
    nulls = [r for r in llama.values() if r["parcel_id"] > 0 and r["parcel"] not in {p["parcel"] for p in PLANTED}]
    assert nulls and all(r["ceiling"] == 0 and r["score"] is None for r in nulls)  # no ceiling: missing
    md = leaderboard.markdown(board)
    line = next(li for li in md.splitlines() if li.startswith(f"| {llama[HESCHL]['rank_label']} | hf:"))
    assert leaderboard.MISSING in line and f"{llama[HESCHL]['score']:.3f} (L1 per_head_q_rope)" in line
    table = pq.read_table(io.BytesIO(leaderboard.parquet_bytes(board)))
    assert table.column("score").null_count == sum(r["score"] is None for r in board.rows) > 0


def test_filters_ties_and_superseded_runs(runs, tmp_path):
    root, model, made = runs
    only = board_of(root, parcels=f"{HESCHL.upper()},1,{PLANTED[1]['parcel']}")  # names (any case) or ids
    assert {r["parcel"] for r in only.rows} == {"whole brain", HESCHL, "Frontal Pole", PLANTED[1]["parcel"]}
    # a name is matched whole, not as a prefix; an item that names no parcel is an error, not silently dropped
    with pytest.raises(MtbenchError, match=r"no parcel is named or numbered 'superior temporal gyrus' .*closest .*"
                                           r"'Superior Temporal Gyrus, (anterior|posterior) division'"):
        board_of(root, parcels="Superior Temporal Gyrus")
    with pytest.raises(MtbenchError, match=r''''heschl', '999' in these runs \(closest to 'heschl': ["']Heschl'''):
        board_of(root, parcels=f"{PLANTED[1]['parcel']},heschl,1,999,")
    with pytest.raises(MtbenchError, match="no run matches --dataset lpp-en"):
        board_of(root, dataset="lpp-en")
    with pytest.raises(MtbenchError, match="--mode 2"):
        board_of(root, mode="2")
    # a copy of the random run under another name scores exactly the same: a tie, shown as such
    twin = tmp_path / "c" / "runs" / "twin"
    shutil.copytree(made["random"], twin)
    manifest = json.loads((twin / "manifest.json").read_text())
    manifest["model"]["name"], manifest["run_id"] = "random-twin", manifest["run_id"] + "-twin"
    (twin / "manifest.json").write_text(json.dumps(manifest))
    # a newer run of the word-rate model supersedes the older one: newer by its creation time, whatever its
    # id (a sweep's runs are named after their content, not the time)
    newer = tmp_path / "c" / "runs" / "newer"
    shutil.copytree(made["word-rate"], newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    old_id, manifest["run_id"] = manifest["run_id"], "0" + manifest["run_id"]
    manifest["created"] = "2999-01-01T00:00:00+00:00"
    (newer / "manifest.json").write_text(json.dumps(manifest))
    # the random run relabelled as another subject's: --subject average / each / a name
    other = tmp_path / "d" / "runs" / "sub-01"
    shutil.copytree(made["random"], other)
    manifest_s = json.loads((other / "manifest.json").read_text())
    manifest_s["settings"]["subject"], manifest_s["run_id"] = "sub-01", manifest_s["run_id"] + "-sub-01"
    (other / "manifest.json").write_text(json.dumps(manifest_s))
    paths = [root / "a", root / "b", tmp_path / "d"]
    subjects = {s: [(m["model"], m["subject"]) for m in leaderboard.wide(leaderboard.build(paths, subject=s))[1]]
                for s in ("average", "each", "sub-01")}
    assert ("random", "sub-01") not in subjects["average"] and len(subjects["average"]) == 4
    assert ("random", "sub-01") in subjects["each"] and ("random", "average") in subjects["each"]
    assert subjects["sub-01"] == [("random", "sub-01")]
    board = leaderboard.build([root / "a", root / "b", tmp_path / "c"])
    _, models = leaderboard.wide(board)
    twins = [m for m in models if m["model"] in ("random", "random-twin")]
    assert twins[0]["rank"] == twins[1]["rank"] and twins[0]["rank_label"].endswith("=")
    assert [m["run_id"] for m in models if m["model"] == "word-rate"] == [manifest["run_id"]]
    assert any(note.startswith(f"{old_id}: superseded") for note in board.notes)
    assert f"| {twins[0]['rank_label']} | random |" in leaderboard.markdown(board)


def test_another_protocol_is_another_experiment_not_a_newer_run(runs, tmp_path):
    """A model under --protocol mindtransformer is ranked apart, never superseding its default-protocol run."""
    root, model, made = runs
    reference = tmp_path / "p" / "runs" / "reference"
    shutil.copytree(made["random"], reference)
    manifest = json.loads((reference / "manifest.json").read_text())
    manifest["settings"]["protocol"], manifest["run_id"] = "mindtransformer", manifest["run_id"] + "-reference"
    manifest["created"] = "2999-01-01T00:00:00+00:00"  # newer, and still not a replacement
    (reference / "manifest.json").write_text(json.dumps(manifest))
    board = leaderboard.build([root / "b", tmp_path / "p"])
    _, models = leaderboard.wide(board)
    randoms = {m["protocol"]: m for m in models if m["model"] == "random"}
    assert set(randoms) == {"mtbench", "mindtransformer"} and not any("superseded" in n for n in board.notes)
    assert randoms["mindtransformer"]["rank"] == 1  # alone in its protocol's ranking
    alone = {m["model"]: m["rank"] for m in leaderboard.wide(leaderboard.build([root / "b"]))[1]}
    assert {m["model"]: m["rank"] for m in models if m["protocol"] == "mtbench"} == alone  # ranks untouched
    line = next(li for li in leaderboard.markdown(board).splitlines() if "| random |" in li and "mindtransformer" in li)
    assert "| 1 (mindtransformer) |" in line
    assert set(pq.read_table(io.BytesIO(leaderboard.parquet_bytes(board))).column("protocol").to_pylist()) == {
        "mtbench", "mindtransformer"}


def test_rebuild_is_byte_identical(runs, mode2, tmp_path):
    root, _, _ = runs
    cli = CliRunner()
    first = cli.invoke(main, ["leaderboard", str(root / "a"), str(root / "m2"), str(root / "b"), "--out",
                              str(tmp_path / "one"), "--no-reports"])
    assert first.exit_code == 0, first.output
    time.sleep(1.1)  # a build-time stamp at second resolution would now differ
    second = cli.invoke(main, ["leaderboard", str(root / "b"), str(root / "a"), str(root / "m2"), "--out",
                               str(tmp_path / "two"), "--no-reports"])
    assert second.exit_code == 0, second.output
    names = ["leaderboard.parquet", "leaderboard.md", "index.html"]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    meta = pq.read_metadata(tmp_path / "one" / "leaderboard.parquet")
    assert meta.created_by.startswith("parquet-cpp-arrow")
    assert set(meta.metadata) == {b"mtbench", b"ARROW:schema"}  # no pandas block with library versions
    stored = json.loads(meta.metadata[b"mtbench"])
    assert stored["leaderboard_options"]["metric"] == "raw" and len(stored["runs"]) == 5
    modes = pq.read_table(tmp_path / "one" / "leaderboard.parquet").column("mode").to_pylist()
    assert sorted(set(modes)) == ["1", "2"]
    assert "mtbench leaderboard" in first.output and "random" in first.output


# --------------------------------------------------------------------------- schema
def broken_copies(made: dict, root: Path) -> dict[str, Path]:
    """Copies of a real run, each broken in one way the schema must catch."""
    runs = root / "runs"
    copies = {}
    for name in ("foreign", "older", "no-version", "column", "garbage", "newer-ok", "not-a-run"):
        copies[name] = runs / name
        shutil.copytree(made["random"], copies[name])
    pq.write_table(pa.table({"parcel": ["x"], "r": [0.5]}), copies["foreign"] / "summary.parquet")
    for name, version in (("older", "0"), ("no-version", None), ("newer-ok", "2")):
        manifest = json.loads((copies[name] / "manifest.json").read_text())
        manifest["schema_version"] = version
        manifest["run_id"] += f"-{name}"
        (copies[name] / "manifest.json").write_text(json.dumps(manifest))
    table = pq.read_table(copies["column"] / "summary.parquet")
    pq.write_table(table.drop_columns(["test"]), copies["column"] / "summary.parquet")
    (copies["garbage"] / "winners.parquet").write_bytes(b"not parquet at all")
    (copies["not-a-run"] / "manifest.json").unlink()
    (runs / "interrupted.partial").mkdir()
    return copies


def test_schema_refuses_foreign_and_older_results_in_one_line(runs, tmp_path):
    root, _, made = runs
    for run_dir in made.values():
        assert validate_run(run_dir).manifest["schema_version"] == RESULT_SCHEMA["schema_version"]
    copies = broken_copies(made, tmp_path)
    expected = {
        "foreign": "foreign Parquet file (no 'mtbench' provenance",
        "older": "result schema 0 is older than this mtbench reads",
        "no-version": "foreign or pre-release result (manifest has no result schema_version)",
        "column": "summary.parquet: column 'test' is missing (older or foreign result schema)",
        "garbage": "winners.parquet: not a readable Parquet file",
        "not-a-run": "not an mtbench run (no manifest.json)",
    }
    _assert_refused_in_one_line(copies, expected)
    assert validate_run(copies["newer-ok"])  # a newer schema with every required column: readable
    # the board leaves the broken runs out, one note each, and keeps the good ones
    board = leaderboard.build([tmp_path, root / "a"])
    assert sorted({r["model"] for r in board.rows}) == sorted(
        {json.loads((made[k] / "manifest.json").read_text())["model"]["name"] for k in ("llama", "untrained",
                                                                                          "random")})
    for name, message in expected.items():
        assert sum(message in note for note in board.notes) == 1, name
    assert any("interrupted run (.partial)" in note for note in board.notes)
    with exclusive_lock(tmp_path / "runs" / "interrupted.partial" / ".writing", owner="r7"):  # a run writing it now
        notes = leaderboard.build([tmp_path]).notes
    assert any("interrupted.partial: still being written" in note and "r7" in note for note in notes)
    assert not any("interrupted run (.partial)" in note for note in notes)
    with pytest.raises(MtbenchError, match="foreign Parquet file"):
        leaderboard.build([tmp_path / "runs" / "foreign"], strict=True)
    # on the command line: notes and exit 0 when something is valid; one error line and exit 2 otherwise
    cli = CliRunner()
    ok = cli.invoke(main, ["leaderboard", str(tmp_path), "--out", str(tmp_path / "board"), "--no-reports"])
    assert ok.exit_code == 0 and "skipped" in ok.output and "foreign Parquet file" in ok.output
    bad = cli.invoke(main, ["leaderboard", str(tmp_path / "runs" / "foreign"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and bad.output.startswith("Error: no valid run found")
    assert len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- figures
def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def check_figure(fig, title: str, colorbar: bool = True, legend: bool = False) -> np.ndarray:
    """Title, colorbar or legend, exact pixel size and a non-blank image; returns the pixels."""
    assert title in fig._suptitle.get_text()
    if colorbar:
        bars = [ax for ax in fig.axes if ax.get_label() == "colorbar"]
        assert len(bars) == 1 and bars[0].collections, "colorbar drawn"
    if legend:
        assert any(ax.get_legend() is not None and ax.get_legend().get_texts() for ax in fig.axes)
    pixels = png_pixels(report.png_bytes(fig))
    width, height = fig.get_size_inches() * fig.dpi  # each figure is drawn at its own (fixed) DPI
    assert pixels.shape == (round(height), round(width), 3)
    not_white = (pixels < 245).any(axis=2).mean()
    assert not_white > 0.05, "figure is nearly blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 30
    return pixels


def test_report_figures_show_the_run(runs):
    root, model, made = runs
    run_dir = made["llama"]
    figures = {name: fig for name, _, fig in report.figures(run_dir)}
    summary = {r["parcel"]: r for r in summary_of(run_dir)}
    heschl_id = summary[HESCHL]["parcel_id"]
    assert set(figures) == {"best_state_map.png", "score_map.png", "winning_ratios.png"} | {
        "heatmap_whole_brain.png"} | {f"heatmap_parcel_{r['parcel_id']:03d}.png" for r in summary.values()
                                      if r["parcel_id"] > 0}
    # heatmap: its cells are the run's held-out r per (layer, state), the validation winner framed
    heat = figures[f"heatmap_parcel_{heschl_id:03d}.png"]
    check_figure(heat, HESCHL)
    scores = pq.read_table(run_dir / "scores.parquet").to_pylist()
    grid = np.asarray(heat.axes[0].images[0].get_array())
    for row in scores:
        if row["parcel_id"] == heschl_id and row["split"] == "test":
            assert grid[[1, 3].index(row["layer"]), STATES.index(row["state"])] == pytest.approx(row["value"])
    frame = heat.axes[0].patches[0]
    assert frame.get_xy() == (STATES.index("per_head_q_rope") - 0.5, 0 - 0.5)
    # brain maps on the MNI template; the state colorbar names the states
    check_figure(figures["best_state_map.png"], "Best state per voxel")
    bar = next(ax for ax in figures["best_state_map.png"].axes if ax.get_label() == "colorbar")
    assert [t.get_text() for t in bar.get_yticklabels()] == STATES
    check_figure(figures["score_map.png"], "Held-out r")
    # winning ratios: one bar per parcel, each summing to 1, legend = states that win voxels
    bars = figures["winning_ratios.png"]
    check_figure(bars, "Winning ratios", colorbar=False, legend=True)
    widths = {}
    for patch in bars.axes[0].patches:
        widths[round(patch.get_y() + patch.get_height() / 2)] = widths.get(
            round(patch.get_y() + patch.get_height() / 2), 0) + patch.get_width()
    assert len(widths) == len(summary) and all(w == pytest.approx(1.0) for w in widths.values())
    won = {r["state"] for r in pq.read_table(run_dir / "winners.parquet").to_pylist()}
    assert {t.get_text() for t in bars.axes[0].get_legend().get_texts()} == won


def test_report_page_is_offline_and_embeds_every_png(runs, tmp_path):
    _, _, made = runs
    result = CliRunner().invoke(main, ["report", str(made["random"]), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep" / "index.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 4
    for name in pngs:
        data = (tmp_path / "rep" / name).read_bytes()
        assert png_pixels(data).std() > 5
        import base64

        assert base64.b64encode(data).decode() in page
    assert not re.search(r"(src|href)=\"https?:", page)
    manifest = json.loads((made["random"] / "manifest.json").read_text())
    assert manifest["model"]["revision"] in page and manifest["dataset"]["version"] in page
    report.write_report(made["random"], tmp_path / "again")  # same run, same bytes (no timestamps in PNG/HTML)
    assert {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()}
    bad = CliRunner().invoke(main, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "not an mtbench run" in bad.output
    assert not (tmp_path / "nowhere").exists()  # a wrong path leaves no empty report folder behind


def test_an_out_folder_that_cannot_be_written_is_one_line(runs, tmp_path):
    """A file where --out should be a folder: one error line naming it, exit 2, and nothing written."""
    _, _, made = runs
    (tmp_path / "afile").write_text("keep me")
    for command in (["report", str(made["random"])],
                    ["leaderboard", str(made["random"]), "--no-reports"],
                    ["leaderboard", str(made["random"])]):
        result = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "afile" / "board")])
        assert result.exit_code == 2, (command, result.output)
        line = result.output.strip().splitlines()[-1]  # after the board's notes, if any
        assert line.startswith(f"Error: cannot write to {tmp_path / 'afile' / 'board'}"), (command, line)
        assert line.endswith(f"({tmp_path / 'afile'} is a file); give --out a folder you can write to"), line
        assert "Traceback" not in result.output
    assert (tmp_path / "afile").read_text() == "keep me"


def test_a_damaged_map_is_one_line_and_costs_only_its_own_report(runs, tmp_path):
    """A NIfTI map cut short: report and rescore say which file in one line; the board is still
    written, with a note, and links only the reports that exist."""
    _, _, made = runs
    results = tmp_path / "results"
    damaged = shutil.copytree(made["random"], results / "runs" / "damaged")
    shutil.copytree(made["word-rate"], results / "runs" / made["word-rate"].name)
    for name in ("mask.nii.gz", "best_state.nii.gz"):
        path = damaged / "maps" / name
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    cli = CliRunner()
    for command in (["report", str(damaged), "--out", str(tmp_path / "rep")],
                    ["rescore", str(damaged), "--metric", "r2"]):
        result = cli.invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        line = result.output.strip()
        assert line.startswith(f"Error: {damaged / 'maps'}/") and "not a readable NIfTI map (" in line, line
        assert line.endswith("the run is corrupt, re-run it with this mtbench (`mtbench run ...`)") and "\n" not in line
    board = cli.invoke(main, ["leaderboard", str(results), "--out", str(tmp_path / "board")])
    assert board.exit_code == 0, board.output
    broken, whole = made["random"].name, made["word-rate"].name  # run ids
    assert f"no report for {broken}: {damaged / 'maps'}/" in board.output.replace("\n", "")
    page = (tmp_path / "board" / "index.html").read_text()
    assert f"reports/{whole}/index.html" in page and f"reports/{broken}/" not in page
    assert (tmp_path / "board" / "reports" / whole / "index.html").is_file()
    assert {r["model"] for r in pq.read_table(tmp_path / "board" / "leaderboard.parquet").to_pylist()} == {
        "random", "word-rate"}  # the damaged run keeps its row: its scores are whole


# --------------------------------------------------------------------------- docs
def test_docs_queries_run_in_pandas_polars_duckdb(runs, tmp_path, monkeypatch):
    root, _, _ = runs
    board = board_of(root)
    leaderboard.write(board, tmp_path / "leaderboard")
    scope = run_doc_examples("leaderboard/README.md", 3, tmp_path, monkeypatch)
    expected = {}
    for row in board.rows:
        if row["parcel"] not in expected or row["score"] > expected[row["parcel"]][1]:
            expected[row["parcel"]] = (row["model"], row["score"])
    for name in ("best_pandas", "best_polars", "best_duckdb"):
        frame = scope[name]
        records = frame.to_dicts() if hasattr(frame, "to_dicts") else frame.to_dict("records")
        assert {r["parcel"]: r["model"] for r in records} == {p: m for p, (m, _) in expected.items()}, name
        assert {r["parcel"]: r["score"] for r in records} == pytest.approx({p: s for p, (_, s) in expected.items()})


# --------------------------------------------------------------------------- browser
def _browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        reason = "headless Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1600,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_page_sorts_filters_and_links_in_headless_chromium(runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root, model, made = runs
    out = tmp_path / "site"
    result = CliRunner().invoke(main, ["leaderboard", str(root / "a"), str(root / "b"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    driver = _browser()
    try:
        driver.get((out / "index.html").as_uri())

        def column(index: int) -> list[str]:
            return [row.find_elements(By.TAG_NAME, "td")[index].get_attribute("data-value")
                    for row in driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")]

        headers = driver.find_elements(By.CSS_SELECTOR, "#board thead th")
        names = [h.text for h in headers]
        heschl = names.index(HESCHL)
        assert len(column(0)) == 4 and column(0) == ["1", "2", "3", "4"]
        headers[heschl].click()  # numbers: best first
        values = [float(v) for v in column(heschl)]
        assert values == sorted(values, reverse=True)
        assert driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")[0].get_attribute("data-family") == "llama"
        headers[heschl].click()  # reversed
        assert [float(v) for v in column(heschl)] == sorted(values)
        headers[names.index("model")].click()
        assert column(names.index("model")) == sorted(column(names.index("model")), key=str.lower)
        headers[0].click()  # ranks: 1 first
        assert column(0) == ["1", "2", "3", "4"]
        # family filter
        Select(driver.find_element(By.ID, "family-filter")).select_by_value("baseline")
        visible = [r for r in driver.find_elements(By.CSS_SELECTOR, "#board tbody tr") if r.is_displayed()]
        assert sorted(r.get_attribute("data-family") for r in visible) == ["baseline", "baseline"]
        assert driver.find_element(By.ID, "shown").text == "2 of 4 models shown"
        # parcel filter: only that parcel's column next to the whole brain
        Select(driver.find_element(By.ID, "parcel-filter")).select_by_value(HESCHL)
        shown = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#board thead th[data-parcel]")
                 if h.is_displayed()]
        assert shown == ["whole brain", HESCHL]
        cells = [c for c in driver.find_elements(By.CSS_SELECTOR, "#board tbody td[data-parcel]") if c.is_displayed()]
        assert len(cells) == 2 * 2  # two visible rows x two parcels
        # provenance opens in place and names the model revision
        first = visible[0]
        first.find_element(By.CSS_SELECTOR, "details.prov summary").click()
        run_id = first.get_attribute("data-run")
        manifest = json.loads(next(p for p in made.values() if p.name == run_id).joinpath("manifest.json")
                              .read_text())
        assert manifest["model"]["revision"] in first.find_element(By.CSS_SELECTOR, "details.prov dl").text
        screenshot = tmp_path / "leaderboard.png"
        assert driver.save_screenshot(str(screenshot))
        pixels = png_pixels(screenshot.read_bytes())
        assert pixels.shape[1] > 800 and pixels.std() > 5
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0  # offline
        # the model links to its report, whose embedded figures load
        link = first.find_element(By.CSS_SELECTOR, "td.model a")
        assert link.get_attribute("href").endswith(f"reports/{run_id}/index.html")
        link.click()
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == len(list((out / "reports" / run_id).glob("*.png")))
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 100 for img in images)
    finally:
        driver.quit()


# --------------------------------------------------------------------------- Mode 2 runs
def mode2_expected(run_dir: Path):
    """Per parcel, the nested layer choice recomputed with pandas from mode2_folds.parquet.

    In each fold the layer with the highest stage-2 validation r of that fold (lowest layer on ties), its test r;
    ``test``, ``stage1_test``, ``validation``: means over folds; ``layer``: the most frequent choice (on ties the
    highest fold-averaged validation) with its ``folds_agree``, ``top_state`` and ``ceiling`` from mode2.parquet.
    """
    import pandas as pd

    frame = pd.read_parquet(run_dir / "mode2.parquet")
    folds = pd.read_parquet(run_dir / "mode2_folds.parquet").sort_values(["parcel_id", "fold", "layer"])
    picks = folds.loc[folds.groupby(["parcel_id", "fold"])["stage2_validation"].idxmax()]
    chosen = picks.groupby("parcel_id", sort=True).agg(
        parcel=("parcel", "first"), test=("stage2_test", "mean"), stage1_test=("stage1_test", "mean"),
        validation=("stage2_validation", "mean"), fold_layers=("layer", lambda s: ",".join(map(str, s))))
    averaged = folds.groupby(["parcel_id", "layer"])["stage2_validation"].mean()
    chosen["layer"] = [max(picks[picks.parcel_id == pid].layer.mode(), key=lambda layer: averaged[(pid, layer)])
                       for pid in chosen.index]
    chosen["folds_agree"] = [float(np.mean(picks[picks.parcel_id == pid].layer == layer))
                             for pid, layer in chosen["layer"].items()]
    at_layer = frame.set_index(["parcel_id", "layer"])
    for column in ("top_state", "ceiling"):
        chosen[column] = [at_layer.loc[(pid, layer), column] for pid, layer in chosen["layer"].items()]
    return frame, chosen.reset_index().set_index("parcel")


def test_mode2_run_joins_the_board_with_its_nested_layer_choice(runs, mode2):
    import pandas as pd

    root, model, made = runs
    run = validate_run(mode2)
    assert run.mode == "2" and run.manifest["settings"]["inputs"] == STATES
    assert not (mode2 / "summary.parquet").exists()  # a real Mode 2 run: no Mode 1 files
    frame, chosen = mode2_expected(mode2)
    assert sorted(frame["layer"].unique()) == [1, 3]
    states = pd.read_parquet(mode2 / "mode2_states.parquet")
    nested = pd.read_parquet(mode2 / "mode2_nested.parquet").set_index("parcel")
    board = leaderboard.build([root / "a", root / "b", root / "m2"])
    assert board.notes == []
    rows = {r["parcel"]: r for r in board.rows if r["mode"] == "2"}
    assert list(rows) == list(chosen.index)  # whole brain first, then parcel ids
    for parcel, row in rows.items():
        expected = chosen.loc[parcel]
        assert row["run_id"] == run.manifest["run_id"] and row["layer"] == expected["layer"]
        # the nested score (choice inside each fold), recomputed from the per-fold file
        assert row["score"] == row["test"] == pytest.approx(expected["test"], abs=1e-12)
        assert row["validation"] == pytest.approx(expected["validation"], abs=1e-12)
        assert row["stage1_test"] == pytest.approx(expected["stage1_test"], abs=1e-12)
        assert row["folds_agree"] == pytest.approx(expected["folds_agree"])
        assert nested.loc[parcel, "fold_layers"] == expected["fold_layers"]
        assert row["state"] == row["top_state"] == expected["top_state"]
        assert (row["selection"], row["inputs"]) == ("pivot", ",".join(STATES))
        kept = states[(states.layer == expected["layer"]) & (states.parcel == parcel)
                      & (states.state == expected["top_state"])]["kept_share"]
        assert row["top_state_share"] == pytest.approx(float(kept.iloc[0]))
        assert row["voxel_best_test"] is None  # Mode 1 only: missing, not 0
    # with two layers the per-fold choices differ somewhere, and the leaderboard reports those, not the layer
    # chosen on fold-averaged validation (that score is kept in mode2.parquet)
    averaged = frame.loc[frame.groupby("parcel_id")["stage2_validation"].idxmax()].set_index("parcel")
    split = [p for p in rows if len(set(chosen.loc[p, "fold_layers"].split(","))) > 1]
    assert split, chosen["fold_layers"]
    assert any(rows[p]["test"] != pytest.approx(averaged.loc[p, "stage2_test"], abs=1e-6) for p in split)
    # the planted (layer, state) of both planted parcels is recovered by the validation choice
    assert (rows[HESCHL]["layer"], rows[HESCHL]["top_state"]) == (1, "per_head_q_rope")
    stg = rows[PLANTED[1]["parcel"]]
    assert (stg["layer"], stg["top_state"]) == (3, "ffn_activated_state")
    assert rows[HESCHL]["score"] > 0.25
    # nested_choices recomputes the written nested rows from the per-fold file ...
    fold_rows = pq.read_table(mode2 / "mode2_folds.parquet").to_pylist()
    written = pq.read_table(mode2 / "mode2_nested.parquet").to_pylist()
    for mine, theirs in zip(nested_choices(fold_rows), written, strict=True):
        assert mine == {key: theirs[key] for key in mine}
    # ... and test scores never steer it: give Heschl's other layer a huge test r, the choice stays
    edited = [dict(r, stage2_test=0.99) if (r["parcel"], r["layer"]) == (HESCHL, 3) else r for r in fold_rows]
    again = {r["parcel"]: r for r in nested_choices(edited)}[HESCHL]
    assert (again["layer"], again["test"]) == (1, pytest.approx(rows[HESCHL]["test"]))
    # modes are ranked apart: the Mode 1 ranks are untouched
    assert {r["rank"] for r in rows.values()} == {1}
    assert sorted(r["rank"] for r in board.rows if r["mode"] == "1" and r["parcel_id"] == -1) == [1, 2, 3, 4]
    only = leaderboard.build([root / "a", root / "b", root / "m2"], mode="2")
    assert {r["run_id"] for r in only.rows} == {run.manifest["run_id"]}
    assert {r["run_id"] for r in leaderboard.build([root / "m2", root / "a"], mode="1").rows} == {
        json.loads((made[k] / "manifest.json").read_text())["run_id"] for k in ("llama", "untrained")}
    # ceiling-normalized: stage2_test / ceiling, missing where the parcel has no ceiling
    normalized = {r["parcel"]: r["score"] for r in leaderboard.build([root / "m2"], metric="normalized").rows}
    for parcel, score in normalized.items():
        expected = chosen.loc[parcel]
        if expected["ceiling"] > 0:
            assert score == pytest.approx(expected["test"] / expected["ceiling"])
        else:
            assert score is None
    assert any(v is None for v in normalized.values()) and normalized[HESCHL] is not None
    # written tables: the cell names the chosen layer and the state most kept features came from
    md = leaderboard.markdown(board)
    assert f"{rows[HESCHL]['score']:.3f} (L1 per_head_q_rope)" in md and "Mode 2 rows" in md
    assert f'title="Mode 2 pivot: stage 1 r {rows[HESCHL]["stage1_test"]:.3f}"' in leaderboard.html_page(board)
    table = pq.read_table(io.BytesIO(leaderboard.parquet_bytes(board))).to_pylist()
    assert [r for r in table if r["mode"] == "2"] == [rows[p] for p in rows]


def test_mode2_docs_queries_recompute_the_nested_choice(mode2, monkeypatch):
    scope = run_doc_examples("docs/mode2.md", 2, mode2, monkeypatch)
    written = pq.read_table(mode2 / "mode2_nested.parquet").to_pandas().set_index("parcel_id")
    for name in ("nested_pandas", "nested_duckdb"):
        frame = scope[name].reset_index() if name == "nested_pandas" else scope[name]
        frame = frame.set_index("parcel_id")
        assert list(frame.index) == list(written.index), name
        assert frame["parcel"].tolist() == written["parcel"].tolist(), name
        np.testing.assert_allclose(frame["test"], written["test"], atol=1e-12, err_msg=name)
    assert scope["nested_pandas"]["fold_layers"].tolist() == written["fold_layers"].tolist()


def test_schema_checks_mode2_runs_against_their_own_files(runs, mode2, tmp_path):
    _, _, made = runs
    folder = tmp_path / "runs"
    copies = {name: folder / name for name in ("column", "no-inputs", "as-mode1", "mode3", "no-states", "no-folds",
                                               "nested-column")}
    for copy in copies.values():
        shutil.copytree(mode2, copy)
    table = pq.read_table(copies["column"] / "mode2.parquet")
    pq.write_table(table.drop_columns(["stage2_validation"]), copies["column"] / "mode2.parquet")
    for name, edit in (("no-inputs", lambda m: m["settings"].pop("inputs")),
                       ("as-mode1", lambda m: m["settings"].update(mode=1)),
                       ("mode3", lambda m: m["settings"].update(mode=3))):
        manifest = json.loads((copies[name] / "manifest.json").read_text())
        edit(manifest)
        manifest["run_id"] += f"-{name}"
        (copies[name] / "manifest.json").write_text(json.dumps(manifest))
    (copies["no-states"] / "mode2_states.parquet").unlink()
    (copies["no-folds"] / "mode2_folds.parquet").unlink()  # as a Mode 2 run of an older mtbench
    table = pq.read_table(copies["nested-column"] / "mode2_nested.parquet")
    pq.write_table(table.drop_columns(["folds_agree"]), copies["nested-column"] / "mode2_nested.parquet")
    copies["mode1-as-mode2"] = folder / "mode1-as-mode2"  # a Mode 1 run claiming to be Mode 2
    shutil.copytree(made["llama"], copies["mode1-as-mode2"])
    manifest = json.loads((copies["mode1-as-mode2"] / "manifest.json").read_text())
    manifest["settings"].update(mode=2, inputs=STATES, pivot="input_hidden_state", selection="pivot")
    (copies["mode1-as-mode2"] / "manifest.json").write_text(json.dumps(manifest))
    expected = {
        "column": "mode2.parquet: column 'stage2_validation' is missing (older or foreign result schema)",
        "no-inputs": "key 'settings.inputs' is missing",
        "as-mode1": "maps/best_test_r.nii.gz is missing (incomplete or foreign mode 1 run)",
        "mode3": "unknown encoding mode '3' (this mtbench reads modes 1, 2",  # and the other installed analyses
        "no-states": "mode2_states.parquet is missing (incomplete or foreign mode 2 run)",
        "no-folds": "mode2_folds.parquet is missing (incomplete or foreign mode 2 run)",
        "nested-column": "mode2_nested.parquet: column 'folds_agree' is missing (older or foreign result schema)",
        "mode1-as-mode2": "maps/mode2_stage1_test_r.nii.gz is missing (incomplete or foreign mode 2 run)",
    }
    _assert_refused_in_one_line(copies, expected)
    board = leaderboard.build([tmp_path, mode2])
    assert {r["run_id"] for r in board.rows} == {json.loads((mode2 / "manifest.json").read_text())["run_id"]}
    for name, message in expected.items():
        assert sum(message in note for note in board.notes) == 1, name


def test_mode2_report_draws_the_stage_figure(mode2, tmp_path):
    _, chosen = mode2_expected(mode2)
    figures = {name: fig for name, _, fig in report.figures(mode2)}
    assert set(figures) == {"mode2_stages.png", "mode2_kept_states.png", "mode2_stage1_map.png",
                            "mode2_stage2_map.png"}
    labels = [f"{parcel} (L{row['layer']})" for parcel, row in chosen.iterrows()]
    # stage 1 vs stage 2: per parcel, the nested scores of the layers chosen in each fold (labelled by the modal one)
    stages = figures["mode2_stages.png"]
    check_figure(stages, "stage 1 vs stage 2", colorbar=False, legend=True)
    ax = stages.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stage 1", "stage 2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    widths = [p.get_width() for p in ax.patches]
    n = len(labels)
    assert widths[:n] == pytest.approx(chosen["stage1_test"].tolist())
    assert widths[n:] == pytest.approx(chosen["test"].tolist())
    # kept features per input state: each parcel's shares sum to 1, the legend names the inputs
    kept = figures["mode2_kept_states.png"]
    check_figure(kept, "kept features per input state", colorbar=False, legend=True)
    totals = {}
    for patch in kept.axes[0].patches:
        y = round(patch.get_y() + patch.get_height() / 2)
        totals[y] = totals.get(y, 0.0) + patch.get_width()
    assert len(totals) == n and all(t == pytest.approx(1.0) for t in totals.values())
    assert [t.get_text() for t in kept.axes[0].get_legend().get_texts()] == STATES
    brain_layer = int(chosen.loc["whole brain", "layer"])
    for k in (1, 2):
        check_figure(figures[f"mode2_stage{k}_map.png"],
                     f"Mode 2 stage {k}: held-out r per voxel (layer {brain_layer})")
    result = CliRunner().invoke(main, ["report", str(mode2), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == sorted(figures)
    assert "mode2_stages.png" in (tmp_path / "rep" / "index.html").read_text()


def test_markdown_escapes_hostile_text_and_keeps_normal_names(runs, tmp_path, monkeypatch):
    """Issue 32, item 3: leaderboard.md carried run ids, model names, parcels and notes raw (HTML to a renderer)."""
    root, _, made = runs
    normal = leaderboard.markdown(board_of(root))
    hostile = "<img src=x onerror=alert(1)>"
    for folder, run_id, created in (("old", "old-run", "2998-01-01T00:00:00+00:00"),
                                    ("new", "new-run", "2999-01-01T00:00:00+00:00"),
                                    ("bad", "<b>old</b>&co", "2999-01-01T00:00:00+00:00")):
        copy = tmp_path / "h" / "runs" / folder
        shutil.copytree(made["random"], copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["model"]["name"], manifest["model"]["family"] = hostile, "fam<i>&</i>"
        manifest["run_id"], manifest["created"] = run_id, created
        (copy / "manifest.json").write_text(json.dumps(manifest))
    board = leaderboard.build([root / "b", tmp_path / "h"])
    for row in board.rows:
        if row["parcel"] == HESCHL:
            row["parcel"] = "<svg onload=alert(2)> & co\n| injected |"
    md = leaderboard.markdown(board)
    text = [line for line in md.splitlines() if not line.startswith("Cells:")]  # the legend's own (L<layer> <state>)
    assert not [line for line in text if "<" in line or ">" in line or re.search(r"&(?!amp;|lt;|gt;)", line)]
    row = next(line for line in text if "onerror" in line)
    assert row.startswith("| ") and "| &lt;img src=x onerror=alert(1)&gt; | fam&lt;i&gt;&amp;&lt;/i&gt; |" in row
    header = next(line for line in text if line.startswith("| rank |"))
    assert "| &lt;svg onload=alert(2)&gt; &amp; co \\| injected \\| |" in header  # one header cell, one line
    assert "- old-run: superseded by the newer run new-run of" in md
    # a run id that is not a name never reaches the board (a path, HTML): its note says so, escaped
    assert "run_id '&lt;b&gt;old&lt;/b&gt;&amp;co' is not a run id" in md
    assert len({line.count(" | ") for line in text if line.startswith("| ")}) == 1  # every row has its cells
    # ordinary names render exactly as before: quotes and apostrophes untouched, byte for byte
    assert f"| {HESCHL} |" in normal
    monkeypatch.setattr(leaderboard, "_md", lambda value: str(value).replace("|", "\\|"))  # the old escaping
    assert leaderboard.markdown(board_of(root)) == normal
