"""The seam: analyses and commands are plugins, built-in ones through the same hooks as anyone's.

Every registered analysis runs on tiny data and writes what its schema says; a command plugin that
clashes or raises is contained; a run that names no analysis gets the default one, and the settings
of one analysis given to another are a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mtbench.errors import MtbenchError
from mtbench.registry import get_registry
from mtbench.runner import run
from mtbench.schema import analysis_schema, read_whole_run
from mtbench.settings import RunSettings
from mtbench_plugins.testing import check_analysis, check_analysis_result
from mtbench_plugins.pytest_fixtures import TINY_DATASET_OPTIONS
from test_plugins import make_distribution, mtbench

REGISTRY = get_registry()
#: What each built-in analysis needs beyond the tiny dataset and the `random` baseline (one state, `embedding`).
ANALYSIS_SETTINGS = {"1": {"states": ["embedding"]}, "2": {"inputs": ["embedding"], "pivot": "embedding"}}
BOARD_KEYS = {"parcel_id", "parcel", "n_voxels", "layer", "state", "test", "test_normalized", "ceiling", "validation",
              "folds_agree", "voxel_best_test", "top_state", "top_state_share", "tied_states"}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One finished run of every built-in analysis (the `random` baseline: no torch)."""
    root = tmp_path_factory.mktemp("seam")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTBENCH_CACHE", str(root / "cache"))
        base = RunSettings(model="random", dataset="synthetic", states=["all"], alphas=[1.0, 100.0],
                           permutations=0, dataset_options=dict(TINY_DATASET_OPTIONS))
        return {mode: run(replace(base, mode=int(mode), **extra), root / "results") for mode, extra in
                ANALYSIS_SETTINGS.items()}


@pytest.mark.parametrize("mode", sorted(ANALYSIS_SETTINGS))
def test_every_builtin_analysis_writes_reads_and_shows_what_its_entry_says(mode, tiny_runs):
    entry = REGISTRY.analysis(mode)
    analysis = check_analysis(entry)
    output = tiny_runs[mode]
    folder = read_whole_run(output.run_dir)  # every file of the schema, read to its end
    assert folder.mode == mode and output.mode == mode
    assert set(analysis_schema(mode)["parquet"]) <= {p.name for p in output.run_dir.glob("*.parquet")}
    cells = analysis.board_cells(folder)
    assert cells[0]["parcel_id"] == -1 and all(BOARD_KEYS <= set(cell) for cell in cells)
    figures = analysis.figures(folder)
    assert figures and all(name.endswith(".png") and fig.get_suptitle() for name, _, fig in figures)
    meta = json.loads((output.run_dir / "manifest.json").read_text())
    combined = analysis.combine([folder], meta)  # one run combined is that run
    check_analysis_result(combined)
    assert _plain(combined.summary) == _plain(output.summary)
    requested = RunSettings(**({"model": "", "dataset": "", "states": ["all"]} | ANALYSIS_SETTINGS[mode]))
    assert analysis.states(requested, ["embedding"]) == ["embedding"]


def _plain(rows: list[dict]) -> list[dict]:
    """Rows with NaN as a string, so that equal rows compare equal."""
    return [{k: "nan" if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]


def test_a_run_that_names_no_analysis_gets_the_default_one(tiny_runs):
    assert REGISTRY.default_analysis().name == "1"
    assert json.loads((tiny_runs["1"].run_dir / "manifest.json").read_text())["settings"]["mode"] == 1
    assert REGISTRY.mode_of(RunSettings("m", "d", ["all"])).mode == 1
    assert REGISTRY.mode_of(RunSettings("m", "d", ["all"], mode="2")).mode == "2"  # named: kept as given


def test_settings_of_another_analysis_are_a_forgotten_mode():
    settings = RunSettings(model="random", dataset="synthetic", states=["embedding"], mode=1, selection="banded")
    with pytest.raises(MtbenchError, match="^--selection banded is for --mode 2; add --mode 2, or in mode 1 choose "
                                           "states with --states$"):
        REGISTRY.check_run(settings)
    REGISTRY.check_run(replace(settings, mode=2))  # its own setting: fine


CLASH = """
    import click
    from mtbench.hookspecs import hookimpl

    @click.command("run")
    def run():
        '''A run that is not mtbench's.'''

    @click.command("hello")
    def hello():
        '''Say hello.'''
        click.echo("hello from a plugin")

    @hookimpl
    def register_commands(cli):
        cli.add_command(run)
        cli.add_command(hello)
"""
RAISER = """
    from mtbench.hookspecs import hookimpl

    @hookimpl
    def register_commands(cli):
        raise RuntimeError("no commands today")
"""


def test_command_plugins_are_contained(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "mtbench-clash", "clash_plugin", CLASH, "clash")
    make_distribution(site, "mtbench-raiser", "raiser_plugin", RAISER, "raiser")
    shown = mtbench("plugins", extra_path=site)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "command 'run' is already registered; kept the one there" in text
    assert "register_commands: RuntimeError: no commands today" in text
    hello = mtbench("hello", extra_path=site)  # the clashing plugin's other command is kept
    assert hello.returncode == 0 and hello.stdout.strip() == "hello from a plugin"
    own = mtbench("run", "--help", extra_path=site)  # mtbench's run, not the plugin's
    assert own.returncode == 0 and "--model" in own.stdout


def test_without_a_default_analysis_a_run_says_so_in_one_line(tmp_path):
    result = mtbench("run", "--model", "random", "--out", str(tmp_path / "out"),
                     env={"MTBENCH_BLOCK_PLUGINS": "analyses"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["Error: no analysis is registered as the default (analyses: none); "
                                                  "give --mode NAME, or check `mtbench plugins` for one that failed "
                                                  "to load"]
    assert not (tmp_path / "out").exists()


def test_commands_come_from_the_commands_plugin():
    """`sweep` and the other commands are gone when the built-in commands plugin is blocked; run stays."""
    blocked = mtbench("--help", env={"MTBENCH_BLOCK_PLUGINS": "commands"})
    listed = mtbench("--help")
    assert blocked.returncode == listed.returncode == 0
    for name in ("sweep", "leaderboard", "report", "combine", "rescore", "data", "plugin"):
        assert f"  {name} " in listed.stdout and f"  {name} " not in blocked.stdout
    assert "  run " in blocked.stdout and "  list " in blocked.stdout
