"""`mtbench sweep`: plans expand into named cells, sweeps resume, retry, and share a results directory.

All on the tiny synthetic dataset planted with a tiny random Llama; the cells are real runs.
The Slurm executor is tested against a real cluster in test_sweep_slurm.py (slow).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sweep_helpers import PLANTED, event_counts, scores_by_cell, sweep_cli, write_plan  # tests/ is on sys.path
from test_plugins import make_distribution

from mtbench.api import TaskResources
from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench_plugins.commands.board import leaderboard
from mtbench.registry import get_registry
from mtbench_plugins.commands.sweep.engine import run_sweep
from mtbench_plugins.commands.sweep.plan import expand, load_plan
from mtbench_plugins.commands.sweep.tasks import read_events, result_is_valid
from mtbench_plugins.models.hf.tiny import save_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return root, save_tiny_llama(root / "tiny-llama", seed=0, n_layers=2)


def test_plan_expands_into_canonical_hashed_cells(tiny, tmp_path):
    root, model = tiny
    plan_file = write_plan(tmp_path / "plan.toml", model, root / "cache", protocols=("mtbench", "mindtransformer"))
    groups = expand(load_plan(plan_file), tmp_path / "results")
    cells = [c for g in groups for c in g.cells]
    assert len(groups) == 1 and len(cells) == 2 * 2 * 2  # states x layers x protocols
    assert groups[0].layers == [1, 2] and groups[0].states == ["per_head_q_rope", "ffn_activated_state"]
    for cell in cells:
        assert re.fullmatch(r"hf-tiny-llama-synthetic-average-L00[12]-(per_head_q_rope|ffn_activated_state)-"
                            r"(mtbench|mindtransformer)-[0-9a-f]{10}", cell.name), cell.name
        assert cell.name.endswith(cell.hash) and len(cell.settings.states) == len(cell.settings.layers) == 1
    assert len({c.name for c in cells}) == len(cells)
    # canonical: the same plan names the same cells; another setting names other cells
    again = [c.name for g in expand(load_plan(plan_file), tmp_path / "results") for c in g.cells]
    assert again == [c.name for c in cells]
    other = load_plan(plan_file, settings={"alphas": [1.0, 10.0]})
    assert not {c.name for g in expand(other, tmp_path / "results") for c in g.cells} & set(again)

    # the same choices as flags name the same cells
    dataset_options = load_plan(plan_file).dataset_options["synthetic"]
    flags = load_plan(None, models=[f"hf:{model}"], states="per_head_q_rope,ffn_activated_state",
                      protocols=["mtbench", "mindtransformer"], cache=str(root / "cache"),
                      dataset_options={"synthetic": dataset_options})
    assert [c.name for g in expand(flags, tmp_path / "results") for c in g.cells] == again

    # the dry run counts cells and runs nothing (flags only, no plan file)
    args = ["sweep", "--model", f"hf:{model}", "--states", "per_head_q_rope,ffn_activated_state", "--protocol",
            "mtbench", "--protocol", "mindtransformer", "--cache", str(root / "cache"), "--out",
            str(tmp_path / "results"), "--dry-run"]
    args += [arg for key, value in dataset_options.items() for arg in ("--dataset-option", f"{key}={value}")]
    result = CliRunner().invoke(main, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "8 cells" in result.output and "CPU-hours" in result.output
    assert ("combined runs (each model, dataset, subject, protocol and mode as one run): 2, 0 already written"
            in result.output)
    # plans written when protocols were named in `modes` still read, with a note
    legacy = tmp_path / "legacy.toml"
    legacy.write_text(plan_file.read_text().replace("protocols = ", "modes = "))
    old = load_plan(legacy)
    assert old.protocols == ["mtbench", "mindtransformer"] and old.modes == [1]
    assert "read as `protocols = ['mtbench', 'mindtransformer']`" in old.notes[0]
    assert [c.name for g in expand(old, tmp_path / "results") for c in g.cells] == again
    # Mode 2 cells from flags: one per layer; a protocol given as --mode still works, with the note
    options = [arg for key, value in dataset_options.items() for arg in ("--dataset-option", f"{key}={value}")]
    mode2 = CliRunner().invoke(main, ["sweep", "--model", f"hf:{model}", "--mode", "2", "--inputs",
                                      "per_head_q_rope,attn_output", "--mode", "mindtransformer", *options,
                                      "--cache", str(root / "cache"), "--out", str(tmp_path / "results"), "--dry-run"],
                               env={"COLUMNS": "200"})
    assert mode2.exit_code == 2 and "unknown mode 'mindtransformer'" in mode2.output  # mixed: not guessed
    mode2 = CliRunner().invoke(main, ["sweep", "--model", f"hf:{model}", "--mode", "2", "--inputs",
                                      "per_head_q_rope,attn_output", "--protocol", "mindtransformer", *options,
                                      "--cache", str(root / "cache"), "--out", str(tmp_path / "results"), "--dry-run"],
                               env={"COLUMNS": "200"})
    assert mode2.exit_code == 0, mode2.output
    assert "2 cells" in mode2.output  # one per layer
    assert "as one run): 1, 0 already written" in mode2.output
    legacy_flag = CliRunner().invoke(main, args[:5] + ["--mode", "mindtransformer", *args[9:]], env={"COLUMNS": "200"})
    assert legacy_flag.exit_code == 0 and "note `modes = ['mindtransformer']` read as `protocols" in legacy_flag.output
    assert not (tmp_path / "results" / "runs").exists()


def test_bad_plans_fail_in_one_line(tiny, tmp_path):
    root, model = tiny
    plan_file = write_plan(tmp_path / "plan.toml", model, root / "cache")
    bad = tmp_path / "bad.toml"
    bad.write_text("layer = 3\n" + plan_file.read_text())
    with pytest.raises(MtbenchError, match="unknown key 'layer'"):
        load_plan(bad)
    with pytest.raises(MtbenchError, match="unknown mode 'fast': modes are 1 .*, 2 .*protocols"):
        load_plan(plan_file, modes=["fast"])
    with pytest.raises(MtbenchError, match="unknown protocol 'fast'"):
        expand(load_plan(plan_file, protocols=["fast"]), tmp_path)
    # Mode 2 cells: their options need mode 2, mode 2 needs inputs, and states are Mode 1's
    with pytest.raises(MtbenchError,
                       match=r"\[mode2\] \(or --inputs, --pivot, --selection\) is for Mode 2 cells: add 2 to `modes`"):
        expand(load_plan(plan_file, mode2={"inputs": "attn_output"}), tmp_path)
    with pytest.raises(MtbenchError, match="--mode 2 needs --inputs"):
        expand(load_plan(plan_file, modes=["2"], states="all"), tmp_path)
    with pytest.raises(MtbenchError, match="`states` are for Mode 1, "):
        expand(load_plan(plan_file, modes=["2"], mode2={"inputs": "attn_output"}), tmp_path)
    with pytest.raises(MtbenchError, match="unknown state 'atn_output'"):
        expand(load_plan(plan_file, modes=["1", "2"], mode2={"inputs": "atn_output"}), tmp_path)
    with pytest.raises(MtbenchError, match=r"plan \[mode2\]: unknown key 'input'"):
        load_plan(plan_file, mode2={"input": "attn_output"})
    with pytest.raises(MtbenchError, match="unknown executor 'slurmm'.*'slurm'"):
        run_sweep(load_plan(plan_file, executor="slurmm"), tmp_path)
    with pytest.raises(MtbenchError, match="does not exist"):
        load_plan(tmp_path / "missing.toml")
    # a bad shared value fails when the plan is expanded (also --dry-run), not in every cell
    for settings, message in (({"trim_scans": -2}, r"trim_scans \(--trim\) must be a whole number"),
                              ({"alphas": "1e0:1e8:9"}, r"alphas \(--alphas\) must be a non-empty list")):
        with pytest.raises(MtbenchError, match=message):
            expand(load_plan(plan_file, settings=settings), tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(MtbenchError, match=r"cannot write to .*afile/results \(.*afile is a file\); give --out"):
        run_sweep(load_plan(plan_file), tmp_path / "afile" / "results")  # before any job, not in each


def test_sweep_without_folds_files(tiny, tmp_path, monkeypatch):
    """`folds = false` in a plan (or `mtbench sweep --no-folds`) reaches every cell's run: no
    folds.parquet, the manifest says so; the flag overrides the plan; a value that is not a
    boolean fails in one line."""
    import json

    root, model = tiny
    monkeypatch.setenv("MTBENCH_CACHE", str(root / "cache"))
    plan_file = write_plan(tmp_path / "plan.toml", model, root / "cache", states=("per_head_q_rope",), layers="1",
                           executor_options={"workers": 0})
    text = plan_file.read_text()
    plan_file.write_text("folds = false\n" + text)
    plan = load_plan(plan_file)
    assert plan.folds is False and load_plan(plan_file, folds=True).folds is True
    assert load_plan(plan_file, folds=None).folds is False  # no flag: the plan's value
    results = tmp_path / "results"
    assert run_sweep(plan, results).complete
    (run_dir,) = (results / "runs").iterdir()
    assert (run_dir / "scores.parquet").exists() and not (run_dir / "folds.parquet").exists()
    assert json.loads((run_dir / "manifest.json").read_text())["folds_file"] is False
    bad = tmp_path / "bad.toml"
    bad.write_text('folds = "no"\n' + text)
    with pytest.raises(MtbenchError, match="'folds' must be true or false, got 'no'"):
        load_plan(bad)


def test_executors_are_registered_through_the_hook():
    registry = get_registry(reload=True)
    assert {"local", "slurm"} <= set(registry.names("executor"))
    assert registry.providers["executor"]["slurm"] == "executors"
    plugin = next(p for p in registry.plugins if p.name == "executors")
    assert plugin.hooks == ["register_executors"] and plugin.module == "mtbench_plugins.executors.hooks"


def test_sweep_resumes_reports_failures_and_retries_only_them(tiny, tmp_path, monkeypatch):
    """Four cells in this process; one is blocked (another process is writing its run folder) and fails."""
    import shutil

    from mtbench.paths import exclusive_lock
    from mtbench.runner import run

    root, model = tiny
    monkeypatch.setenv("MTBENCH_CACHE", str(root / "cache"))
    plan = load_plan(write_plan(tmp_path / "plan.toml", model, root / "cache", executor_options={"workers": 0}))
    results = tmp_path / "results"
    cells = [c for g in expand(plan, results) for c in g.cells]
    blocked = cells[1]
    partial = results / "runs" / f"{blocked.name}.partial"
    partial.mkdir(parents=True)
    with exclusive_lock(partial / ".writing", owner="a writer that never finishes"):
        report = run_sweep(plan, results)
        assert report.n_cells == 4 and not report.complete
        assert sorted(report.status.values()) == ["done", "done", "done", "failed"]
        assert [name for name, _, _ in report.failed] == [blocked.name]
        log = report.failed[0][2]
        assert "Traceback" in log.read_text() and blocked.name in str(log)
        assert "is being written by another process" in log.read_text()
        assert event_counts(results, "extract") == {report.extracted[0]: {"start": 1, "done": 1}}
        # not combined while a cell is missing; the leaderboard leaves the lone cells out, saying why
        assert not report.combined and report.not_combined[0].endswith(": 1 of its 4 cells not done")
        with pytest.raises(MtbenchError, match="nothing to rank .*: 3 cells of sweeps not combined yet are left out"):
            leaderboard.build([results])

        # resuming redoes nothing: done cells are skipped, the failed one waits for --retry-failed
        again = run_sweep(plan, results)
        assert again.status == report.status
        assert all(c == {"start": 1, "done": 1} for n, c in event_counts(results).items() if n != blocked.name)
        assert event_counts(results)[blocked.name] == {"start": 1, "failed": 1}

    shutil.rmtree(partial)
    retried = run_sweep(plan, results, retry_failed=True)
    assert retried.complete and not retried.failed
    counts = event_counts(results)
    assert counts.pop(blocked.name) == {"start": 2, "failed": 1, "done": 1}
    assert all(c == {"start": 1, "done": 1} for c in counts.values())
    combined = retried.combined[0]
    assert retried.combined == [combined] and "-combined-mtbench-" in combined and not retried.not_combined
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted([*(c.name for c in cells), combined])
    # the leaderboard shows the model once, with its best (layer, state) per parcel across all the cells
    board = leaderboard.build([results])
    assert {r["run_id"] for r in board.rows} == {combined}
    heschl = next(r for r in board.rows if r["parcel"] == PLANTED[0]["parcel"])
    assert (heschl["layer"], heschl["state"]) == (PLANTED[0]["layer"], PLANTED[0]["state"])
    assert "4 sweep cells are shown through the runs that combine them" in board.notes
    combined_files = {p: p.stat().st_mtime_ns for p in (results / "runs" / combined).rglob("*")}

    # a corrupt result is recomputed (a damaged table, or a map truncated after the cell finished);
    # the corrupt folder is set aside, not deleted
    corrupt, truncated = cells[2], cells[3]
    (results / "runs" / corrupt.name / "scores.parquet").write_bytes(b"PAR1 truncated")
    a_map = next((results / "runs" / truncated.name / "maps").glob("*.nii.gz"))
    a_map.write_bytes(a_map.read_bytes()[:-200])
    assert run_sweep(plan, results).complete
    assert event_counts(results)[corrupt.name] == event_counts(results)[truncated.name] == {"start": 2, "done": 2}
    set_aside = sorted(p.name for p in (results / "sweep" / "invalid").iterdir())
    assert [name.rsplit("-", 2)[0] for name in set_aside] == sorted([corrupt.name, truncated.name])
    assert result_is_valid(results, truncated.name, truncated.settings)
    # a valid combined run is kept as it is; a damaged one is combined again
    assert {p: p.stat().st_mtime_ns for p in (results / "runs" / combined).rglob("*")} == combined_files
    (results / "runs" / combined / "summary.parquet").write_bytes(b"PAR1 damaged")
    assert run_sweep(plan, results).combined == [combined]
    assert leaderboard.build([results]).rows  # readable again
    # a combination that cannot be written is reported; the sweep and its cells stand
    shutil.rmtree(results / "runs" / combined)
    (results / "runs" / cells[0].name / "folds.parquet").unlink()  # e.g. a cell made with --no-folds
    report = run_sweep(plan, results)
    assert report.complete and not report.combined and "no folds.parquet" in report.not_combined[0]

    # a cell's result is exactly what `mtbench run` of that one (layer, state) gives
    cell = cells[0]
    single = run(replace(cell.settings), tmp_path / "single")
    expected = pq.read_table(single.run_dir / "scores.parquet").column("value").to_numpy()
    got = pq.read_table(results / "runs" / cell.name / "scores.parquet").column("value").to_numpy()
    np.testing.assert_array_equal(got, expected)
    winners = pq.read_table(results / "runs" / cell.name / "summary.parquet").to_pylist()
    assert {(r["layer"], r["state"]) for r in winners} == {(cell.settings.layers[0], cell.settings.states[0])}


MODE2_INPUTS = ["per_head_q_rope", "attn_output", "ffn_activated_state"]


def test_sweep_of_both_modes_ranks_each_through_its_combined_run(tiny, tmp_path, monkeypatch):
    """`modes = [1, 2]`: Mode 1 cells per (layer, state), Mode 2 cells per layer, each mode combined
    into the run that fitted all its cells; the Mode 2 combination is `mtbench run --mode 2` of all
    the layers (the nested layer choice made across the cells), and the leaderboard ranks both."""
    from mtbench.runner import run

    root, model = tiny
    monkeypatch.setenv("MTBENCH_CACHE", str(root / "cache"))
    extra = f"modes = [1, 2]\nmode2 = {{ inputs = {json.dumps(MODE2_INPUTS)} }}"
    plan = load_plan(write_plan(tmp_path / "plan.toml", model, root / "cache", states=("per_head_q_rope",),
                                executor_options={"workers": 0}, extra=extra))
    assert plan.modes == [1, 2] and plan.analysis_options == {"mode2": {"inputs": MODE2_INPUTS}}
    (group,) = expand(plan, tmp_path / "results")
    assert sorted(group.states) == sorted([*MODE2_INPUTS, "input_hidden_state"])  # inputs, pivot: extracted once
    mode2_cells = [c for c in group.cells if c.settings.mode == 2]
    assert len(group.cells) == 4 and [c.settings.layers for c in mode2_cells] == [[1], [2]]
    for cell in mode2_cells:
        assert re.fullmatch(r"hf-tiny-llama-synthetic-average-L00[12]-mode2-pivot-mtbench-[0-9a-f]{10}", cell.name)
        assert cell.settings.inputs == MODE2_INPUTS and cell.settings.states == ["all"]

    results = tmp_path / "results"
    report = run_sweep(plan, results)
    assert report.complete and not report.not_combined
    (mode1,) = [name for name in report.combined if "-combined-mtbench-" in name]
    (mode2,) = [name for name in report.combined if "-combined-mode2-mtbench-" in name]
    assert all(result_is_valid(results, c.name, c.settings) for c in group.cells)

    # the Mode 2 combination is the run of every layer at once: every table, the choices across layers
    whole = run(replace(mode2_cells[0].settings, layers=[1, 2]), tmp_path / "whole").run_dir
    for name in ("mode2", "mode2_nested", "mode2_folds", "mode2_states", "mode2_voxels"):
        got, expected = (pq.read_table(folder / f"{name}.parquet").to_pandas().drop(columns="run_id", errors="ignore")
                         for folder in (results / "runs" / mode2, whole))
        assert list(got.columns) == list(expected.columns) and len(got) == len(expected), name
        for column in got.columns:
            if got[column].dtype.kind == "f":
                np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-5, err_msg=column)
            else:
                assert got[column].tolist() == expected[column].tolist(), (name, column)
    nested = pq.read_table(results / "runs" / mode2 / "mode2_nested.parquet").to_pylist()
    heschl = next(r for r in nested if r["parcel"] == PLANTED[0]["parcel"])
    assert (heschl["layer"], heschl["top_state"]) == (PLANTED[0]["layer"], PLANTED[0]["state"])

    # the board ranks the model in each mode, each through its combined run; resuming keeps everything
    board = leaderboard.build([results])
    assert {(r["mode"], r["run_id"]) for r in board.rows} == {("1", mode1), ("2", mode2)}
    # a rescored cell still stands for one (layer, state): left out, saying what to rescore instead;
    # the rescored combined run is ranked under its metric
    from mtbench_plugins.commands.runs.rescore import rescore

    cell = next(c for c in group.cells if c.settings.mode == 1)
    rescore(results / "runs" / cell.name, metric="r2")
    rescored = rescore(results / "runs" / mode1, metric="r2").run_dir.name
    board = leaderboard.build([results])
    assert {(r["mode"], r["metric"], r["run_id"]) for r in board.rows} == {
        ("1", "pearson", mode1), ("2", "pearson", mode2), ("1", "r2", rescored)}
    assert any(note.startswith(f"1 rescored sweep cells are left out (e.g. {cell.name}-r2)") and
               "`mtbench rescore` the sweep's combined run" in note for note in board.notes), board.notes
    again = run_sweep(plan, results)
    assert again.complete and sorted(again.combined) == sorted(report.combined)
    assert all(c == {"start": 1, "done": 1} for c in event_counts(results).values())


THIRD_PARTY_EXECUTOR = """
    from pathlib import Path
    from mtbench.api import ExecutorEntry
    from mtbench.hookspecs import hookimpl

    class Inline:
        def __init__(self, record):
            self.record = Path(record)

        def run(self, tasks, poll):
            statuses = []
            for task in tasks:
                with self.record.open("a") as f:
                    f.write(f"{task.kind} {task.name}\\n")
                statuses.append(task())
                poll()
            return statuses

    @hookimpl
    def register_executors():
        return [ExecutorEntry(name="inline", summary="one task after the other, in the sweep's process",
                              load=lambda **options: Inline(**options))]
