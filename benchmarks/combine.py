"""Time combining a full-scale sweep's cells into one run (``mtbench combine``), and its peak memory.

    python benchmarks/combine.py [--work DIR] [--layers 30] [--source ../shared/data/lpp]

A Mode 1 sweep of SmolLM2-135M on Le Petit Prince is 30 layers x 13 states = 390 cells, each a
run of one (layer, state) over 9 runs x 25,870 voxels. This writes that many cells with random
scores (their contents do not change the cost) on the simulated ``lpp-en-sim`` dataset (real
mask and parcels; simulated once into ``WORK/sim`` unless it is there), then combines them in a
fresh process and prints wall time, seconds per cell, peak memory and the size of the per-fold
scores it holds (the combined run's ``folds.parquet`` in memory: test, validation and alpha).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

N_RUNS = 9

COMBINE = """
import json, resource, sys, time
from pathlib import Path
from mtbench_plugins.commands.runs.combine import combine_runs
results = Path(sys.argv[1])
cells = sorted(p for p in (results / "runs").iterdir() if p.name.startswith("cell-"))
start = time.perf_counter()
out = combine_runs(cells, results, "combined")
print(json.dumps({"seconds": time.perf_counter() - start, "cells": len(cells),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "folds_mb": (out.run_dir / "folds.parquet").stat().st_size / 2**20,
                  "n_voxels": json.loads((out.run_dir / "manifest.json").read_text())["dataset"]["n_voxels"]}))
"""


def write_cells(results: Path, sim: Path, n_layers: int) -> tuple[int, float]:
    """Write ``n_layers`` x 13 single-(layer, state) runs with random scores; (count, seconds)."""
    import numpy as np

    from mtbench.settings import RunSettings
    from mtbench.registry import get_registry, load_dataset
    from mtbench.results import provenance, write_run
    from mtbench_plugins.analyses.mode1.analysis import Mode1Result
    from mtbench_plugins.analyses.mode1.tables import ScoreTable

    dataset = load_dataset("lpp-en-sim", root=str(sim))
    n_vox = dataset.parcels.labels.size
    ceiling = dataset.noise_ceiling("average")
    states = get_registry().names("state")[:13]
    rng = np.random.default_rng(0)
    start, count = time.perf_counter(), 0
    for layer in range(1, n_layers + 1):
        for state in states:
            settings = RunSettings(model="smollm2-135m", dataset="lpp-en-sim", states=[state], layers=[layer],
                                   dataset_options={"root": str(sim)})
            test_runs = rng.normal(0, 0.05, (1, N_RUNS, n_vox)).astype(np.float32)
            validation_runs = rng.normal(0, 0.05, (1, N_RUNS, n_vox)).astype(np.float32)
            alpha_runs = (10.0 ** rng.integers(0, 9, (1, N_RUNS, n_vox))).astype(np.float32)
            table = ScoreTable(keys=[(layer, state)], test=test_runs.mean(1), validation=validation_runs.mean(1),
                               alpha=alpha_runs.mean(1), test_per_run=test_runs, validation_per_run=validation_runs,
                               p_value=rng.uniform(size=(1, n_vox)).astype(np.float32), alpha_per_run=alpha_runs)
            meta = provenance(settings=asdict(settings), model={"name": "smollm2-135m", "spec": "smollm2-135m",
                                                                "family": "llama", "revision": "benchmark",
                                                                "n_layers": n_layers},
                              dataset={"name": dataset.name, "version": dataset.version, "n_voxels": n_vox,
                                       "n_runs": N_RUNS, "stimulus": "benchmark", "atlas": dataset.parcels.atlas})
            meta.update(run_id=f"cell-L{layer:03d}-{state}", seconds=36.6, folds_file=True, sweep_cell=True)
            result = Mode1Result(table, dataset.parcels.labels, dataset.parcels.names, ceiling, settings.fdr)
            write_run(results, meta["run_id"], meta, result, dataset.mask_img, None)
            count += 1
    return count, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="keep the simulation and the cells here")
    parser.add_argument("--layers", type=int, default=30, help="layers x 13 states cells (SmolLM2: 30)")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/lpp")
    args = parser.parse_args()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        sim = work / "sim"
        if not (sim / "dataset_description.json").exists():
            done = subprocess.run([sys.executable, "-m", "mtbench.cli", "data", "simulate", "lpp-en", "--source",
                                   str(args.source), "--out", str(sim)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:])
                return 1
        results = work / "results"
        if not (results / "runs").is_dir() or not any((results / "runs").glob("cell-*")):
            count, seconds = write_cells(results, sim, args.layers)
            print(f"wrote {count} cells in {seconds:.0f} s ({seconds / count:.2f} s per cell; peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB)")
        for old in (results / "runs").glob("combined*"):
            subprocess.run(["rm", "-rf", str(old)], check=True)
        done = subprocess.run([sys.executable, "-c", COMBINE, str(results)], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            return 1
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        held_gb = measured["cells"] * N_RUNS * measured["n_voxels"] * 4 * 3 / 2**30  # per-fold test, validation, alpha
        print(f"combine: {measured['cells']} cells in {measured['seconds']:.0f} s "
              f"({measured['seconds'] / measured['cells']:.2f} s per cell); peak RSS {measured['peak_rss_gb']:.1f} GB "
              f"for {held_gb:.1f} GB of per-fold scores ({measured['peak_rss_gb'] / held_gb:.1f}x); "
              f"folds.parquet {measured['folds_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
