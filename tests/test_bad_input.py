"""Bad inputs and faults that used to end in a traceback, a silent success or no word at all (issue 32).

Each test reproduces a finding as it was reported and checks it now ends in one line that
names the problem and the fix, before the long work where it can be known then. The whole
bad-input suite is counted in docs/robustness.md.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mtbench_plugins.analyses.mode1 import fit as mode1_fit
from test_plugins import make_distribution, mtbench

from mtbench import runner
from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry

HESCHL = "Heschl's Gyrus (includes H1 and H2)"
TRUTH = json.dumps([{"parcel": HESCHL, "layer": 1, "state": "embedding"}])  # planted with the random baseline
TINY = ["--dataset-option", "scale=tiny", "--dataset-option", "truth_model=random", "--dataset-option",
        f"truth={TRUTH}", "--alphas", "1e0:1e4:3"]


def one_line(result, expected: str, status: int = 2) -> str:
    """The result of a CliRunner call is exit ``status`` and one error line holding ``expected``."""
    assert result.exit_code == status, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


def no_model(monkeypatch) -> None:
    """Loading a model now fails the test: what is checked must be refused before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "load_model", refuse)


# --------------------------------------------------------------------------- output folders
@pytest.mark.parametrize("command, default", [
    (["run", "--model", "random", *TINY], "--out mtbench-results"),
    (["sweep", "--model", "random", "--dry-run"], "--out mtbench-results"),
    (["leaderboard", "somewhere"], "--out leaderboard"),
    (["report", "some-run"], "leave --out out"),
    (["combine", "some-run"], "leave --out out"),
    (["rescore", "some-run", "--metric", "r2"], "leave --out out"),
])
def test_an_empty_out_is_refused_and_nothing_is_written_here(command, default, tmp_path, monkeypatch):
    """`--out ""` wrote runs/ into the current folder and exited 0."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*command, "--out", ""])
    line = one_line(result, "--out '' is an empty path, which would write into the current folder")
    assert line.endswith(default)
    assert list(tmp_path.iterdir()) == []


def test_every_out_option_of_every_command_is_checked_in_one_place():
    """The check is the option's type, shared by the built-in commands and any plugin's."""
    from mtbench.cli.options import OutFolder

    ctx = click.Context(main)
    outs = []

    def visit(command, path):
        for param in command.params:
            if "--out" in getattr(param, "opts", []):
                outs.append((path, param.type))
        for name in getattr(command, "list_commands", lambda _: [])(ctx):
            visit(command.get_command(ctx, name), f"{path} {name}")

    visit(main, "mtbench")
    assert len(outs) >= 7, outs  # run, sweep, leaderboard, report, combine, rescore, data simulate
    assert all(isinstance(kind, OutFolder) for _, kind in outs), outs


# --------------------------------------------------------------------------- sweep plans
def sweep_plan(tmp_path: Path, text: str) -> Path:
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["random"]\n' + text + '\n[dataset_options.synthetic]\nscale = "tiny"\n'
                    f'truth_model = "random"\ntruth = {json.dumps(TRUTH)}\n')
    return plan


@pytest.mark.parametrize("text, expected", [
    ('executor = "kubernetes"', "unknown executor 'kubernetes': none is close (`mtbench list executors` shows all"),
    ("executor = 3", "plan key 'executor' must be the name of an executor, got 3"),
    ("[resources]\nfit_cpus = -4", "plan [resources]: fit_cpus = -4 must be a whole number >= 1"),
    ("[resources]\nfit_cpus = true", "fit_cpus = True must be a whole number >= 1"),
    ("[resources]\nextract_gpus = 0.5", "extract_gpus = 0.5 must be a whole number >= 0"),
    ("[resources]\nminutes_factor = 0", "minutes_factor = 0 must be a number > 0"),
    ('[resources]\nextract_feature_gb = "16"', "extract_feature_gb = '16' must be a number > 0"),
    ("resources = 4", "plan key 'resources' must be a table ([resources] with KEY = VALUE lines), got 4"),
    ("layers = 5", "layer 5 is out of range: this model has blocks 1..1"),  # a block number, as --layers 5
    ("layers = 1.5", "plan key 'layers' must be 'all', a range such as '1-5,8', a block number or a list"),
    ("[executor_options]\nwrkers = 4", "executor local has no option 'wrkers': did you mean 'workers'?"),
])
def test_bad_sweep_plans_fail_in_one_line_at_the_dry_run(text, expected, tmp_path):
    """`executor = "kubernetes"`, `fit_cpus = -4` passed --dry-run; `layers = 5` was a TypeError."""
    result = CliRunner().invoke(main, ["sweep", str(sweep_plan(tmp_path, text)), "--dry-run", "--out",
                                       str(tmp_path / "results")])
    one_line(result, expected)


def test_a_plan_layer_may_be_one_block_number(tmp_path):
    result = CliRunner().invoke(main, ["sweep", str(sweep_plan(tmp_path, "layers = 1")), "--dry-run", "--out",
                                       str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    assert "sweep plan: 1 cells" in result.output


def test_an_executor_option_is_checked_before_anything_runs_with_the_closest_names(tmp_path):
    plan = sweep_plan(tmp_path, "")
    result = CliRunner().invoke(main, ["sweep", str(plan), "--executor-option", "wrkers=4", "--out",
                                       str(tmp_path / "results")])
    one_line(result, "executor local has no option 'wrkers': did you mean 'workers'? (it takes workers, "
                     "memory_fraction, poll_seconds; --executor-option KEY=VALUE)")
    result = CliRunner().invoke(main, ["sweep", str(plan), "--executor", "slurm", "--executor-option", "partion=gpu",
                                       "--dry-run", "--out", str(tmp_path / "results")])
    one_line(result, "executor slurm has no option 'partion': did you mean 'partition'?")
    assert not (tmp_path / "results" / "runs").exists()


def test_each_executor_declares_the_options_it_takes():
    from mtbench_plugins.executors.local import LocalExecutor
    from mtbench_plugins.executors.slurm import SlurmExecutor

    for name, cls in (("local", LocalExecutor), ("slurm", SlurmExecutor)):
        declared = get_registry().executor(name).options
        assert declared == tuple(inspect.signature(cls).parameters), name


def test_a_plan_that_is_not_utf8_is_one_line(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_bytes('models = ["random"]\n# r\xe9sum\xe9 of the plan\n'.encode("latin-1"))
    result = CliRunner().invoke(main, ["sweep", str(plan), "--dry-run", "--out", str(tmp_path / "results")])
    one_line(result, f"plan file {plan} is not UTF-8 text (byte 0xe9 at offset 23); save it as UTF-8")


# --------------------------------------------------------------------------- files and folders
def test_an_hf_folder_whose_config_is_not_json_is_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama",\n')
    result = CliRunner().invoke(main, ["run", "--model", f"hf:{folder}", "--out", str(tmp_path / "results")])
    one_line(result, f"{folder / 'config.json'} is not a readable JSON config (Expecting property name")


def read_only(folder: Path, monkeypatch) -> None:
    """Make ``folder`` read-only; as root (who writes anyway) the file system answers EACCES there too."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_mkdir, real_open = os.mkdir, os.open

    def inside(path) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(folder.resolve())

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_plugin_new_in_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    read_only(folder, monkeypatch)
    result = CliRunner().invoke(main, ["plugin", "new", "metric", "my-metric", "--dir", str(folder)])
    monkeypatch.undo()
    folder.chmod(0o755)
    one_line(result, f"cannot write to {folder / 'mtbench-my-metric'} (Permission denied); give --dir a folder "
                     "you can write to")
    assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- plugins
