"""Time `mtbench run` on the full-scale simulated Le Petit Prince dataset and project the full run.

    python benchmarks/lpp_sim_run.py [--sim DIR] [--states S1,S2] [--layers 4,12] [--source ../shared/data/lpp]

Simulates ``lpp-en-sim`` (real timing, 2,816 scans; real mask, 25,870 voxels; ISC-derived SNR;
default planted truth, SmolLM2-135M) unless ``--sim`` already holds one, runs the chosen subset of
(layer, state) fits, and prints wall time per stage, seconds per fit, the projection to
``--states all`` over every layer (390 fits), and whether the planted truth was recovered.

With ``--work DIR`` the simulation and the results live in DIR instead of a temporary folder,
so the same command resumes an interrupted run from its checkpoints (the full run,
``--states all --layers all``, takes ~2 h 25 min on a quiet 2-core AMX machine, ~4.8 h on a 2-core
EPYC Zen 4)::

    python benchmarks/lpp_sim_run.py --states all --layers all --work /work/lpp

``--rescore`` then times ``mtbench rescore`` on the finished run: with the ``r2`` metric (one
refit per outer fold with the run's alphas) and on two parcels (the mask's left and right
halves: no fit), and prints the size of ``folds.parquet``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cli_run import timed_run  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", type=Path, default=None, help="existing simulated root (else simulate one)")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/lpp")
    parser.add_argument("--states", default="per_head_q_rope,ffn_activated_state,per_head_k_rope")
    parser.add_argument("--layers", default="4,12,20")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the simulation (WORK/sim) and results (WORK/results) here: a rerun resumes")
    parser.add_argument("--rescore", action="store_true", help="also time `mtbench rescore` (metric r2, parcels)")
    args = parser.parse_args()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        sim = args.sim or Path(tmp) / "sim"
        if args.sim is None and not (sim / "dataset_description.json").exists():
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "mtbench.cli", "data", "simulate", "lpp-en", "--source",
                                   str(args.source), "--out", str(sim)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:])
                return 1
            print(f"simulate: {time.perf_counter() - start:.0f} s; {done.stdout.strip().splitlines()[-1]}")
        checkpoints = Path(tmp) / "results" / "checkpoints"
        resumed = checkpoints.exists() and any(checkpoints.rglob("*.npz"))
        ran = timed_run(["--model", "smollm2-135m", "--dataset",
                         "lpp-en-sim", "--dataset-option", f"root={sim}", "--states", args.states,
                         "--layers", args.layers], Path(tmp) / "results", env)
        if ran is None:
            return 1
        wall, run_dir, manifest, stdout = ran
        n_fits = len(manifest["settings"]["states"]) * len(manifest["settings"]["layers"])
        fit = manifest["timings"]["fit"]
        print(f"run: {wall:.0f} s wall, stages {manifest['timings']}")
        if resumed:  # the fits read from checkpoints took no time here: no per-fit figure
            print(f"fit: {fit:.0f} s for the fits left by the interrupted run ({n_fits} in all)")
        else:
            print(f"fit: {fit / n_fits:.1f} s per (layer, state) over 2,816 scans x 25,870 voxels; "
                  f"projected fit time for 390 fits: {fit / n_fits * 390 / 60:.0f} min")
        print("truth:", stdout.split("recovered?", 1)[-1][:800] if "recovered?" in stdout else "n/a")
        if args.rescore:
            return time_rescore(run_dir, fit, n_fits, env)
    return 0


def time_rescore(run_dir: Path, fit_seconds: float, n_fits: int, env: dict) -> int:
    """Time ``mtbench rescore`` with another metric (refit) and on other parcels (no fit)."""
    import nibabel as nib
    import numpy as np

    mask_img = nib.load(run_dir / "maps" / "mask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    halves = np.zeros(mask.shape, np.int16)
    halves[: mask.shape[0] // 2][mask[: mask.shape[0] // 2]] = 1
    halves[mask.shape[0] // 2:][mask[mask.shape[0] // 2:]] = 2
    labels = run_dir.parent.parent / "halves.nii.gz"
    nib.save(nib.Nifti1Image(halves, mask_img.affine), labels)
    size = (run_dir / "folds.parquet").stat().st_size / 2**20
    print(f"folds.parquet: {size:.0f} MB ({size / n_fits:.1f} MB per fit); voxels.parquet: "
          f"{(run_dir / 'voxels.parquet').stat().st_size / 2**20:.0f} MB")
    for what, extra in (("metric r2 (refit with the run's alphas)", ["--metric", "r2"]),
                        ("parcels (no fit)", ["--parcels", str(labels)])):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mtbench.cli", "rescore", str(run_dir), *extra], env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-2000:])
            return 1
        print(f"rescore, {what}: {wall:.0f} s wall for {n_fits} fits ({wall / n_fits:.1f} s per fit; the run's "
              f"fit: {fit_seconds / n_fits:.1f} s per fit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
