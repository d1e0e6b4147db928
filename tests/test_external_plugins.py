"""Third-party plugins installed with pip into a fresh virtual environment.

The environment is new (``python -m venv``) and sees mtbench and its dependencies through
a ``.pth`` file that adds this environment's site-packages (installing torch again would
take minutes); the plugins are real ``pip install`` builds of
``examples/mtbench-example-plugin`` and of the four skeletons ``mtbench plugin new``
writes. Nothing of them is visible to the interpreter running this suite.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtbench.errors import MtbenchError
from mtbench_plugins.commands.scaffold.scaffold import KINDS, new_plugin, plugin_names

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mtbench-example-plugin"
SKELETONS = {"model": "toy-model", "dataset": "toy-data", "metric": "r2-score", "state": "toy_state"}
HESCHL = "Heschl's Gyrus (includes H1 and H2)"


def _run(args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the example plugin and the four generated skeletons pip-installed."""
    root = tmp_path_factory.mktemp("external")
    _run([sys.executable, "-m", "venv", "--without-pip", root / "venv"]).check_returncode()
    python = root / "venv" / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # `import` lines of a .pth run at start-up; addsitedir also processes this venv's own .pth
    # files (mtbench's editable install is one)
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "_mtbench_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    skeletons = [new_plugin(kind, name, root / "skeletons") for kind, name in SKELETONS.items()]
    install = _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    EXAMPLE, *skeletons], cwd=root)
    assert install.returncode == 0, install.stderr[-3000:]
    env = dict(os.environ, MTBENCH_CACHE=str(root / "cache"), COLUMNS="250", OPENBLAS_NUM_THREADS="1")
    for var in ("MTBENCH_LOAD_PLUGINS", "MTBENCH_BLOCK_PLUGINS", "PYTHONPATH"):
        env.pop(var, None)
    return {"root": root, "python": python, "env": env, "skeletons": skeletons, "purelib": Path(purelib)}


def mtbench_in(venv, *args):
    return _run([venv["python"], "-m", "mtbench.cli", *args], env=venv["env"], cwd=venv["root"])


def test_example_is_installed_only_in_the_fresh_venv(venv):
    where = _run([venv["python"], "-c", "import mtbench_example, mtbench; print(mtbench_example.__file__)"],
                 env=venv["env"])
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv["purelib"])  # a real install, not the source tree
    here = _run([sys.executable, "-c", "import mtbench_example"])
    assert here.returncode != 0 and "No module named 'mtbench_example'" in here.stderr


def test_example_is_discovered_and_listed(venv):
    shown = mtbench_in(venv, "plugins", "--hook", "register_metrics")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "mtbench_example.hooks" in line)
    assert "mtbench-example-plugin 0.1.0" in row and "register_models, register_metrics" in row and "ok" in row
    metrics = mtbench_in(venv, "list", "metrics")
    assert "spearman" in metrics.stdout and "pearson" in metrics.stdout
    models = mtbench_in(venv, "list", "models")
    assert "tiny-example" in models.stdout and "example" in models.stdout and "warning" not in models.stdout


