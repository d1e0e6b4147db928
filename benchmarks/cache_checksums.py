"""What checking cache files against their checksums costs (issue 32, item 4), as ratios measured in one run.

    python benchmarks/cache_checksums.py [--repeats 5] [--skip-model]

Every cache file mtbench makes again is checked when it is read: word and scan features end with
the CRC-32 of their content (``mtbench.paths.read_sealed``), the converted model's stamp records
the CRC-32 of each file, checkpoints are zips (zipfile checks their CRC-32). Measured here, on files
in the page cache (just written: the warm case, where the check's share is largest):

1. **Main job's feature cache**: 390 float16 files of SmolLM2-135M's shapes (30 blocks x 13 states,
   9 x 576 + 3 x 192 + 1 x 1,536 values per word and block) x 1,757 words (the ``synthetic``
   story, 4 runs): every file read as a fit reads it (split into runs, float32), without a check
   (``np.load``, as before) and with it (``CachedFeatures`` of ``word_features``); and sealing
   them once, when they are extracted, against writing them.
2. **LPP-scale read**: one file of 11,000 words x 1,536 values, float16 (a large state of
   Le Petit Prince), the same two reads.
3. **Converted model** (when ``smollm2-135m`` has been converted in this cache): the CRC-32 of every
   file of the folder (done on each load) against ``from_pretrained`` of the folder.
4. The checksum alone: CRC-32 (``zlib``) and blake2b (``hashlib``) over the LPP-scale file.

Each timing is the minimum of ``--repeats``, the variants interleaved (the machine may be shared).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import tempfile
import time
import zlib
from datetime import date
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

RUN_LENGTHS = [439, 438, 440, 440]  # the synthetic story's words per run
# values per word of each of the 13 states of one SmolLM2-135M block
STATE_DIMS = {"input_hidden_state": 576, "pre_attn_norm": 576, "per_head_q": 576, "per_head_q_rope": 576,
              "per_head_k": 192, "per_head_k_rope": 192, "per_head_v": 192, "per_head_context_vector": 576,
              "attn_output": 576, "post_attn_hidden_state": 576, "pre_ffn_norm": 576, "ffn_activated_state": 1536,
              "ffn_output": 576}
N_BLOCKS = 30
LPP_WORDS, LPP_DIM = 11_000, 1_536


def _best(functions: dict, repeats: int) -> dict:
    """Minimum wall time of each function, interleaved ``repeats`` times."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _write_plain(files: dict, arrays: dict) -> None:
    for key, path in files.items():
        np.save(path, arrays[key])


def _read_plain(files: dict, bounds: np.ndarray) -> None:
    """The read before checksums: ``np.load``, split into runs as float32."""
    for path in files.values():
        flat = np.load(path)
        [flat[lo:hi].astype(np.float32) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _read_checked(features) -> None:
    for key in features:
        features[key]


def feature_cache(folder: Path, repeats: int) -> None:
    from mtbench.features import CachedFeatures, _npy_size
    from mtbench.paths import seal_file

    rng = np.random.default_rng(0)
    n_words = sum(RUN_LENGTHS)
    bounds = np.cumsum([0, *RUN_LENGTHS])
    arrays, files = {}, {}
    for layer in range(1, N_BLOCKS + 1):
        for state, dim in STATE_DIMS.items():
            arrays[layer, state] = rng.standard_normal((n_words, dim), dtype=np.float32).astype(np.float16)
            files[layer, state] = folder / f"L{layer:03d}_{state}.npy"
    size = sum(a.nbytes for a in arrays.values())

    def seal_all():
        for path in files.values():
            seal_file(path, _npy_size(path))

    write = _best({"write": lambda: _write_plain(files, arrays)}, repeats)["write"]
    seal = _best({"seal": seal_all}, repeats)["seal"]  # (re-sealing truncates the old seal first)
    checked = CachedFeatures(files, bounds, extract=lambda key: None)
    times = _best({"plain": lambda: _read_plain(files, bounds), "checked": lambda: _read_checked(checked)}, repeats)
    print(f"main job's feature cache: {len(files)} files, {size / 2**20:,.0f} MiB float16 ({n_words:,} words)")
    print(f"  read as a fit reads them (float32, per run): unchecked {times['plain']:.3f} s, checked "
          f"{times['checked']:.3f} s: {times['checked'] / times['plain']:.2f}x "
          f"(+{times['checked'] - times['plain']:.3f} s for the 390 files)")
    print(f"  sealing them after the extraction: {seal:.3f} s, {seal / write:.2f}x the {write:.3f} s of writing "
          "them (np.save)")


def lpp_read(folder: Path, repeats: int) -> None:
    from mtbench.features import CachedFeatures, _npy_size
    from mtbench.paths import seal_file

    array = np.random.default_rng(1).standard_normal((LPP_WORDS, LPP_DIM), dtype=np.float32).astype(np.float16)
    path = folder / "L001_ffn_activated_state.npy"
    np.save(path, array)
    seal_file(path, _npy_size(path))
    bounds = np.array([0, 1_500, 3_000, 4_400, 5_800, 7_200, 8_500, 9_800, LPP_WORDS])  # 8 runs, ~LPP's
    checked = CachedFeatures({(1, "ffn_activated_state"): path}, bounds, extract=lambda key: None)
    times = _best({"plain": lambda: _read_plain({1: path}, bounds), "checked": lambda: _read_checked(checked)},
                  repeats)
    print(f"LPP-scale read: {LPP_WORDS:,} words x {LPP_DIM:,} float16 ({array.nbytes / 2**20:.1f} MiB)")
    print(f"  unchecked {times['plain'] * 1e3:.1f} ms, checked {times['checked'] * 1e3:.1f} ms: "
          f"{times['checked'] / times['plain']:.2f}x")
    data = path.read_bytes()
    sums = _best({"crc32": lambda: zlib.crc32(data),
                  "blake2b": lambda: hashlib.blake2b(data, digest_size=16).digest()}, repeats)
    print(f"  the checksum alone: CRC-32 {sums['crc32'] * 1e3:.1f} ms ({len(data) / sums['crc32'] / 1e9:.1f} GB/s), "
          f"blake2b {sums['blake2b'] * 1e3:.1f} ms ({len(data) / sums['blake2b'] / 1e9:.1f} GB/s)")


def converted_model(repeats: int) -> None:
    from mtbench.paths import cache_dir
    from mtbench_plugins.models.hf import gguf

    folder = cache_dir("models") / gguf._SMOLLM2_CONVERSION
    if not (folder / gguf.CONVERSION_STAMP).is_file():
        print("converted model: smollm2-135m is not converted in this cache (run it once); skipped")
        return
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    times = _best({"load": lambda: AutoModelForCausalLM.from_pretrained(folder),
                   "check": lambda: gguf._checksums(folder)}, repeats)
    print(f"converted model {folder.name}: {size / 2**20:,.0f} MiB")
    print(f"  CRC-32 of its files {times['check']:.3f} s, from_pretrained {times['load']:.3f} s: the check adds "
          f"{times['check'] / times['load']:.2f}x the load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, min of {args.repeats}")
    folder = Path(tempfile.mkdtemp(prefix="mtbench-checksums-"))
    try:
        feature_cache(folder, args.repeats)
        lpp_read(folder, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not args.skip_model:
        converted_model(args.repeats)


if __name__ == "__main__":
    main()