FAILING_PLUGIN = """
    from mtbench.api import MetricEntry, ModelEntry
    from mtbench.hookspecs import hookimpl

    def boom(y_true, y_pred):
        raise ValueError("boom: cannot score these shapes")

    def load_fancy(**options):
        import fancy_missing_library  # noqa: F401

    @hookimpl
    def register_metrics():
        return [MetricEntry(name="boom", summary="raises", score=boom)]

    @hookimpl
    def register_models():
        return [ModelEntry(name="fancy", summary="needs a library that is not installed", load=load_fancy)]
"""


def test_a_plugin_that_fails_is_named_with_its_distribution(tmp_path):
    """A metric that raises inside a fit, a model whose load hits an ImportError: tracebacks through mtbench's
    code that named neither the plugin nor the package to blame."""
    site = make_distribution(tmp_path / "site", "mtbench-failing", "failing_plugin", FAILING_PLUGIN, "failing")
    out = ["--out", str(tmp_path / "results")]
    metric = mtbench("run", "--model", "random", "--metric", "boom", "--permutations", "0", *TINY, *out,
                     extra_path=site)
    assert metric.returncode == 2 and len(metric.stderr.strip().splitlines()) == 1, metric.stderr
    assert ("Error: metric 'boom' (plugin failing, distribution mtbench-failing 0.3) failed: ValueError: boom: "
            "cannot score these shapes; fix or uninstall mtbench-failing, or use another --metric") in metric.stderr
    model = mtbench("run", "--model", "fancy", *TINY, *out, extra_path=site)
    assert model.returncode == 2 and len(model.stderr.strip().splitlines()) == 1, model.stderr
    assert ("Error: model 'fancy' (plugin failing, distribution mtbench-failing 0.3) cannot be loaded: "
            "ModuleNotFoundError: No module named 'fancy_missing_library'; install what it needs") in model.stderr
    assert not (tmp_path / "results" / "runs").exists()


