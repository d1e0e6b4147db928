"""Names that become folders are names, never paths (issue 32, item 2): run ids checked once
(:func:`mtbench.paths.check_run_id`) in ``write_run`` and early where a user gives one."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench.paths import check_run_id
from mtbench.results import write_run
from mtbench.runner import run
from run_helpers import tiny_run_settings

ALLOWED = "use 1 to 200 letters, digits, '.', '_' or '-', not starting with '.' or '-' nor ending in '.partial'"
BAD_IDS = ["", ".", "..", "../x", "../../x", "a/b", "/abs", "-x", ".hidden", "a b", "a\nb", "x" * 201, "x.partial",
           "caf\u00e9", "a\\b", "a:b"]


def test_check_run_id():
    for good in ["run-1", "a.b_c", "_x", "0", "x" * 200, "20250101T000000-hf-tiny-llama-synthetic-average-abc123",
                 "x.partial-2"]:
        assert check_run_id(good) == good
    for bad in BAD_IDS:
        with pytest.raises(MtbenchError) as err:
            check_run_id(bad)
        assert str(err.value) == f"invalid run id {bad!r}: {ALLOWED} (give another --run-id)"
        assert "\n" not in str(err.value)


def test_write_run_refuses_a_path_before_creating_anything(tmp_path):
    """Every writer goes through write_run: it checks the id first (the rest of its arguments never matter)."""
    required = [name for name, p in inspect.signature(write_run).parameters.items() if p.default is p.empty]
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(MtbenchError, match="invalid run id"):
            write_run(**(dict.fromkeys(required) | {"results_dir": tmp_path / "results", "run_id": bad}))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny run (1 layer, 1 state, no permutations) in ``box/results/runs/``."""
    tmp_path = tmp_path_factory.mktemp("names")
    with pytest.MonkeyPatch.context() as monkeypatch:
        settings = tiny_run_settings(tmp_path, monkeypatch, ["input_hidden_state"], "input_hidden_state",
                                     permutations=0)
        box = tmp_path / "box"
        run_dir = run(replace(settings, layers=[1]), box / "results").run_dir
    return box, run_dir


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", ["combine", "rescore"])
@pytest.mark.parametrize("run_id", ["../../x", "../..", "a/b"])
def test_run_ids_given_to_combine_and_rescore_are_names(tiny_run, command, run_id):
    box, run_dir = tiny_run
    before = _listing(box.parent)  # the results folder, the model and the cache
    extra = ["--metric", "r2"] if command == "rescore" else []
    result = CliRunner().invoke(main, [command, str(run_dir), *extra, "--run-id", run_id])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr == f"Error: invalid run id {run_id!r}: {ALLOWED} (give another --run-id)\n"
    assert _listing(box.parent) == before  # nothing written, inside the results folder or out of it
    assert not (box / "x").exists() and [p.name for p in (box / "results" / "runs").iterdir()] == [run_dir.name]


def test_a_manifest_whose_run_id_is_a_path_is_refused_by_every_reader(tiny_run, tmp_path):
    """`mtbench leaderboard` makes reports/<run_id>/ from manifests: a foreign manifest's id never escapes OUT."""
    import shutil

    from mtbench.schema import validate_run

    _, run_dir = tiny_run
    copy = tmp_path / "results" / "runs" / "hostile"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"run_id": "../../../escaped"}))
    with pytest.raises(MtbenchError, match=r"manifest.json: run_id '../../../escaped' is not a run id"):
        validate_run(copy)
    result = CliRunner().invoke(main, ["leaderboard", str(tmp_path / "results"), "--out", str(tmp_path / "board")])
    assert result.exit_code == 2 and "no valid run found" in result.stderr, result.output  # skipped, then nothing
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()
