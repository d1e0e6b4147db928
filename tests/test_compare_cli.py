"""`mtbench compare` end to end on a tiny planted run (Heschl's gyrus planted at L2 per_head_q_rope), and
its one-line errors before any refit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mtbench_plugins.commands.compare.schema import validate_comparison
from run_helpers import count_calls, tiny_run_settings, voxel_table

from mtbench.cli import main
from mtbench.runner import run

STATES = ["per_head_q", "per_head_q_rope"]
HESCHL = "Heschl's Gyrus (includes H1 and H2)"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        settings = tiny_run_settings(tmp, mp, STATES, "per_head_q_rope", permutations=0)
        run_dir = run(settings, tmp / "results").run_dir
        yield run_dir, mp


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_two_fits_of_one_run(tiny_run, tmp_path, monkeypatch):
    run_dir, _ = tiny_run
    out = tmp_path / "cmp"
    result = _invoke(["compare", run_dir, "--a", "L2:per_head_q_rope", "--b", "L2:per_head_q", "--out", out])
    assert result.exit_code == 0, result.output
    manifest = validate_comparison(out)  # the schema holds on read too
    assert manifest["a"]["fit"] == "L2:per_head_q_rope" and manifest["subjects"] == ["average"]
    voxels = pq.read_table(out / "voxels.parquet").to_pandas()
    stored = voxel_table(run_dir)
    for fit, column in (("per_head_q_rope", "r_a"), ("per_head_q", "r_b")):
        # the refit with the stored alphas reproduces the run's held-out r exactly
        np.testing.assert_allclose(voxels[column], stored[(stored.layer == 2) & (stored.state == fit)]["test"],
                                   atol=2e-4)
    np.testing.assert_allclose(voxels["delta"], voxels["r_a"] - voxels["r_b"], atol=1e-6)
    parcels = pq.read_table(out / "parcels.parquet").to_pandas().set_index("parcel")
    heschl = parcels.loc[HESCHL]
    assert heschl["delta"] > 0.1 and heschl["ci_low"] > 0 and heschl["p_holm"] < 0.05  # the planted state wins
    assert (out / "delta_r.png").stat().st_size > 10_000
    assert "Heschl" in result.output and "comparison written" in result.output


def test_a_run_against_itself_is_no_difference(tiny_run, tmp_path):
    """A second run of the same fit (a copy): Δr is exactly 0, nothing significant."""
    run_dir, _ = tiny_run
    copy = tmp_path / "results" / "runs" / "copy"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["run_id"] = "copy"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "self"
    result = _invoke(["compare", run_dir, copy, "--a", "L1:per_head_q", "--b", "L1:per_head_q", "--out", out])
    assert result.exit_code == 0, result.output
    voxels = pq.read_table(out / "voxels.parquet").to_pandas()
    assert np.abs(voxels["delta"]).max() < 1e-6 and voxels["significant"].sum() == 0


def test_other_parcels(tiny_run, tmp_path):
    """--parcels: a label image on the run's grid splits the voxels into two named parcels; the parcel
    table tests those (and the whole brain), nothing else changes."""
    import nibabel as nib

    run_dir, _ = tiny_run
    mask = nib.load(str(run_dir / "maps" / "mask.nii.gz"))
    inside = np.asarray(mask.dataobj) > 0
    labels = np.zeros(inside.shape, dtype=np.int16)
    labels[inside] = np.where(np.arange(inside.sum()) % 2 == 0, 1, 2)
    nib.save(nib.Nifti1Image(labels, mask.affine), tmp_path / "halves.nii.gz")
    (tmp_path / "names.tsv").write_text("label\tname\n1\teven voxels\n2\todd voxels\n")
    out = tmp_path / "halves"
    result = _invoke(["compare", run_dir, "--a", "L2:per_head_q_rope", "--b", "L2:per_head_q", "--parcels",
                      tmp_path / "halves.nii.gz", "--parcel-names", tmp_path / "names.tsv", "--out", out])
    assert result.exit_code == 0, result.output
    parcels = pq.read_table(out / "parcels.parquet").to_pandas()
    assert list(parcels["parcel"]) == ["whole brain", "even voxels", "odd voxels"]
    assert list(parcels["n_voxels"][1:]) == [(inside.sum() + 1) // 2, inside.sum() // 2]
    assert "halves.nii.gz" in json.loads((out / "manifest.json").read_text())["dataset"]["atlas"]


def _copy_with(run_dir, tmp_path, name, edit=None, drop=None):
    copy = tmp_path / "results" / "runs" / name
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["run_id"] = name
    if edit:
        edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if drop:
        (copy / drop).unlink()
    return copy


@pytest.mark.parametrize("case, message", [
    ("same", "same fit"),
    ("missing fit", "has no fit L3:per_head_q"),
    ("bad fit", "is not LAYER:STATE"),
    ("no b", "give the second fit"),
    ("several fits", "choose one with --a"),
    ("no folds", "no folds.parquet"),
    ("other data", "on different data"),
    ("other subject", "no run of the same subject"),
    ("not a run", "not an mtbench run"),
    ("out exists", "already exists"),
    ("bad method", "Invalid value for '--method'"),
    ("names without parcels", "give --parcels"),
])
def test_one_line_errors_before_any_refit(tiny_run, tmp_path, monkeypatch, case, message):
    run_dir, _ = tiny_run
    from mtbench.encoding import nested

    refits = count_calls(monkeypatch, nested, "fit_nested_loro")
    args = {
        "same": [run_dir, "--a", "L2:per_head_q", "--b", "L2:per_head_q"],
        "missing fit": [run_dir, "--a", "L3:per_head_q", "--b", "L2:per_head_q"],
        "bad fit": [run_dir, "--a", "per_head_q", "--b", "L2:per_head_q"],
        "no b": [run_dir, "--a", "L2:per_head_q"],
        "several fits": [run_dir, _copy_with(run_dir, tmp_path, "other"), "--b", "L2:per_head_q"],
        "no folds": [_copy_with(run_dir, tmp_path, "nofolds", drop="folds.parquet"), run_dir,
                     "--a", "L2:per_head_q", "--b", "L2:per_head_q"],
        "other data": [_copy_with(run_dir, tmp_path, "v2", edit=lambda m: m["dataset"].update(version="v2")), run_dir,
                       "--a", "L2:per_head_q", "--b", "L2:per_head_q"],
        "other subject": [_copy_with(run_dir, tmp_path, "s2", edit=lambda m: m["settings"].update(subject="sub-02")),
                          run_dir, "--a", "L2:per_head_q", "--b", "L2:per_head_q"],
        "not a run": [tmp_path, "--a", "L2:per_head_q", "--b", "L2:per_head_q"],
        "out exists": [run_dir, "--a", "L2:per_head_q", "--b", "L1:per_head_q", "--out", tmp_path],
        "bad method": [run_dir, "--a", "L2:per_head_q", "--b", "L1:per_head_q", "--method", "iid"],
        "names without parcels": [run_dir, "--a", "L2:per_head_q", "--b", "L1:per_head_q", "--parcel-names", tmp_path],
    }[case]
    result = _invoke(["compare", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.output  # one line (click adds its usage to its own)
    assert refits == []


def test_report_of_a_comparison_shows_its_map_and_parcel_table(tiny_run, tmp_path):
    """`mtbench report COMPARE_DIR`: an offline page (no network address) with the comparison's PNG embedded
    byte for byte and copied next to it, and the parcel table: the whole brain first, then the planted
    Heschl's gyrus (smallest p), in bold because its Holm p < 0.05, with the values of parcels.parquet. A
    damaged comparison is refused in one line and leaves no report folder."""
    import base64
    import re

    run_dir, _ = tiny_run
    out = tmp_path / "cmp"
    assert _invoke(["compare", run_dir, "--a", "L2:per_head_q_rope", "--b", "L2:per_head_q", "--out", out]).exit_code == 0
    result = _invoke(["report", out])
    assert result.exit_code == 0, result.output
    page = (out / "report" / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert base64.b64encode((out / "delta_r.png").read_bytes()).decode() in page
    assert (out / "report" / "delta_r.png").read_bytes() == (out / "delta_r.png").read_bytes()
    validate_comparison(out)  # the report folder does not break the comparison's schema
    parcels = pq.read_table(out / "parcels.parquet").to_pandas().set_index("parcel")
    heschl = parcels.loc[HESCHL]
    table_rows = re.findall(r"<tr( class=\"sig\")?><td>([^<]*)</td>", page)
    assert table_rows[0][1] == "whole brain" and "Heschl" in table_rows[1][1] and table_rows[1][0]
    assert f"{heschl['delta']:+.4f}" in page and f"[{heschl['ci_low']:+.4f}, {heschl['ci_high']:+.4f}]" in page
    assert sum(1 for sig, _ in table_rows if sig) == int((parcels["p_holm"] < 0.05).sum())
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "report")
    (broken / "delta_r.png").unlink()
    result = _invoke(["report", broken])
    assert result.exit_code != 0 and "delta_r.png is missing" in result.output
    assert not (broken / "report").exists()
