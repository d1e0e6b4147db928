"""What a sweep costs besides the fits: planning a big sweep, and per-cell overhead on small ones.

    python benchmarks/sweep_overhead.py [--layers 80] [--cells 6] [--workers 2]

1. Planning: a tiny random Llama with ``--layers`` blocks x 13 states x 2 protocols on the tiny
   synthetic dataset: time to expand, name and check the status of every cell (``--dry-run``
   path), per cell. A 70B model (80 blocks x 13 states x 49 subjects = 50,960 cells) should
   plan in well under a minute.
2. Overhead: ``--cells`` cells through the local executor (``--workers``) versus the sum of
   the cells' own run times recorded in their manifests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--cells", type=int, default=6, help="even number: 2 states x cells/2 layers")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from sweep_helpers import write_plan

    from mtbench_plugins.commands.sweep.engine import describe_plan, run_sweep
    from mtbench_plugins.commands.sweep.plan import load_plan
    from mtbench_plugins.models.hf.tiny import save_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big = save_tiny_llama(root / "deep", seed=0, n_layers=args.layers)
        plan = load_plan(write_plan(root / "big.toml", big, root / "cache", states=("all",),
                                    protocols=("mtbench", "mindtransformer")))
        describe_plan(plan, root / "big")  # first call loads the model once and caches its shape
        start = time.perf_counter()
        description = describe_plan(plan, root / "big")
        seconds = time.perf_counter() - start
        n = description["n_cells"]
        print(f"planning: {n} cells in {seconds:.2f} s ({1e3 * seconds / n:.2f} ms per cell; "
              f"50,960 cells -> {50960 * seconds / n:.0f} s)")

        small = save_tiny_llama(root / "small", seed=0, n_layers=args.cells // 2)
        plan = load_plan(write_plan(root / "small.toml", small, root / "cache",
                                    executor_options={"workers": args.workers}))
        start = time.perf_counter()
        report = run_sweep(plan, root / "small")
        wall = time.perf_counter() - start
        own = sum(json.loads((root / "small" / "runs" / name / "manifest.json").read_text())["seconds"]
                  for name in report.status)
        print(f"local sweep: {report.n_cells} cells, {args.workers} workers: {wall:.1f} s wall; "
              f"the runs' own time (manifests) {own:.1f} s; complete={report.complete}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
