"""TR-level features are aligned once per (layer, state) and alignment and reused by later runs."""

from __future__ import annotations

import numpy as np
import pytest

from mtbench import runner
from mtbench.settings import RunSettings
from mtbench.features import ScanFeatures
from mtbench.runner import run
from run_helpers import count_calls, tiny_run_settings, voxel_table

STATES = ["input_hidden_state", "per_head_k_rope"]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    return tiny_run_settings(tmp_path, monkeypatch, STATES, "per_head_k_rope", permutations=0)


def test_a_second_run_reads_the_aligned_features(settings, tmp_path, monkeypatch):
    n_fits = 2 * len(STATES)
    calls = count_calls(monkeypatch, runner, "scan_features")
    first = run(settings, tmp_path / "a").run_dir
    assert len(calls) == n_fits
    cached = sorted((tmp_path / "cache").rglob("scans-*/*.npy"))
    assert len(cached) == n_fits

    # other alphas and FDR level: a refit, but neither the model nor the alignment runs again
    calls.clear()
    other = run(RunSettings(**{**settings.__dict__, "alphas": [10.0, 1e3], "fdr": 0.1}), tmp_path / "b").run_dir
    assert calls == []
    assert not np.array_equal(voxel_table(other)["alpha"], voxel_table(first)["alpha"])  # it did refit with the new grid

    # the cached features give exactly the numbers of freshly aligned ones
    for path in cached:
        path.unlink()
    again = run(settings, tmp_path / "c").run_dir
    assert len(calls) == n_fits
    np.testing.assert_array_equal(voxel_table(again)["test"].to_numpy(), voxel_table(first)["test"].to_numpy())

    # another alignment (FIR delays) is another cache entry
    calls.clear()
    run(RunSettings(**{**settings.__dict__, "hrf": "fir", "delays": [1, 2]}), tmp_path / "d")
    assert len(calls) == n_fits
    assert len({p.parent for p in (tmp_path / "cache").rglob("scans-*/*.npy")}) == 2


def test_a_corrupt_or_foreign_cached_file_is_aligned_again(tmp_path):
    from mtbench.features import CachedFeatures

    rng = np.random.default_rng(0)
    words = rng.standard_normal((30, 4)).astype(np.float16)
    word_file = tmp_path / "L001_s.npy"
    np.save(word_file, words)
    calls = []

    def align(runs):
        calls.append(1)
        return [np.asarray(r[:5] * 2, dtype=np.float32) for r in runs]

    feats = CachedFeatures({(1, "s"): word_file}, np.array([0, 10, 30]))
    scans = ScanFeatures(feats, align, "abc", [5, 5])
    fresh = scans[(1, "s")]
    assert len(calls) == 1 and [r.shape for r in fresh] == [(5, 4), (5, 4)]
    cached = tmp_path / "scans-abc" / "L001_s.npy"
    np.testing.assert_array_equal(np.load(cached), np.concatenate(fresh))
    assert [r.shape for r in scans[(1, "s")]] == [(5, 4), (5, 4)] and len(calls) == 1  # read back

    cached.write_bytes(cached.read_bytes()[:40])  # truncated by a crash
    np.testing.assert_array_equal(np.concatenate(scans[(1, "s")]), np.concatenate(fresh))
    assert len(calls) == 2
    np.save(cached, np.zeros((7, 4), dtype=np.float32))  # wrong number of scans
    np.testing.assert_array_equal(np.concatenate(scans.pop((1, "s"))), np.concatenate(fresh))
    assert len(calls) == 3 and (1, "s") not in scans
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file left behind

    in_memory = ScanFeatures({(1, "s"): [words[:10], words[10:]]}, align, "abc", [5, 5])
    in_memory[(1, "s")]
    assert len(calls) == 4 and len(list(tmp_path.rglob("*.npy"))) == 2  # nothing written without a cache
