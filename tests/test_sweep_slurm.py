"""`mtbench sweep --executor slurm` against a real Slurm cluster (start one with .ci/slurm-up.sh).

A sweep is cancelled midway with scancel, resumed, and must end with exactly one valid result
per cell, no cell that had finished computed again, and the same numbers as the local executor.
Without a cluster the test skips with the reason, except under CI (env CI set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from sweep_helpers import event_counts, scores_by_cell, sweep_cli, write_plan  # tests/ is on sys.path

from mtbench_plugins.commands.sweep.plan import expand, load_plan
from mtbench_plugins.commands.sweep.tasks import result_is_valid
from mtbench_plugins.models.hf.tiny import save_tiny_llama

pytestmark = pytest.mark.slow


def _cluster_problem() -> str | None:
    """Why no Slurm cluster can take jobs here, or None when one can."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch/sinfo are not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out (slurmctld not answering)"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    states = out.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable node (states: {', '.join(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm cluster not reachable in CI: {problem} (.ci/run starts it with .ci/slurm-up.sh)")
        pytest.skip(f"no Slurm cluster: {problem}; start one with .ci/slurm-up.sh (root)")


def _wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_slurm_sweep_cancelled_resumes_and_matches_local(cluster, tmp_path):
    model = save_tiny_llama(tmp_path / "tiny-llama", seed=0, n_layers=3)
    options = {"poll_seconds": 1, "array_parallelism": 2, "folder": str(tmp_path / "submitit")}
    plan_file = write_plan(tmp_path / "plan.toml", model, tmp_path / "cache", executor="slurm",
                           executor_options=options)
    results = tmp_path / "results"
    cells = [c for g in expand(load_plan(plan_file), results) for c in g.cells]
    assert len(cells) == 6

    sweep = sweep_cli(str(plan_file), "--out", str(results))
    try:
        _wait_for(lambda: sum("done" in c for c in event_counts(results).values()) >= 2, 400, "two finished cells")
        subprocess.run(["scancel", "--me", "--name", "mtbench-fit"], check=True, timeout=60)
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, err[-3000:] + out[-3000:]
    assert "lost" in out and "run the same command again to resume" in out
    assert "not combined yet" in out and "cells not done" in out
    done_before = {name for name, c in event_counts(results).items() if "done" in c}
    assert 2 <= len(done_before) < 6, "the sweep must be cancelled midway"

    resumed = sweep_cli(str(plan_file), "--out", str(results))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:] + out[-3000:]
    assert "6 done, 0 failed" in out

    counts = event_counts(results)
    assert sorted(counts) == sorted(c.name for c in cells)
    for name in done_before:  # finished before the cancel: never computed again
        assert counts[name] == {"start": 1, "done": 1}, (name, counts[name])
    for name, count in counts.items():  # cancelled mid-computation: restarted, finished once
        assert count["done"] == 1 and count["start"] - count["done"] <= 1, (name, count)
    assert list(event_counts(results, "extract").values()) == [{"start": 1, "done": 1}]
    runs = sorted(p.name for p in (results / "runs").iterdir())
    combined = [name for name in runs if "-combined-" in name]  # all six cells as one run, once resumed
    assert len(combined) == 1 and f"combined: runs/{combined[0]}" in out
    assert sorted(set(runs) - set(combined)) == sorted(c.name for c in cells)  # one folder each, no .partial
    assert all(result_is_valid(results, c.name, c.settings) for c in cells)
    jobs = {e["job"] for path in (results / "sweep" / "cells").glob("*.events")
            for e in map(json.loads, path.read_text().splitlines())}
    assert None not in jobs and all("_" in j for j in jobs)  # every cell ran as a Slurm array task
    scripts = "\n".join(p.read_text() for p in (tmp_path / "submitit").rglob("*_submission.sh"))
    assert "#SBATCH --cpus-per-task=1" in scripts and "#SBATCH --mem=" in scripts and "#SBATCH --array=" in scripts

    # the same sweep through the local executor gives the same numbers
    local_plan = write_plan(tmp_path / "local.toml", model, tmp_path / "cache", executor="local",
                            executor_options={"workers": 2})
    local = sweep_cli(str(local_plan), "--out", str(tmp_path / "local"))
    out, err = local.communicate(timeout=600)
    assert local.returncode == 0, err[-3000:] + out[-3000:]
    assert scores_by_cell(tmp_path / "local") == scores_by_cell(results)
