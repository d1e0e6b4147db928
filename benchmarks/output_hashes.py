"""Content hashes of everything the tiny planted runs write, to prove a refactor changes no output.

Runs, through the command line users type, on a tiny random Llama and the tiny planted
``synthetic`` dataset (everything in a fresh temporary folder and cache):

- ``mtbench run`` in Mode 1 and Mode 2 (pivot and banded), each under both protocols;
- single-layer runs of both modes, then ``mtbench combine`` of them;
- ``mtbench rescore`` with another metric and with other parcels;
- ``mtbench sweep`` of a plan with ``modes = [1, 2]`` (cells and combined runs);
- ``mtbench leaderboard`` (with every run's report) and ``mtbench report``.

Then hashes every table (every column and row, without the Parquet metadata that repeats
the manifest), every map (every voxel, the affine), every JSON file, figure and page, after
taking out what is provenance only: times, durations, commit, version, host, and the
timestamp that starts a generated run id. Two invocations on the same code print the same
hashes; a refactor that changes no output prints the same hashes too::

    python benchmarks/output_hashes.py --json before.json
    ... refactor ...
    python benchmarks/output_hashes.py --json after.json --compare before.json

Exit status 1 when ``--compare`` finds a difference (each differing file is named).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLANTED = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "per_head_q_rope"}]
STATES = "per_head_q_rope,ffn_activated_state"
INPUTS = "per_head_q_rope,attn_output,ffn_activated_state"
# provenance only: left out of the hashes
VOLATILE_KEYS = {"created", "git_commit", "seconds", "timings", "mode2_seconds", "host", "versions",
                 "mtbench_version"}
_STAMP = re.compile(r"\d{8}T\d{6}")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\+00:00)?")
_COMMIT = re.compile(r"\b[0-9a-f]{40}\b")


def tiny_model(folder: Path) -> Path:
    try:  # where the tiny configs live after the HF adapter became a package
        from mtbench_plugins.models.hf.tiny import save_tiny_llama as make_tiny_llama
    except ImportError:
        from mtbench_plugins.testing import make_tiny_llama
    return make_tiny_llama(folder, seed=0, n_layers=2)


def mtbench(*args: str, env: dict, check: bool = True) -> str:
    result = subprocess.run([sys.executable, "-m", "mtbench.cli", *args], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"mtbench {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def produce(root: Path) -> tuple[Path, Path]:
    """Write every output under ``root``; returns (results folder, leaderboard folder)."""
    env = dict(os.environ, MTBENCH_CACHE=str(root / "cache"), COLUMNS="200", OPENBLAS_NUM_THREADS="1")
    model = tiny_model(root / "tiny-llama")
    results = root / "results"
    data = ["--dataset", "synthetic", "--dataset-option", "scale=tiny", "--dataset-option", "snr=2.0",
            "--dataset-option", f"truth_model=hf:{model}", "--dataset-option", f"truth={json.dumps(PLANTED)}"]
    common = ["--model", f"hf:{model}", *data, "--permutations", "200", "--out", str(results)]
    mode1, mode2 = ["--states", STATES], ["--mode", "2", "--inputs", INPUTS]
    for protocol in (["--alphas", "1,100,10000"], ["--protocol", "mindtransformer"]):
        mtbench("run", *common, *mode1, *protocol, env=env)
        mtbench("run", *common, *mode2, *protocol, env=env)
        mtbench("run", *common, *mode2, "--selection", "banded", *protocol, env=env)
    # one layer at a time, then combined
    singles = root / "singles"
    for layer in ("1", "2"):
        for mode in (mode1, mode2):
            mtbench("run", *common[:-1], str(singles), *mode, "--layers", layer, "--alphas", "1,100,10000", env=env)
    single_runs = sorted((singles / "runs").iterdir())
    by_mode: dict[bool, list[str]] = {}
    for run in single_runs:
        by_mode.setdefault((run / "mode2.parquet").exists(), []).append(str(run))
    mtbench("combine", *by_mode[False], "--run-id", "combined-mode-one", "--out", str(results), env=env)
    mtbench("combine", *by_mode[True], "--run-id", "combined-mode-two", "--out", str(results), env=env)
    # rescore: another metric, other parcels (the best-layer map as a label image)
    first = min(p for p in (results / "runs").iterdir() if p.name.startswith("combined-mode-one"))
    mtbench("rescore", str(first), "--metric", "r2", "--run-id", "rescored-r2", env=env)
    mtbench("rescore", str(first), "--parcels", str(first / "maps" / "best_layer.nii.gz"), "--run-id",
            "rescored-parcels", env=env)
    # a sweep of both modes
    plan = root / "plan.toml"
    plan.write_text(f"""
