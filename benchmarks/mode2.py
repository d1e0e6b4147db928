"""Time a Mode 2 run on the default synthetic dataset at full scale (README example inputs).

    python benchmarks/mode2.py [--selection pivot|banded] [--layers 4]

Runs ``mtbench run --model smollm2-135m --mode 2 --inputs per_head_q,per_head_q_rope,per_head_k,
per_head_k_rope,attn_output,ffn_activated_state --pivot input_hidden_state`` with the normal
feature cache, then prints the wall time, the per-stage timings of the manifest (stage 1 and
stage 2 per layer under ``mode2_seconds``), stage 1 vs stage 2 in the planted parcels and the
planted-truth check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INPUTS = "per_head_q,per_head_q_rope,per_head_k,per_head_k_rope,attn_output,ffn_activated_state"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selection", default="pivot", choices=["pivot", "banded"])
    parser.add_argument("--layers", default="4")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "mtbench.cli", "run", "--model", "smollm2-135m", "--mode", "2",
                                 "--layers", args.layers, "--inputs", INPUTS, "--pivot", "input_hidden_state",
                                 "--selection", args.selection, "--out", str(Path(tmp) / "res")],
                                env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr[-2000:])
            return 1
        (run_dir,) = (Path(tmp) / "res" / "runs").iterdir()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        rows = pq.read_table(run_dir / "mode2.parquet").to_pylist()
    print(f"wall {wall:.1f} s; stages {manifest['timings']}; mode 2 {manifest['mode2_seconds']}")
    for row in sorted(rows, key=lambda r: -r["stage2_test"])[:5]:
        print(f"L{row['layer']} {row['parcel'][:40]:40s} stage1 {row['stage1_test']:.3f} stage2 "
              f"{row['stage2_test']:.3f} top {row['top_state']}")
    if "Planted truth" in result.stdout:
        print("Planted truth" + result.stdout.split("Planted truth")[-1].split("results:")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
