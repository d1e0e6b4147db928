"""Bias of the variance-partitioning estimates on null voxels, over many simulations.

    python benchmarks/partition_null.py [--seeds 20]

Each seed simulates the planted data of ``tests/test_partition.py`` (4 runs x 100 scans, R 16
features, S 24, 1,000 null voxels) and fits R alone, S alone and both (banded: the engine's grid). For every
estimate (signed squared held-out r: ``ev``; held-out R^2: ``r2``) it prints the mean of the
seeds' null means with its standard error over seeds (independent simulations: the test of
bias), and in how many seeds the null mean lies within 1.96 standard errors (across that seed's
voxels) of 0, with its binomial interval (measured a little under 95% for some estimates: see
docs/analyses.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
from scipy.stats import binomtest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    from mtbench_plugins.analyses.partition.fit import (
        banded_grid,
        partition,
        single_space,
    )
    from test_partition import planted

    alphas, options = np.logspace(-1, 5, 7), dict(backend="torch", precision="float32")
    pooled: dict[str, list[float]] = {}
    within: dict[str, int] = {}
    for seed in range(args.seeds):
        r_runs, s_runs, y_runs, kinds = planted(seed)
        ref, state = single_space(r_runs, y_runs, alphas, **options), single_space(s_runs, y_runs, alphas, **options)
        joint = banded_grid([r_runs, s_runs], y_runs, alphas, **options)
        for field in ("ev", "r2"):
            estimates = partition(joint, state, ref, field) | {
                "joint": getattr(joint, field), "state": getattr(state, field), "reference": getattr(ref, field)}
            for name, values in estimates.items():
                per_voxel = values[:, kinds["null"]].mean(0)
                key = f"{field} {name}"
                pooled.setdefault(key, []).extend(per_voxel.tolist())
                se = per_voxel.std(ddof=1) / np.sqrt(per_voxel.size)
                within[key] = within.get(key, 0) + int(abs(per_voxel.mean()) < 1.96 * se)
        print(f"seed {seed} done", flush=True)
    for key, values in pooled.items():
        per_seed = np.asarray(values).reshape(args.seeds, -1).mean(1)  # independent simulations
        ci = binomtest(within[key], args.seeds).proportion_ci(0.95)
        print(f"{key:22s} mean {per_seed.mean():+.5f} +- {per_seed.std(ddof=1) / np.sqrt(args.seeds):.5f} (SE over "
              f"{args.seeds} seeds); seeds within 1.96 voxel SE: {within[key]}/{args.seeds} "
              f"(95% CI {ci.low:.2f}-{ci.high:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