@pytest.mark.parametrize(("model", "layer", "state", "states"), [
    ("random", 1, "embedding", "all"),  # the example's metric in a run; no torch model to load
    pytest.param("tiny-example", 2, "ffn_activated_state", "per_head_v,ffn_activated_state",  # its model too
                 marks=pytest.mark.slow),
])
def test_example_is_used_by_run(venv, model, layer, state, states):
    truth = [{"parcel": HESCHL, "layer": layer, "state": state}]
    out = venv["root"] / f"results-{model}"
    result = mtbench_in(
        venv, "run", "--model", model, "--metric", "spearman", "--states", states, "--layers", str(layer), "--alphas", "1e0:1e4:3",
        "--dataset-option", "scale=tiny", "--dataset-option", "snr=2", "--dataset-option", f"truth_model={model}",
        "--dataset-option", f"truth={json.dumps(truth)}", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["settings"]["metric"] == "spearman" and manifest["model"]["name"] == model
    assert set(pq.read_table(run_dir / "scores.parquet").column("metric").to_pylist()) == {"spearman"}
    summary = {row["parcel"]: row for row in pq.read_table(run_dir / "summary.parquet").to_pylist()}
    assert (summary[HESCHL]["layer"], summary[HESCHL]["state"]) == (layer, state)
    assert summary[HESCHL]["test"] > 0.2  # the planted signal, scored by the plugin's Spearman rho


def test_example_analysis_and_command_are_plugins_too(venv):
    """A stranger's analysis (--mode rsa) and command (rsa-table), through the same hooks as the built-in ones."""
    shown = mtbench_in(venv, "plugins")
    row = next(line for line in shown.stdout.splitlines() if "mtbench_example.hooks" in line)
    assert "register_analyses" in row and "register_commands" in row and "ok" in row, shown.stdout
    assert "rsa" in mtbench_in(venv, "list", "analyses").stdout
    assert "rsa-table" in mtbench_in(venv, "--help").stdout
    truth = [{"parcel": HESCHL, "layer": 1, "state": "embedding"}]
    out = venv["root"] / "results-rsa"
    result = mtbench_in(venv, "run", "--model", "random", "--mode", "rsa", "--dataset-option", "scale=tiny",
                        "--dataset-option", "truth_model=random", "--dataset-option", f"truth={json.dumps(truth)}",
                        "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Representational similarity" in result.stdout and "nested CKA" in result.stdout
    (run_dir,) = (out / "runs").iterdir()
    assert json.loads((run_dir / "manifest.json").read_text())["settings"]["mode"] == "rsa"
    table = mtbench_in(venv, "rsa-table", run_dir, "--parcel", HESCHL)
    assert table.returncode == 0 and "embedding" in table.stdout, table.stderr
    board = mtbench_in(venv, "leaderboard", out, "--out", venv["root"] / "board-rsa", "--no-reports")
    assert board.returncode == 0 and "rsa rows: nested linear CKA" in (venv["root"] / "board-rsa" /
                                                                     "leaderboard.md").read_text(), board.stderr


def test_installed_plugins_pass_their_own_tests(venv):
    """The example's and each skeleton's test suite, as generated, with the kit and the pytest11 fixtures."""
    suites = [EXAMPLE / "tests", *(s / "tests" for s in venv["skeletons"])]
    result = _run([venv["python"], "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
                   "--rootdir", venv["root"], *suites], env=venv["env"], cwd=venv["root"])
    assert result.returncode == 0, result.stdout[-4000:]
    assert "16 passed" in result.stdout, result.stdout[-1000:]


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    assert plugin_names("state", "router_logits")["package"] == "mtbench_router_logits"
    assert plugin_names("model", "my-llm")["distribution"] == "mtbench-my-llm"
    with pytest.raises(MtbenchError, match="not valid for a state"):
        plugin_names("state", "Router-Logits")
    with pytest.raises(MtbenchError, match="not valid for a metric"):
        plugin_names("metric", "my:score")
    new_plugin("metric", "my-score", tmp_path)
    with pytest.raises(MtbenchError, match="already exists and is not empty"):
        new_plugin("metric", "my-score", tmp_path)
    assert set(KINDS) == set(SKELETONS)


def test_plugin_new_command(tmp_path):
    result = _run([sys.executable, "-m", "mtbench.cli", "plugin", "new", "metric", "my-score", "--dir", tmp_path])
    assert result.returncode == 0, result.stderr
    pyproject = (tmp_path / "mtbench-my-score" / "pyproject.toml").read_text()
    assert '[project.entry-points.mtbench]\nmy_score = "mtbench_my_score.hooks"' in pyproject
    bad = _run([sys.executable, "-m", "mtbench.cli", "plugin", "new", "metric", "Bad Name", "--dir", tmp_path])
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "not valid" in bad.stderr


def test_plugin_new_refuses_names_that_are_paths_before_writing(tmp_path):
    """Issue 32, item 2: NAME becomes a folder and a distribution name, never a path."""
    from click.testing import CliRunner

    from mtbench.cli import main

    for kind, name in [("metric", "../evil"), ("metric", "a/b"), ("model", ".."), ("model", "/tmp/x"),
                       ("metric", "my-"), ("state", "my_state_"), ("dataset", "x" * 65), ("metric", "my-score\n"),
                       ("state", "a.b"), ("model", "")]:
        result = CliRunner().invoke(main, ["plugin", "new", kind, name, "--dir", str(tmp_path / "out")])
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr == (f"Error: plugin name {name!r} is not valid for a {kind}: use lower case letters, "
                                 f"digits and {'_' if kind == 'state' else '-'}, a letter first, no "
                                 f"{'_' if kind == 'state' else '-'} last, at most 64 characters (e.g. "
                                 f"{'my_state' if kind == 'state' else 'my-' + kind})\n"), result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even --dir
    assert plugin_names("dataset", "x" * 64)["distribution"] == "mtbench-" + "x" * 64
