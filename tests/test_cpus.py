"""CPUs a process may use (affinity lowered to a container's CPU quota) and fits that never run more threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtbench import memory
from mtbench.encoding import fit_nested_loro, nested
from mtbench.memory import affinity_cpus, usable_cpus


@pytest.fixture
def quota(tmp_path, monkeypatch):
    """Point the cgroup quota files at ``tmp_path``; returns a writer of the v2 file's text."""
    v2 = tmp_path / "cpu.max"
    monkeypatch.setattr(memory, "_CPU_QUOTA_V2", str(v2))
    monkeypatch.setattr(memory, "_CPU_QUOTA_V1", (str(tmp_path / "quota_us"), str(tmp_path / "period_us")))
    monkeypatch.setattr(memory, "affinity_cpus", lambda: 64)  # a large host seen through a small quota

    def write(text: str | None, v1: tuple[str, str] | None = None) -> None:
        if text is not None:
            v2.write_text(text)
        if v1 is not None:
            (tmp_path / "quota_us").write_text(v1[0])
            (tmp_path / "period_us").write_text(v1[1])
    return write


@pytest.mark.parametrize("text, expected", [
    ("200000 100000\n", 2),   # docker --cpus 2
    ("150000 100000\n", 2),   # 1.5 CPUs: a second thread still helps
    ("50000 100000\n", 1),
    ("max 100000\n", 64),     # no quota: the affinity
    ("garbage\n", 64),
])
def test_quota_v2_lowers_the_affinity(quota, text, expected):
    quota(text)
    assert usable_cpus() == expected


def test_quota_v1_when_there_is_no_v2_file(quota):
    quota(None, ("400000", "100000"))
    assert usable_cpus() == 4
    quota(None, ("-1", "100000"))  # v1's "no quota"
    assert usable_cpus() == 64


def test_no_cgroup_files_gives_the_affinity(quota):
    assert usable_cpus() == 64
    assert 1 <= affinity_cpus() <= (__import__("os").cpu_count() or 1)


def test_a_fit_runs_no_more_threads_than_usable_cpus(monkeypatch):
    """torch's pool (sized by the host) is capped to the usable CPUs during the fit, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(nested, "usable_cpus", lambda: 1)
    seen = []
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((60, 200)).astype(np.float32) for _ in range(3)]
    ys = [rng.standard_normal((60, 6000)).astype(np.float32) for _ in range(3)]  # above SMALL_FLOPS
    assert nested.validation_flops(xs, ys, 5, "loro", [0, 1, 2]) >= nested.limits.SMALL_FLOPS
    try:
        fit_nested_loro(xs, ys, np.logspace(0, 4, 5), on_predictions=lambda *a: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(nested, "usable_cpus", lambda: 2)
        seen.clear()
        fit_nested_loro(xs, ys, np.logspace(0, 4, 5), on_predictions=lambda *a: seen.append(torch.get_num_threads()))
        assert set(seen) == {2}  # nothing to cap: the pool is left as it is
    finally:
        torch.set_num_threads(before)