# --------------------------------------------------------------------------- values and memory
def test_empty_states_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    """`--states ""` failed only after the model had loaded and extracted."""
    no_model(monkeypatch)
    result = CliRunner().invoke(main, ["run", "--model", "random", "--states", "", "--out", str(tmp_path / "r")])
    one_line(result, "states (--states) is empty: give 'all' or a comma list of state names")
    result = CliRunner().invoke(main, ["sweep", "--model", "random", "--states", "", "--dry-run", "--out",
                                       str(tmp_path / "r")])
    one_line(result, "states (--states) is empty")


def test_a_random_model_wider_than_memory_is_one_line(tmp_path):
    """`--model random --model-option dim=100000000000`: numpy's ArrayMemoryError."""
    result = CliRunner().invoke(main, ["run", "--model", "random", "--model-option", "dim=100000000000", *TINY,
                                       "--out", str(tmp_path / "r")])
    line = one_line(result, "--model random --model-option dim=100000000000 (600 words) needs about ")
    assert line.endswith("this machine has available; use a smaller dim (default 300)")


def test_permutations_that_cannot_fit_in_memory_are_refused_before_anything_loads(tmp_path, monkeypatch):
    """`--permutations 1000000000` was killed by the kernel at 24 GB with no message."""
    no_model(monkeypatch)
    result = CliRunner().invoke(main, ["run", "--model", "random", "--permutations", "1000000000", "--out",
                                       str(tmp_path / "r")])
    line = one_line(result, "--permutations 1000000000 needs about 2.3")
    assert " TB of memory, more than the " in line and "lower --permutations" in line


def test_the_significance_test_checks_its_memory_with_the_real_run_count(monkeypatch):
    from mtbench import memory, significance

    assert significance.shift_test_bytes(1000, 9) < 3e6  # the default: a few MB, whatever the machine
    monkeypatch.setattr(memory, "available_bytes", lambda: 1e8)
    y = [np.random.default_rng(r).standard_normal((30, 4)) for r in range(3)]
    significance.circular_shift_pvalues(y, y, 1000)  # fits in 100 MB
    with pytest.raises(MtbenchError, match=r"--permutations 100000 needs about 236 MB of memory, more than the "
                                           r"100 MB this machine has available"):
        significance.circular_shift_pvalues(y, y, 100_000)


