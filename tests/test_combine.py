"""Runs of single (layer, state)s combined: the run that fitted them all, nothing refitted."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtbench.settings import RunSettings
from mtbench_plugins.commands.runs.combine import combine_runs
from mtbench.errors import MtbenchError
from mtbench.runner import run
from mtbench_plugins.models.hf.tiny import save_tiny_llama
from sweep_helpers import PLANTED

STATES = ["per_head_q_rope", "ffn_activated_state"]
TABLES = ("summary", "scores", "winners", "voxels", "folds")


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Each (layer, state) of a tiny planted experiment as its own run, and the run of all of them."""
    root = tmp_path_factory.mktemp("combine")
    model = save_tiny_llama(root / "tiny-llama", seed=0, n_layers=2)
    base = RunSettings(model=f"hf:{model}", dataset="synthetic", states=STATES, layers="all", permutations=200,
                       dataset_options={"scale": "tiny", "snr": 2.0, "truth_model": f"hf:{model}",
                                        "truth": json.dumps(PLANTED)})
    results = root / "results"
    made = [run(replace(base, states=[state], layers=[layer]), results, run_id=f"cell-L{layer}-{state}").run_dir
            for layer in (1, 2) for state in STATES]
    whole = run(base, root / "whole").run_dir
    return base, results, made, whole


def _table(path, name):
    table = pq.read_table(path / f"{name}.parquet").to_pandas()
    return table.drop(columns=[c for c in ("run_id",) if c in table.columns])


def test_combined_cells_are_the_run_that_fitted_them_all(cells):
    base, results, made, whole = cells
    shuffled = random.Random(1).sample(made, len(made))  # the order of the cells does not matter
    combined = combine_runs(shuffled, results, "all-cells")
    for name in TABLES:  # every number (bit for bit), every choice: one `mtbench run` of all of them
        got, expected = _table(combined.run_dir, name), _table(whole, name)
        assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
        for column in got.columns:
            if got[column].dtype.kind == "f":
                np.testing.assert_array_equal(got[column], expected[column], err_msg=column)
            else:
                assert got[column].astype(str).tolist() == expected[column].astype(str).tolist(), (name, column)
    heschl = next(r for r in combined.summary if r["parcel"] == PLANTED[0]["parcel"])
    assert (heschl["layer"], heschl["state"]) == (PLANTED[0]["layer"], PLANTED[0]["state"])  # across cells
    assert all(check["recovered"] for check in combined.truth_check)
    manifest = json.loads((combined.run_dir / "manifest.json").read_text())
    assert sorted(manifest["combined_from"]) == sorted(p.name for p in made)
    assert manifest["settings"]["layers"] == [1, 2] and manifest["settings"]["states"] == STATES
    assert set(manifest["significance"]["null_inflation"]) == {f"L{l}-{s}" for l in (1, 2) for s in STATES}
    assert sorted(p.name for p in (combined.run_dir / "maps").iterdir()) == sorted(
        p.name for p in (whole / "maps").iterdir())


