"""Time the README's main job from an empty cache (the "first run" of a fresh machine).

    python benchmarks/default_run.py [--keep-cache]

Runs ``mtbench run --model smollm2-135m --states all`` with a temporary MTBENCH_CACHE (so the
GGUF conversion and the feature extraction are included), then prints the wall time, the
per-stage timings from the run's manifest, and whether the planted truth was recovered.
Target (issue "Foundation"): under 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _cli_run import timed_run  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-cache", action="store_true", help="use the normal cache (a warm run)")
    parser.add_argument("--precision", default="mixed", choices=["mixed", "float32"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200")
        if not args.keep_cache:
            env["MTBENCH_CACHE"] = str(Path(tmp) / "cache")
        ran = timed_run(["--model", "smollm2-135m",
                         "--states", "all", "--precision", args.precision], Path(tmp) / "res", env)
        if ran is None:
            return 1
        wall, run_dir, manifest, stdout = ran
        import pyarrow.parquet as pq

        summary = {row["parcel"]: row for row in pq.read_table(run_dir / "summary.parquet").to_pylist()}
        planted = json.loads((run_dir / "truth.json").read_text())["planted"]
        found = [(summary[p["parcel"]]["layer"], summary[p["parcel"]]["state"]) == (p["layer"], p["state"])
                 for p in planted]
    print(f"wall time: {wall:.1f} s ({'warm' if args.keep_cache else 'cold'} cache, target < 300 s)")
    for stage, seconds in manifest["timings"].items():
        print(f"  {stage:<15} {seconds:8.1f} s")
    fits = len(manifest["settings"]["states"]) * len(manifest["settings"]["layers"])
    print(f"  {fits} fits on {manifest['dataset']['n_voxels']} voxels: "
          f"{manifest['timings']['fit'] / fits:.2f} s per fit, precision {manifest['settings']['precision_used']}")
    print(f"planted truth recovered in {sum(found)} of {len(found)} parcels")
    return 0 if all(found) else 1


if __name__ == "__main__":
    sys.exit(main())
