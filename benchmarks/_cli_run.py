"""Shared by the benchmark scripts: one timed `mtbench run` in a subprocess, and its run folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def timed_run(args: list[str], out: Path, env: dict) -> tuple[float, Path, dict, str] | None:
    """Run ``mtbench run ARGS --out OUT``; return (wall seconds, run folder, manifest, stdout), or None on failure.

    A failure prints the end of the command's stderr (the caller returns a non-zero status).
    """
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mtbench.cli", "run", *args, "--out", str(out)],
                            env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stderr[-2000:])
        return None
    # the newest run (ids start with their UTC time): a kept results folder may hold earlier ones
    run_dir = max(d for d in (out / "runs").iterdir() if not d.name.endswith(".partial"))
    return wall, run_dir, json.loads((run_dir / "manifest.json").read_text()), result.stdout
