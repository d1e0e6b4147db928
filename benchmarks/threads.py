"""What too many compute threads cost a fit: the main job's shape with 1x, 4x and 16x the usable CPUs.

    python benchmarks/threads.py [--repeats 3]

A container started with a CPU quota (``docker --cpus 2``, Kubernetes limits) shows the process every
core of the host, and torch sizes its thread pool by them; the quota then throttles the whole pool.
Oversubscribing the CPUs this process may use is the closest thing this script can do without a
cgroup of its own: it fits one (layer, state) of the README's main job (4 runs of 86-90 scans,
576 features, 16,471 voxels + 1,000 null columns, 9 alphas, per-voxel significance) with torch
pinned to ``k x usable_cpus()`` threads (the fit's own cap turned off), alternating the settings in
each repeat so that they share the machine's conditions, and prints the median wall time of each
and its ratio to ``usable_cpus()`` threads. Since the cap, ``mtbench`` never runs more threads than
:func:`mtbench.memory.usable_cpus` (affinity lowered to the quota), whatever torch would choose.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mtbench.encoding import fit_nested_loro, nested  # noqa: E402
from mtbench.memory import usable_cpus  # noqa: E402
from mtbench.settings import RunSettings  # noqa: E402
from mtbench.significance import ShiftTest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 576)).astype(np.float32) for n in (86, 88, 90, 88)]
    weights = rng.standard_normal((576, 17471)).astype(np.float32) * 0.02
    ys = [(x @ weights + rng.standard_normal((len(x), 17471))).astype(np.float32) for x in xs]
    alphas = RunSettings(model="smollm2-135m", dataset="synthetic", states=["input_hidden_state"]).alphas
    cpus = usable_cpus()
    counts = [cpus, 4 * cpus, 16 * cpus]
    nested.usable_cpus = lambda: 10**6  # measure what an uncapped pool costs
    seconds: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(args.repeats):
        for k in counts:
            torch.set_num_threads(k)
            start = time.perf_counter()
            fit_nested_loro(xs, ys, alphas, precision="mixed", on_predictions=ShiftTest(ys, 1000, 1000, 0))
            seconds[k].append(time.perf_counter() - start)
    base = statistics.median(seconds[cpus])
    print(f"usable CPUs: {cpus}; one main-job fit, median of {args.repeats}")
    for k in counts:
        print(f"  {k:>3} threads: {statistics.median(seconds[k]):6.2f} s  ({statistics.median(seconds[k]) / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
