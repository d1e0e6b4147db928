"""benchmarks/engine_profile.py: its step clock accounts for the whole fit, changes nothing, and undoes itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mtbench.encoding import fit_nested_loro
from test_encoding import _random_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def profile(monkeypatch):
    """The script as a module, with benchmarks/ on sys.path as when it runs (for the test only)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("engine_profile", BENCHMARKS / "engine_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_clock_accounts_for_the_fit_and_changes_nothing(monkeypatch, profile):
    """Shared alpha with the nomination and maps made again in groups (a generator step): the
    instrumented fit equals the plain one bit for bit, every step's own seconds add up to the
    outermost steps' totals, each decomposition is counted once, and the originals come back."""
    import torch

    import mtbench.encoding.limits as limits
    from mtbench.encoding.eigen import EigenRidge
    from mtbench.encoding.eigen_shared import OneAlphaPerFold

    monkeypatch.setattr(limits, "NOMINATION_VOXELS", 400)
    monkeypatch.setattr(limits, "GROUP_BYTES", 1)  # nothing kept: map_groups makes the maps again
    xs, ys = _random_data(np.random.default_rng(3), n_runs=5, n_scans=60, n_features=40, n_voxels=1600, snr=1.0)
    alphas = np.logspace(-1, 5, 13)
    plain = fit_nested_loro(xs, ys, alphas, shared_alpha=True, inner="first")
    originals = dict(vars(EigenRidge)), dict(vars(OneAlphaPerFold)), torch.linalg.eigh, torch.linalg.cholesky_ex

    clock = profile.StepClock()
    with profile.instrument(clock):
        timed = fit_nested_loro(xs, ys, alphas, shared_alpha=True, inner="first")

    assert (dict(vars(EigenRidge)), dict(vars(OneAlphaPerFold)), torch.linalg.eigh, torch.linalg.cholesky_ex) == originals
    for field in ("test_per_run", "validation_per_run", "alpha_per_run"):
        np.testing.assert_array_equal(getattr(timed, field), getattr(plain, field))
    assert clock.calls["fit_one_alpha_per_fold"] == 1
    assert clock.calls["map_groups"] >= 1 and clock.total["map_groups"] > 0  # generator items were timed
    assert clock.calls["torch.linalg.eigh"] == clock.calls["make_fold"] > 0
    assert clock.calls["torch.linalg.cholesky_ex"] == clock.calls["solve_map"] == len(xs)
    assert min(clock.own.values()) >= 0
    assert sum(clock.own.values()) == pytest.approx(clock.outermost, rel=1e-9)
    # the layout steps run in the constructor, before the top-level step
    assert clock.outermost == pytest.approx(clock.total["fit_one_alpha_per_fold"] + clock.total["shared_grams"]
                                            + clock.total["pair_groups"] + clock.total["block_and_chunk"], rel=1e-9)
    assert clock.total["choose_shared"] >= clock.total["narrowing_sweep"] >= clock.own["narrowing_sweep"]


def test_command_prints_every_step_of_the_alpha_per_voxel_fit(profile, capsys):
    """The command on LPP-shaped data (9 runs, 2,816 scans), narrow and few voxels: the steps of the
    alpha-per-voxel path, 36 pair folds + 9 outer folds decomposed, shares adding up to 100%."""
    assert profile.main(["--d", "16", "--voxels", "300", "--protocol", "default", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# EigenRidge steps: d = 16, 300 voxels, default protocol")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert {"validate_pair", "make_fold", "refit", "torch.linalg.eigh"} <= rows.keys()
    assert int(rows["torch.linalg.eigh"][0]) == 45
    shares = [float(cells[-1]) for cells in rows.values()]
    assert sum(shares) == pytest.approx(100.0, abs=0.5)