def test_running_out_of_memory_anywhere_is_one_line(tmp_path, monkeypatch):
    def allocate(*args, **kwargs):
        raise MemoryError("Unable to allocate 373. TiB for an array with shape (100000000000, 1757)")

    monkeypatch.setattr(runner, "prepare_inputs", allocate)
    result = CliRunner().invoke(main, ["run", "--model", "random", *TINY, "--out", str(tmp_path / "r")])
    one_line(result, "out of memory (Unable to allocate 373. TiB for an array with shape (100000000000, 1757)); "
                     "ask for less")


# --------------------------------------------------------------------------- signals
def tiny_llama_run(tmp_path: Path) -> list[str]:
    from mtbench_plugins.models.hf.tiny import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny-llama", seed=0, n_layers=2)
    truth = json.dumps([{"parcel": HESCHL, "layer": 2, "state": "per_head_v"}])
    return ["run", "--model", f"hf:{model}", "--states", "per_head_q,per_head_v,ffn_output", "--permutations", "0",
            "--dataset-option", "scale=tiny", "--dataset-option", f"truth_model=hf:{model}", "--dataset-option",
            f"truth={truth}", "--alphas", "1e0:1e4:3", "--out", str(tmp_path / "results")]


def test_an_interruption_says_what_the_run_had_done(tmp_path, monkeypatch):
    """Ctrl-C said "resume the feature extraction" even when the extraction was done and fits were kept."""
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    command = tiny_llama_run(tmp_path)
    real_fit, calls = mode1_fit.fit_nested_loro, []

    def fit_then_interrupt(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(mode1_fit, "fit_nested_loro", fit_then_interrupt)
    line = one_line(CliRunner().invoke(main, command), "Error: interrupted while fitting; 2 finished fits kept in ",
                    status=130)
    assert str(tmp_path / "results" / "checkpoints") in line
    assert line.endswith("and the features cached; rerun the same command to resume: it fits only the rest")
    assert "extraction" not in line

    # SIGTERM (kill, scancel) ended the run at once with no message; a handler of the test's own stands in
    # for that death, so that a run that ignores SIGTERM fails here instead of ending pytest
    class Killed(Exception):
        pass

    def killed(signum, frame):
        raise Killed("SIGTERM was not handled")

    calls.clear()

    def fit_then_terminate(*args, **kwargs):
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(mode1_fit, "fit_nested_loro", fit_then_terminate)
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        result = CliRunner().invoke(main, command)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # the same command reused the 2 kept fits, fitted a third, and was stopped in the fourth
    line = one_line(result, "Error: stopped by SIGTERM while fitting; 3 finished fits kept in ", status=143)
    assert line.endswith("rerun the same command to resume: it fits only the rest")

    monkeypatch.setattr(runner, "word_features", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    line = one_line(CliRunner().invoke(main, command), "Error: interrupted during the feature extraction; nothing "
                    "of this run was written", status=130)
    assert line.endswith("rerun the same command to resume the extraction (what reached the feature cache is "
                         "reused)")


@pytest.mark.slow
def test_sigterm_stops_a_run_with_what_it_kept_and_the_same_command_resumes(tmp_path):
    """SIGTERM (kill, scancel, a time limit) ended a run with no message at all."""
    command = [sys.executable, "-m", "mtbench.cli", *tiny_llama_run(tmp_path)]
    env = dict(os.environ, MTBENCH_CACHE=str(tmp_path / "cache"))
    kept = str(tmp_path / "results" / "checkpoints" / "*" / "*.npz")
    started = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not glob.glob(kept) and time.monotonic() < deadline and started.poll() is None:
        time.sleep(0.02)
    started.send_signal(signal.SIGTERM)
    _, err = started.communicate(timeout=60)
    assert started.returncode == 128 + signal.SIGTERM, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: stopped by SIGTERM while fitting; "), err
    n_kept = len(glob.glob(kept))
    assert f"; {n_kept} finished fit" in lines[0] and "rerun the same command to resume" in lines[0]
    assert 1 <= n_kept < 6
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "results" / "checkpoints").exists()  # the kept fits were used, then removed


# --------------------------------------------------------------------------- damaged results
def with_nan(run_dir: Path, copy: Path, file: str, row: int) -> str:
    """A copy of a run with the ``test`` value of one row of ``file`` made NaN; the parcel it hit."""
    shutil.copytree(run_dir, copy)
    table = pq.read_table(copy / file)
    values = table.column("test").to_pylist()
    values[row] = float("nan")
    index = table.schema.get_field_index("test")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(values, pa.float64())), copy / file)
    return table.column("parcel")[row].as_py()