"""


def test_two_sweeps_at_once_share_the_results_directory(tiny, tmp_path):
    """Two processes sweep the same plan into the same folder: each cell is computed once.

    The second sweep runs on a third-party executor, registered through the same hook.
    """
    root, model = tiny
    plan_file = write_plan(tmp_path / "plan.toml", model, root / "cache", executor_options={"workers": 0})
    record = tmp_path / "inline.txt"
    other_plan = write_plan(tmp_path / "other.toml", model, root / "cache", executor="inline",
                            executor_options={"record": str(record)})
    extra = make_distribution(tmp_path / "site", "mtbench-inline", "mtbench_inline", THIRD_PARTY_EXECUTOR, "inline")
    results = tmp_path / "results"
    first = sweep_cli(str(plan_file), "--out", str(results))
    second = sweep_cli(str(other_plan), "--out", str(results),
                       env={"PYTHONPATH": os.pathsep.join(filter(None, [str(extra), os.environ.get("PYTHONPATH")]))})
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outputs):
        assert proc.returncode == 0, err[-3000:] + out[-2000:]
        assert "4 done, 0 failed" in out
    counts = event_counts(results)
    odd = {name: read_events(results / "sweep" / "cells" / f"{name}.events")
           for name, c in counts.items() if c != {"start": 1, "done": 1}}
    assert len(counts) == 4 and not odd, odd
    assert list(event_counts(results, "extract").values()) == [{"start": 1, "done": 1}]
    runs = sorted((results / "runs").iterdir())
    combined = [p.name for p in runs if "-combined-" in p.name]
    assert len(combined) == 1 and all(f"combined: runs/{combined[0]}" in out for out, _ in outputs)
    assert [p.name for p in runs if p.name not in combined] == sorted(counts)
    assert not any(p.name.endswith(".partial") for p in runs)
    assert not (results / "sweep" / "invalid").exists()  # the combination was written once, not redone
    scores = scores_by_cell(results)
    assert all(len(rows) > 0 and np.isfinite([r[-1] for r in rows]).all() for rows in scores.values())
    # the inline sweep runs tasks only if it planned before the other finished (timing decides);
    # whatever it ran must be one of the cells, each still computed once (checked above)
    ran_inline = record.read_text().splitlines() if record.exists() else []
    assert all(line.split()[1] in counts for line in ran_inline if line.startswith("fit "))


# --------------------------------------------------------------------------- local executor
@dataclass(frozen=True)
class Stamp:
    """A task that records when it ran (and can kill its own worker)."""

    name: str
    folder: str
    resources: TaskResources
    kind: str = "fit"
    die: bool = False

    def __call__(self) -> str:
        start = time.time()
        if self.die:
            os._exit(9)  # like the kernel's OOM killer: no exception, no clean-up
        time.sleep(0.5)
        Path(self.folder, self.name).write_text(f"{start} {time.time()}")
        return "done"


def test_local_executor_memory_guard_and_lost_workers(tmp_path):
    from mtbench_plugins.executors.local import LocalExecutor, available_memory_gb

    executor = LocalExecutor(workers=2, memory_fraction=0.5)
    big = TaskResources(cpus=1, mem_gb=available_memory_gb() * 0.3)  # two of them exceed half the memory
    tasks = [Stamp(f"t{i}", str(tmp_path), big) for i in range(3)]
    polls = []
    assert executor.run(tasks, lambda: polls.append(1)) == ["done"] * 3
    spans = sorted(tuple(map(float, (tmp_path / t.name).read_text().split())) for t in tasks)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # never two at once
    assert polls

    small = TaskResources(cpus=1, mem_gb=0.01)
    statuses = LocalExecutor(workers=1).run([Stamp("dies", str(tmp_path), small, die=True),
                                             Stamp("after", str(tmp_path), small)], lambda: None)
    assert statuses[0].startswith("lost: worker process died") and statuses[1] == "done"
    with pytest.raises(MtbenchError, match="workers=-1"):
        LocalExecutor(workers=-1)


def test_task_resources_follow_model_and_data_size():
    from mtbench_plugins.commands.sweep.plan import DatasetInfo, Group, ModelInfo, Plan
    from mtbench_plugins.commands.sweep.resources import extract_resources, fit_resources

    def group(n_params, hidden, n_voxels):
        data = DatasetInfo(subjects=["average"], n_voxels=n_voxels, n_scans=2800, n_words=15000, n_runs=9)
        return Group("g", "m", "d", {}, {}, ["ffn_output"], list(range(1, 81)),
                     ModelInfo(n_layers=80, states=["ffn_output"], n_params=n_params, hidden=hidden), data)

    small, big = group(135e6, 576, 2_000), group(70e9, 8192, 200_000)
    plan = Plan(models=["m"])
    assert extract_resources(big, plan).mem_gb > 280 > extract_resources(small, plan).mem_gb  # 70e9 float32 weights
    assert extract_resources(big, plan).minutes > extract_resources(small, plan).minutes
    assert fit_resources(big, plan).mem_gb > fit_resources(small, plan).mem_gb
    assert fit_resources(big, plan).minutes > fit_resources(small, plan).minutes
    assert fit_resources(big, plan).gpus == 0 and extract_resources(big, plan).gpus == 0
    gpu = Plan(models=["m"], settings={"backend": "torch_cuda"}, resources={"extract_gpus": 1})
    assert fit_resources(big, gpu).gpus == 1 and extract_resources(big, gpu).gpus == 1