models = [{json.dumps(f"hf:{model}")}]
states = {json.dumps(STATES.split(","))}
layers = "all"
datasets = ["synthetic"]
modes = [1, 2]
executor = "local"
cache = {json.dumps(str(root / "cache"))}

[mode2]
inputs = {json.dumps(INPUTS.split(","))}

[settings]
alphas = [1.0, 100.0, 10000.0]

[dataset_options.synthetic]
scale = "tiny"
snr = 2.0
truth_model = {json.dumps(f"hf:{model}")}
truth = {json.dumps(json.dumps(PLANTED))}

[executor_options]
workers = 1
""")
    sweep_results = root / "sweep-results"
    mtbench("sweep", str(plan), "--out", str(sweep_results), env=env)
    board = root / "board"
    mtbench("leaderboard", str(results), str(sweep_results), "--out", str(board), env=env)
    mtbench("leaderboard", str(results), "--out", str(root / "board-mode2"), "--mode", "2", "--no-reports",
            env=env)
    mtbench("report", str(first), "--out", str(root / "report-one"), env=env)
    return results, board


def _text(value: str) -> str:
    return _COMMIT.sub("COMMIT", _ISO.sub("TIME", _STAMP.sub("STAMP", value)))


def _clean(value):
    if isinstance(value, dict):
        return {_text(k): _clean(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return repr(value)  # exact, NaN included
    return value


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        schema = [(f.name, str(f.type)) for f in table.schema]
        return _digest([schema, {c: _clean(table[c].to_pylist()) for c in table.column_names}])
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib
        import numpy as np

        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
        return _digest([str(data.dtype), list(data.shape), hashlib.sha256(data.tobytes()).hexdigest(),
                        image.affine.tolist()])
    if name.endswith(".json"):
        return _digest(_clean(json.loads(path.read_text())))
    if name.endswith((".html", ".md", ".txt")):
        return _digest(_text(path.read_text()))
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def hashes(root: Path, folders: list[Path]) -> dict[str, str]:
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if (not path.is_file() or "/sweep/" in f"/{relative}" or "/checkpoints/" in f"/{relative}"
                    or path.name.startswith(".")):
                continue  # bookkeeping (event logs with times, locks), not results
            out[_text(relative)] = file_hash(path)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Write the hashes to this file.")
    parser.add_argument("--compare", type=Path, help="Hashes written earlier: exit 1 on any difference.")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "mtbench-output-hashes",
                        help="Folder the outputs are written to (emptied first, kept afterwards). Paths are part "
                             "of the settings, and so of sweep cell names: compare runs made in the same folder.")
    args = parser.parse_args()
    root = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    produce(root)
    found = hashes(root, [root / "results", root / "singles", root / "sweep-results", root / "board",
                          root / "board-mode2", root / "report-one"])
    print(f"{len(found)} files hashed")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = sorted(k for k in set(before) | set(found) if before.get(k) != found.get(k))
        for key in differ:
            print(f"differs: {key} ({before.get(key, 'absent')} -> {found.get(key, 'absent')})")
        print(f"{len(before)} files before, {len(found)} now, {len(differ)} differ")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