def test_runs_of_different_experiments_are_not_combined(cells, tmp_path):
    base, results, made, whole = cells
    with pytest.raises(MtbenchError, match="layer 1 per_head_q_rope is fitted by more than one of the runs"):
        combine_runs([made[0], whole], tmp_path, "twice")
    other = run(replace(base, states=[STATES[0]], layers=[1], alphas=[1.0, 100.0]), tmp_path / "other").run_dir
    with pytest.raises(MtbenchError, match=r"another alphas \(\[1.0, 100.0\]\) than .*combine runs of one model"):
        combine_runs([made[1], other], tmp_path, "mixed")
    with pytest.raises(MtbenchError, match="not an mtbench run"):
        combine_runs([made[1], tmp_path / "nothing"], tmp_path, "missing")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_combine_command(cells, tmp_path):
    """`mtbench combine` for runs made one (layer, state) at a time by hand (one cluster job per layer)."""
    import shutil

    from click.testing import CliRunner

    from mtbench.cli import main

    base, results, made, whole = cells
    cli = CliRunner()
    done = cli.invoke(main, ["combine", *map(str, made)])
    assert done.exit_code == 0, done.output
    combined = [p for p in (results / "runs").iterdir() if "-combined-mtbench-" in p.name]
    assert len(combined) == 1 and combined[0].name.startswith("hf-tiny-llama-synthetic-average-combined-")
    assert f"combined4runsinto{combined[0]}" in "".join(done.output.split())  # rich wraps a long path
    assert _table(combined[0], "summary").equals(_table(whole, "summary"))
    again = cli.invoke(main, ["combine", *map(str, made)])  # the same runs name the same folder: kept
    assert again.exit_code == 2 and "already exists; give another --run-id" in again.output
    copy = shutil.copytree(made[0], tmp_path / "copy")  # outside a results folder: say where it goes
    elsewhere = cli.invoke(main, ["combine", str(copy), *map(str, made[1:])])
    assert elsewhere.exit_code == 2 and "is not in a results folder" in elsewhere.output
    out = cli.invoke(main, ["combine", str(copy), *map(str, made[1:]), "--out", str(tmp_path / "r"), "--run-id", "x"])
    assert out.exit_code == 0, out.output
    assert _table(tmp_path / "r" / "runs" / "x", "scores").equals(_table(whole, "scores"))


def test_mode2_runs_of_different_layers_combine_into_the_run_of_all_layers(cells, tmp_path):
    """Mode 2 runs of one layer each (a sweep's Mode 2 cells) combined: every table and map of the
    run of both layers, bit for bit, its nested layer choice made across the runs."""
    import nibabel as nib
    from click.testing import CliRunner

    from mtbench.cli import main

    base, results, made, whole = cells
    mode2 = replace(base, mode=2, states=["all"], inputs=["per_head_q_rope", "attn_output", "ffn_activated_state"],
                    permutations=0)
    layers = [run(replace(mode2, layers=[layer]), tmp_path, run_id=f"mode2-L{layer}").run_dir for layer in (2, 1)]
    both = run(replace(mode2, layers=[1, 2]), tmp_path / "both").run_dir
    done = CliRunner().invoke(main, ["combine", *map(str, layers)])
    assert done.exit_code == 0, done.output
    (combined,) = [p for p in (tmp_path / "runs").iterdir() if "-combined-mode2-mtbench-" in p.name]
    for name in ("mode2", "mode2_nested", "mode2_folds", "mode2_states", "mode2_voxels"):
        got, expected = (pq.read_table(folder / f"{name}.parquet") for folder in (combined, both))
        assert got.schema.names == expected.schema.names and got.num_rows == expected.num_rows, name
        for column in got.schema.names:
            if column != "run_id":
                assert got[column].to_pandas().equals(expected[column].to_pandas()), (name, column)
    for name in ("mode2_stage1_test_r.nii.gz", "mode2_stage2_test_r.nii.gz"):
        got, expected = (np.asarray(nib.load(folder / "maps" / name).dataobj) for folder in (combined, both))
        assert got.shape[-1] == 2 and np.array_equal(got, expected)
    assert (combined / "maps" / "index.json").read_text() == (both / "maps" / "index.json").read_text()
    manifest = json.loads((combined / "manifest.json").read_text())
    assert manifest["settings"]["layers"] == [1, 2] and sorted(manifest["combined_from"]) == ["mode2-L1", "mode2-L2"]
    assert set(manifest["mode2_seconds"]) == {"1", "2"}

    with pytest.raises(MtbenchError, match="layer 1 is fitted by more than one of the Mode 2 runs"):
        combine_runs([layers[1], both], tmp_path, "twice")
    with pytest.raises(MtbenchError, match=r"another mode \(1\) than .*combine runs of one model, dataset, subject, "
                                           "mode and settings"):
        combine_runs([layers[0], made[0]], tmp_path, "mixed")
