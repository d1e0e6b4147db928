"""Cost of the analyses of issue 30 relative to a Mode 1 fit of the same layer, at LPP scale, in one process.

    python benchmarks/analyses_cost.py [--voxels 25870] [--only mode1,partition,widths,heads]

The shapes of Le Petit Prince (English): the 9 runs' real scan counts (282..368 scans, 2,816
in all, from ``../shared/data/lpp/README.md``; the annotation's run lengths when the data is
there), 25,870 voxels (the EN group mask), SmolLM2-135M's widths (``input_hidden_state`` and
``per_head_q_rope`` 576 = 9 heads x 64, ``per_head_k`` 192 = 3 x 64). Features and BOLD are
random (the cost of a fit does not depend on the numbers). Each analysis is timed on the
same arrays, one after the other, with the settings of a default ``mtbench run``
(9 alphas, per-voxel alphas, ``--precision mixed``, no significance):

- ``mode1``: one nested fit of ``per_head_q_rope`` (the unit);
- ``partition``: ``per_head_q_rope`` against ``input_hidden_state``: R alone, S alone and the
  banded joint model on the engine's ratio grid (the R-alone fit serves every state of the
  block; timed here once); ``partition_himalaya_joint`` (not in the default list): the joint
  model with himalaya's random search instead, for comparison;
- ``widths``: ``per_head_q_rope`` as it is (Mode 1's fit) and reduced to 192 by PCA (a fit per
  outer fold, each on its own training runs);
- ``heads``: the 9 heads of ``per_head_q_rope`` (64 features each) and the 3 of ``per_head_k``.

Prints seconds and the ratio to ``mode1`` per analysis, and ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

LPP_SCANS = (282, 298, 340, 303, 265, 343, 325, 292, 368)
LPP_VOXELS = 25_870
ALPHAS = np.logspace(0, 8, 9)


def runs(width: int, rng) -> list[np.ndarray]:
    return [rng.standard_normal((n, width), dtype=np.float32) for n in LPP_SCANS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=LPP_VOXELS)
    parser.add_argument("--only", default="mode1,partition,widths,heads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from mtbench_plugins.analyses.heads.analysis import fit_heads
    from mtbench_plugins.analyses.partition.fit import banded, banded_grid, single_space
    from mtbench_plugins.analyses.widths.fit import fit_matched

    from mtbench.encoding import fit_nested_loro

    rng = np.random.default_rng(0)
    y = runs(args.voxels, rng)
    ref, state, keys = runs(576, rng), runs(576, rng), runs(192, rng)
    options = dict(backend="torch", precision="mixed")
    jobs = {
        "mode1": lambda: fit_nested_loro(state, y, ALPHAS, **options),
        "partition": lambda: (single_space(ref, y, ALPHAS, **options), single_space(state, y, ALPHAS, **options),
                              banded_grid([ref, state], y, ALPHAS, **options)),
        "partition_himalaya_joint": lambda: banded([ref, state], y, ALPHAS),
        "widths": lambda: (fit_nested_loro(state, y, ALPHAS, **options), fit_matched(state, y, ALPHAS, 192, **options)),
        "heads": lambda: (fit_heads(state, y, ALPHAS, 9, **options), fit_heads(keys, y, ALPHAS, 3, **options)),
    }
    wanted = args.only.split(",")
    fit_nested_loro(runs(8, rng)[:3], [y[:, :10] for y in y[:3]], ALPHAS, **options)  # warm-up: one-time costs
    seconds = {}
    order = [n for n in jobs if n in wanted] + (["mode1_again"] if "mode1" in wanted else [])
    jobs["mode1_again"] = jobs["mode1"]  # again at the end: how much the machine's load moved meanwhile
    for name in order:
        start = time.perf_counter()
        jobs[name]()
        seconds[name] = round(time.perf_counter() - start, 1)
        unit = seconds.get("mode1")
        print(f"{name:22s} {seconds[name]:8.1f} s" + (f"  {seconds[name] / unit:5.1f} x mode 1" if unit else ""),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"voxels": args.voxels, "scans": LPP_SCANS, "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
