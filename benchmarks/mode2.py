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
import os
import sys
import tempfile
from pathlib import Path

from _cli_run import timed_run  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

INPUTS = "per_head_q,per_head_q_rope,per_head_k,per_head_k_rope,attn_output,ffn_activated_state"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selection", default="pivot", choices=["pivot", "banded"])
    parser.add_argument("--layers", default="4")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200")
        ran = timed_run(["--model", "smollm2-135m", "--mode", "2",
                         "--layers", args.layers, "--inputs", INPUTS, "--pivot", "input_hidden_state",
                         "--selection", args.selection], Path(tmp) / "res", env)
        if ran is None:
            return 1
        wall, run_dir, manifest, stdout = ran
        rows = pq.read_table(run_dir / "mode2.parquet").to_pylist()
    print(f"wall {wall:.1f} s; stages {manifest['timings']}; mode 2 {manifest['mode2_seconds']}")
    for row in sorted(rows, key=lambda r: -r["stage2_test"])[:5]:
        print(f"L{row['layer']} {row['parcel'][:40]:40s} stage1 {row['stage1_test']:.3f} stage2 "
              f"{row['stage2_test']:.3f} top {row['top_state']}")
    if "Planted truth" in stdout:
        print("Planted truth" + stdout.split("Planted truth")[-1].split("results:")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