def test_a_nan_in_a_finished_run_is_damage_not_an_unmeasured_cell(tmp_path):
    """A NaN in summary.parquet was shown on the board as "— (not measured)", with no note."""
    from mtbench_plugins.commands.board import leaderboard

    from mtbench.runner import run
    from mtbench.schema import validate_run
    from mtbench.settings import RunSettings

    data = {"scale": "tiny", "truth_model": "random", "truth": TRUTH}
    made = {mode: run(RunSettings(model="random", dataset="synthetic", states=["all"], alphas=[1.0, 1e2, 1e4],
                                  permutations=0, dataset_options=data, mode=mode, **options), tmp_path / mode).run_dir
            for mode, options in (("1", {}), ("2", {"inputs": ["embedding"], "pivot": "embedding"}))}
    damaged = tmp_path / "damaged" / "runs" / made["1"].name
    parcel = with_nan(made["1"], damaged, "summary.parquet", 3)
    validate_run(damaged)  # its schema is intact: only a value is damaged
    board = leaderboard.build([tmp_path / "damaged", tmp_path / "2"])
    assert {r["mode"] for r in board.rows} == {"2"}  # the damaged run is left out, not shown with a dash
    expected = (f"skipped {damaged}/summary.parquet: test is NaN in parcel {parcel!r}, a damaged value (a finished "
                "run has a number there), not an unmeasured one; the run is left out of the board: re-run it "
                "(`mtbench run ...`)")
    assert board.notes == [expected] and expected in leaderboard.markdown(board)
    with pytest.raises(MtbenchError, match="test is NaN in parcel"):
        leaderboard.build([tmp_path / "damaged"], strict=True)
    alone = CliRunner().invoke(main, ["leaderboard", str(tmp_path / "damaged"), "--out", str(tmp_path / "board")])
    one_line(alone, f"Error: no run left to rank in {tmp_path / 'damaged'}: {expected}")
    other = tmp_path / "damaged2" / "runs" / made["2"].name  # Mode 2: its nested layer choice
    parcel = with_nan(made["2"], other, "mode2_nested.parquet", 0)
    assert leaderboard.build([tmp_path / "damaged2", tmp_path / "1"]).notes == [
        f"skipped {other}/mode2_nested.parquet: test is NaN in parcel {parcel!r}, a damaged value (a finished run "
        "has a number there), not an unmeasured one; the run is left out of the board: re-run it (`mtbench run ...`)"]


# --------------------------------------------------------------------------- readable off a terminal
def test_tables_print_whole_off_a_terminal(tmp_path):
    """Slurm logs, CI, `| tee`: the summary and planted-truth tables were cut to 80 columns ("Fron… Oper…")."""
    result = mtbench("run", "--model", "random", *TINY, "--out", str(tmp_path / "results"),
                     env={"COLUMNS": ""})  # no width given: stdout is a pipe
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if HESCHL in line]
    assert len(rows) == 2, result.stdout  # its summary row and its planted-truth row, each whole on one line
    assert "L1 embedding" in rows[1] and "yes" in rows[1]


def test_the_console_keeps_a_width_that_is_given(monkeypatch):
    from mtbench.display import LOG_WIDTH, WholeConsole

    monkeypatch.delenv("COLUMNS", raising=False)
    assert WholeConsole(file=open(os.devnull, "w")).width == LOG_WIDTH  # noqa: SIM115
    monkeypatch.setenv("COLUMNS", "100")
    assert WholeConsole(file=open(os.devnull, "w")).width == 100  # noqa: SIM115
    assert WholeConsole(width=90).width == 90
