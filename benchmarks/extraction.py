"""Cost of capturing every state of every block, and peak memory of a streamed extraction.

    python benchmarks/extraction.py [--repeats 3] [--words 600] [--context 512] [--stride 256]
                                    [--lengths 1,3] [--skip-memory]

Model: the real SmolLM2-135M (``smollm2-135m``, 30 blocks), float32, CPU. Text: the story of
the embedded ``synthetic`` dataset (repeated when longer text is asked for).

1. Speed, in this process: tokens per second of
   - ``plain``: the model's base forward pass (transformers' sdpa attention, no hooks) over
     the same context windows the extraction uses;
   - ``capture``: :meth:`HFAdapter.extract_stream` of all 13 states of all 30 blocks (390
     feature sets: hooks, attention taps, pooling into words);
   - ``capture+cache``: :func:`mtbench.features.word_features` (the above, streamed into a
     fresh float16 disk cache).
   Tokens = tokens fed to the model (special prefix included), same for all three. Each is
   repeated ``--repeats`` times, interleaved, and the minimum time is kept (the machine may be
   shared); the process CPU time is reported too (steadier than wall time on a busy machine).
   Target (issue 3): capture <= 1.3x the plain forward.
2. Peak memory, one subprocess per measurement (``ru_maxrss``, min of ``--repeats``), for
   texts of ``--words`` x each of ``--lengths``: the RSS after loading the model (weights + libraries) and the
   peak during ``word_features`` of all 390 feature sets into a fresh disk cache. Target:
   the peak is independent of text length (weights + one window's activations + a fixed
   buffer); the word-level features go to disk as they are finished and are read back one
   (layer, state) at a time.
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
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _text(n_words: int):
    from mtbench.api import Stimulus, StimulusRun
    from mtbench_plugins.datasets import synthetic

    story = (Path(synthetic.__file__).parent / "data" / "story.txt").read_text().split()
    words = (story * (n_words // len(story) + 1))[:n_words]
    return Stimulus("en", 2.0, [StimulusRun(words, [0.0] * n_words, [0.0] * n_words, 10)])


def _adapter(context: int, stride: int):
    from mtbench.registry import load_model

    return load_model("smollm2-135m", context=context, stride=stride)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def speed(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from mtbench.features import word_features
    from mtbench_plugins.models.hf.gguf import convert_smollm2
    from mtbench_plugins.models.hf.words import windows

    if args.threads:
        torch.set_num_threads(args.threads)
    adapter = _adapter(args.context, args.stride)
    stimulus = _text(args.words)
    states = adapter.available_states()
    layers = list(range(1, adapter.n_layers + 1))
    plain_model = AutoModelForCausalLM.from_pretrained(convert_smollm2()[0], dtype=torch.float32).eval()
    plain_base = plain_model.model
    assert plain_model.config._attn_implementation == "sdpa"
    text, _ = stimulus.run_text(0)
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = list(adapter.prefix_ids)
    batches = [torch.tensor(prefix + ids[start:end])[None] for start, _, end in windows(len(ids), args.context,
                                                                                        args.stride)]
    n_fed = sum(b.shape[1] for b in batches)
    adapter._state_dims()

    def plain():
        with torch.inference_mode():
            for batch in batches:
                plain_base(input_ids=batch, use_cache=False)

    def capture():
        for _ in adapter.extract_stream(stimulus, states, layers):
            pass

    def capture_and_cache():
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MTBENCH_CACHE"] = tmp
            word_features(adapter, stimulus, states, layers)

    plain()  # warm-up (allocator, kernels)
    times = {"plain": [], "capture": [], "capture+cache": []}
    cpu = {name: [] for name in times}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("capture", capture), ("capture+cache", capture_and_cache)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    best = {name: min(t) for name, t in times.items()}
    best_cpu = {name: min(t) for name, t in cpu.items()}
    return {"tokens_fed": n_fed, "windows": len(batches), "words": args.words,
            "feature_sets": len(states) * len(layers), "seconds": times, "cpu_seconds": cpu,
            "tokens_per_s": {name: n_fed / t for name, t in best.items()},
            "ratio_capture": best["capture"] / best["plain"],
            "ratio_capture_cache": best["capture+cache"] / best["plain"],
            "cpu_ratio_capture": best_cpu["capture"] / best_cpu["plain"],
            "cpu_ratio_capture_cache": best_cpu["capture+cache"] / best_cpu["plain"],
            "torch_threads": torch.get_num_threads()}


def memory_child(args) -> dict:
    """One measurement (run in its own process): RSS after load, peak during the extraction."""
    from mtbench.features import word_features

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    adapter = _adapter(args.context, args.stride)
    stimulus = _text(args.words)
    adapter._state_dims()
    loaded = _rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MTBENCH_CACHE"] = tmp
        start = time.perf_counter()
        feats = word_features(adapter, stimulus, adapter.available_states(), list(range(1, adapter.n_layers + 1)))
        seconds = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in Path(tmp).rglob("*.npy")) / 2**20
        n_keys = len(feats)
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters()) / 2**20
    return {"words": args.words, "rss_after_load_mib": loaded, "peak_before_mib": peak_before,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "weights_mib": weights,
            "features_on_disk_mib": on_disk, "feature_sets": n_keys, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--words", type=int, default=600)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--lengths", default="1,3", help="text lengths for the memory test, in multiples of --words")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--child", choices=["memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "memory":
        print(json.dumps(memory_child(args)))
        return 0
    report = {}
    if not args.skip_speed:
        s = report["speed"] = speed(args)
        print(f"speed: {s['feature_sets']} feature sets, {s['words']} words, {s['windows']} windows of "
              f"<= {args.context} tokens (stride {args.stride}), {s['tokens_fed']} tokens fed, "
              f"min of {args.repeats}, {s['torch_threads']} torch threads")
        for name, rate in s["tokens_per_s"].items():
            print(f"  {name:<14} {rate:8.1f} tokens/s   wall: {', '.join(f'{t:.2f}' for t in s['seconds'][name])} s"
                  f"   cpu: {', '.join(f'{t:.2f}' for t in s['cpu_seconds'][name])} s")
        print(f"  capture / plain = {s['ratio_capture']:.2f}x wall, {s['cpu_ratio_capture']:.2f}x cpu "
              "(target <= 1.3x); "
              f"with the disk cache {s['ratio_capture_cache']:.2f}x wall, {s['cpu_ratio_capture_cache']:.2f}x cpu")
    if not args.skip_memory:
        rows = report["memory"] = []
        for factor in (int(f) for f in args.lengths.split(",")):
            command = [sys.executable, __file__, "--child", "memory", "--words", str(args.words * factor),
                       "--context", str(args.context), "--stride", str(args.stride), "--threads", str(args.threads)]
            tries = []
            for _ in range(args.repeats):
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    print(result.stderr[-2000:])
                    return 1
                tries.append(json.loads(result.stdout.strip().splitlines()[-1]))
            row = min(tries, key=lambda t: t["peak_mib"])
            row["peak_mib_all"] = [t["peak_mib"] for t in tries]
            rows.append(row)
        print(f"peak memory (own process per measurement, min of {args.repeats}; all 390 feature sets streamed to a "
              "fresh float16 cache)")
        for row in rows:
            print(f"  {row['words']:6d} words: RSS after load {row['rss_after_load_mib']:7.0f} MiB "
                  f"(weights {row['weights_mib']:.0f}), peak {row['peak_mib']:7.0f} MiB, "
                  f"peak - load {row['peak_mib'] - row['rss_after_load_mib']:6.0f} MiB; "
                  f"features on disk {row['features_on_disk_mib']:7.0f} MiB, {row['seconds']:.0f} s; "
                  f"all peaks {', '.join(f'{p:.0f}' for p in row['peak_mib_all'])} MiB")
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
