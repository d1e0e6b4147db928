"""Encoding-engine speed and memory at Le Petit Prince scale (issue 5), four ways on the same data.

    python benchmarks/encoding.py                    # full: d in 576,1536,4096,14336, 25,870 voxels
    python benchmarks/encoding.py --quick            # shared machine: 4,000 voxels, d in 576,1536
    python benchmarks/encoding.py --d 576 --voxels 8000 --methods mtbench,floor
    python benchmarks/encoding.py --backend torch_cuda --methods mtbench,mtbench-mt   # on a GPU

Data: 9 runs with the real English LPP scan counts (282, 298, 340, 303, 265, 343, 325, 292,
368 = 2,816 scans), scan-level features of width ``d`` and BOLD of ``--voxels`` voxels, both
driven by a shared smooth latent signal plus noise and z-scored per run (float32). The data
are generated once, written to a temporary folder, and every measurement runs in its own
subprocess that loads them, so that peak memory (``ru_maxrss``) is that of the method alone:
``mem/data`` = (peak RSS - RSS after imports) / bytes of X and Y.

Methods (one row each, per d):

- ``mtbench`` : :func:`mtbench.encoding.fit_nested_loro` with mtbench's defaults: nested
  leave-one-run-out, 9 alphas logspace(0, 8), one alpha per voxel, all folds, all voxels,
  and (unless ``--permutations 0``) what ``mtbench run`` adds to every fit: 1,000 null
  columns fitted alongside (the significance calibration) and the circular-shift p-values
  per voxel block (their time is reported apart; ``seconds`` is the fit).
- ``mtbench-mt`` : the same function under the MindTransformer protocol (inner validation on
  the first remaining run, 16 alphas logspace(2, 7), one shared alpha): the same work as
  ``reference``.
- ``reference`` : the reference protocol implemented the way the reference does it:
  scikit-learn ``Ridge`` refit for every alpha, a per-voxel ``np.corrcoef`` loop. Timed on
  one outer fold at two voxel subsets (500 and 4,000 by default), fitted linearly in the
  number of voxels and multiplied by 9 folds (marked ``~``, extrapolated). The subsets are
  far apart because the slope comes from their difference: on 250 and 1,000 voxels, two runs
  whose timings differed by 0.2 s put the d = 1,536 reference at ~400 s and ~448 s.
- ``himalaya`` : himalaya used directly with default settings (torch backend, run-wise inner
  splits, alphas as mtbench): ``RidgeCV`` when d < n_train, ``KernelRidgeCV`` otherwise, once
  per outer fold; ``--himalaya-folds k`` times k folds and multiplies by 9/k (``~``).
- ``floor`` : the dense linear-algebra floor of mtbench's algorithm on this machine: the
  floating-point operations of the products no exact nested per-alpha validation can skip
  (Gram matrices, projections of the targets on each training set's eigenbasis, per-alpha
  validation products, test predictions) at the measured float32 GFLOP/s, plus the measured
  time of the 45 eigendecompositions (36 inner pair training sets + 9 outer ones).

Alignment (words -> scans) is timed separately (``--alignment``): mtbench's one operator
product per run against the reference's per-feature HRF loop (nilearn ``compute_regressor``
per feature and run, timed on 8 features and extrapolated to d).

``--float64`` compares mtbench's float32 (and mixed) scores with a float64 implementation of
the same nested protocol on a voxel subset (max |delta r|, share of changed alpha choices).

``--backend torch_cuda`` runs mtbench's fits (``mtbench``, ``mtbench-mt``, and the mtbench side
of ``--float64``) on the GPU; the other methods are CPU implementations and are refused with it.
Only the fit is timed: each worker first fits 64 voxels once, so that CUDA's start-up (context,
cuBLAS/cuSOLVER handles, kernel loading) is not counted; ``gpu_peak_mb`` is the GPU memory peak
of the timed fit (``torch.cuda.max_memory_allocated``).

Targets (issue 5): >= 20x faster than ``reference``; faster than ``himalaya``; mem/data <= 3.
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

import numpy as np  # noqa: E402

LPP_SCANS = (282, 298, 340, 303, 265, 343, 325, 292, 368)
LPP_VOXELS = 25_870
TR = 2.0
MTBENCH_ALPHAS = np.logspace(0, 8, 9)
MT_ALPHAS = np.logspace(2, 7, 16)


# --------------------------------------------------------------------------- data
def make_data(folder: Path, dims: list[int], n_voxels: int, seed: int = 0) -> None:
    """Write X_<d>.npy (n_scans, d) per width and Y.npy (n_scans, n_voxels), z-scored per run."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n_scans = sum(LPP_SCANS)
    edges = np.cumsum((0,) + LPP_SCANS)
    latent = lfilter([1.0], [1.0, -0.8], rng.standard_normal((n_scans, 16)), axis=0).astype(np.float32)

    def zscore_runs(a):
        for a0, a1 in zip(edges[:-1], edges[1:]):
            a[a0:a1] -= a[a0:a1].mean(0)
            a[a0:a1] /= a[a0:a1].std(0) + 1e-8
        return a

    y = rng.standard_normal((n_scans, n_voxels), dtype=np.float32)
    mix = rng.standard_normal((16, n_voxels)).astype(np.float32) * 0.15
    mix[:, n_voxels // 3:] = 0.0  # signal in a third of the voxels
    y += latent @ mix
    np.save(folder / "Y.npy", zscore_runs(y))
    del y
    for d in dims:
        spectrum = (1.0 / np.sqrt(1.0 + np.arange(d) / 20.0)).astype(np.float32)  # anisotropic, like LLM states
        x = rng.standard_normal((n_scans, d), dtype=np.float32) * spectrum
        x += latent @ rng.standard_normal((16, d)).astype(np.float32)
        np.save(folder / f"X_{d}.npy", zscore_runs(x))


def load_runs(folder: Path, d: int, n_voxels: int | None = None):
    x = np.load(folder / f"X_{d}.npy")
    if n_voxels and n_voxels < LPP_VOXELS:
        y = np.ascontiguousarray(np.load(folder / "Y.npy", mmap_mode="r")[:, :n_voxels])
    else:  # read straight into memory: a memory map would count the file's pages in the peak RSS twice
        y = np.load(folder / "Y.npy")
    edges = np.cumsum((0,) + LPP_SCANS)
    xs = [x[a:b] for a, b in zip(edges[:-1], edges[1:])]
    ys = [y[a:b] for a, b in zip(edges[:-1], edges[1:])]
    return xs, ys


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- workers
def work_mtbench(xs, ys, args, protocol: str) -> dict:
    from mtbench.encoding import fit_nested_loro

    kwargs = dict(precision=args.precision, backend=args.backend)
    if protocol == "mindtransformer":
        kwargs.update(inner="first", shared_alpha=True, precision="float32")
        alphas = MT_ALPHAS
    else:
        alphas = MTBENCH_ALPHAS
    gpu = args.backend == "torch_cuda"
    if gpu:  # CUDA start-up outside the timing: one small fit of the same shape of features
        import torch

        fit_nested_loro(xs, [np.ascontiguousarray(y[:, :64]) for y in ys], alphas, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    significance = bool(args.permutations) and protocol == "mtbench"
    spent = [0.0]
    test = None
    if significance:  # as `mtbench run` fits: 1,000 null columns ride along, p-values per voxel block
        from mtbench.settings import RunSettings
        from mtbench_plugins.analyses.mode1.fit import fit_targets as _fit_targets
        from mtbench.significance import ShiftTest

        targets, n_calibration = _fit_targets(ys, RunSettings(model="-", dataset="-", states=[],
                                                              permutations=args.permutations))
        ys.clear()  # as in the runner, only the targets buffer stays (mem/data counts the BOLD once)
        ys = targets
        test = ShiftTest(ys, n_calibration, args.permutations)

    def pvalues(c0, c1, preds):  # the predictions are never all held
        tick = time.perf_counter()
        test(c0, c1, preds)
        spent[0] += time.perf_counter() - tick

    start = time.perf_counter()
    result = fit_nested_loro(xs, ys, alphas, on_predictions=pvalues if significance else None, **kwargs)
    if significance:
        result.test = result.test[n_calibration:]
    seconds = time.perf_counter() - start - spent[0]  # results are numpy arrays: the GPU has finished
    out = {"seconds": seconds, "mean_r": float(result.test.mean())}
    if gpu:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if significance:
        out["significance_seconds"] = spent[0]
    return out


def _corrcoef_loop(y, pred):
    return np.array([np.corrcoef(y[:, v], pred[:, v])[0, 1] for v in range(y.shape[1])])


def reference_fold(xs, ys, o: int) -> None:
    """One outer fold of the reference protocol, written the way the reference writes it."""
    from sklearn.linear_model import Ridge

    remaining = [r for r in range(len(xs)) if r != o]
    val_run, inner_train = remaining[0], remaining[1:]
    x_in, y_in = np.concatenate([xs[r] for r in inner_train]), np.concatenate([ys[r] for r in inner_train])
    mean_val = []
    for alpha in MT_ALPHAS:
        pred = Ridge(alpha=alpha, fit_intercept=False).fit(x_in, y_in).predict(xs[val_run])
        mean_val.append(np.nanmean(_corrcoef_loop(ys[val_run], pred)))
    best = MT_ALPHAS[int(np.argmax(mean_val))]
    x_tr, y_tr = np.concatenate([xs[r] for r in remaining]), np.concatenate([ys[r] for r in remaining])
    pred = Ridge(alpha=best, fit_intercept=False).fit(x_tr, y_tr).predict(xs[o])
    _corrcoef_loop(ys[o], pred)


def work_reference(xs, ys, args) -> dict:
    sizes = sorted({min(s, ys[0].shape[1]) for s in args.ref_voxels})
    reference_fold(xs, [np.ascontiguousarray(y[:, :20]) for y in ys], 0)  # warm-up (imports, BLAS threads)
    times = []
    for v in sizes:
        sub = [np.ascontiguousarray(y[:, :v]) for y in ys]
        start = time.perf_counter()
        reference_fold(xs, sub, 0)
        times.append(time.perf_counter() - start)
    slope = (times[-1] - times[0]) / (sizes[-1] - sizes[0]) if len(sizes) > 1 else 0.0
    if slope <= 0:  # timing noise on a busy machine: fall back to proportional scaling of the largest subset
        slope, intercept = times[-1] / sizes[-1], 0.0
    else:
        intercept = max(0.0, times[0] - slope * sizes[0])
    per_fold = intercept + slope * args.voxels
    return {"seconds": per_fold * len(xs), "extrapolated": True,
            "note": f"1 fold at {sizes} voxels: {[round(t, 2) for t in times]} s"}


def work_himalaya(xs, ys, args) -> dict:
    import torch
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    backend = set_backend("torch", on_error="raise")
    n_runs = len(xs)
    folds = list(range(min(args.himalaya_folds, n_runs)))
    start = time.perf_counter()
    kind = ""
    for o in folds:
        train = [r for r in range(n_runs) if r != o]
        sizes = [xs[r].shape[0] for r in train]
        edges = np.concatenate([[0], np.cumsum(sizes)])
        everything = np.arange(edges[-1])
        splits = [(np.setdiff1d(everything, np.arange(edges[k], edges[k + 1])), np.arange(edges[k], edges[k + 1]))
                  for k in range(len(train))]
        x_tr, y_tr = np.concatenate([xs[r] for r in train]), np.concatenate([ys[r] for r in train])
        if xs[0].shape[1] < x_tr.shape[0]:
            kind, model = "RidgeCV", RidgeCV(alphas=MTBENCH_ALPHAS, cv=splits)
        else:
            kind, model = "KernelRidgeCV", KernelRidgeCV(alphas=MTBENCH_ALPHAS, cv=splits)
        model.fit(x_tr, y_tr)
        backend.to_numpy(model.predict(xs[o]))
        del model
    seconds = (time.perf_counter() - start) * n_runs / len(folds)
    del torch
    return {"seconds": seconds, "extrapolated": len(folds) < n_runs, "note": f"{kind}, {len(folds)} fold(s) timed"}


def work_floor(xs, ys, args) -> dict:
    import torch

    from mtbench.encoding.folds import inner_pairs as _inner_pairs
    from mtbench.encoding.nested import validation_flops as _work

    sizes = [x.shape[0] for x in xs]
    total, d, v = sum(sizes), xs[0].shape[1], args.voxels
    # GFLOP/s of a float32 product of the size that dominates
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 4096)
    torch.mm(a, b)
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    gflops = reps * 2 * 2048 * 2048 * 4096 / (time.perf_counter() - start) / 1e9
    train_sets = [(i, j) for i, j in _inner_pairs(len(xs), "loro")] + [(o, None) for o in range(len(xs))]
    flops = _work(xs, ys, len(MTBENCH_ALPHAS), "loro")  # per-alpha validation products
    eig_seconds = 0.0
    timed: dict[int, float] = {}
    for i, j in train_sets:
        n_train = total - sizes[i] - (sizes[j] if j is not None else 0)
        m = min(n_train, d)
        flops += 2.0 * m * n_train * v  # projections of the targets on the eigenbasis
        flops += 2.0 * n_train * m * min(n_train, d)  # the Gram matrix
        if m not in timed:
            g = torch.randn(m, m + 16)
            g = g @ g.T
            dtype = torch.float64 if m <= 1024 else torch.float32
            g = g.to(dtype)
            start = time.perf_counter()
            torch.linalg.eigh(g)
            timed[m] = time.perf_counter() - start
        eig_seconds += timed[m]
    flops += sum(2.0 * s * min(total - s, d) * v for s in sizes)  # test predictions
    seconds = flops / (gflops * 1e9) + eig_seconds
    return {"seconds": seconds, "gflops": gflops, "gflop": flops / 1e9, "eigh_seconds": eig_seconds}


def work_alignment(args, d: int) -> dict:
    """Words -> scans for all 9 runs: mtbench's operators vs the per-feature nilearn loop."""
    from nilearn.glm.first_level.hemodynamic_models import compute_regressor

    from mtbench.alignment import align_runs, frame_times, hrf_operator
    from mtbench.api import StimulusRun

    rng = np.random.default_rng(1)
    runs, feats = [], []
    for n_scans in LPP_SCANS:
        n_words = int(2.7 * n_scans * TR)  # LPP English: ~2.7 words per second
        onsets = np.sort(rng.uniform(0, (n_scans - 5) * TR, n_words))
        runs.append(StimulusRun(words=["w"] * n_words, onsets=onsets, offsets=onsets + 0.3, n_scans=n_scans))
        feats.append(rng.standard_normal((n_words, d)).astype(np.float32))
    start = time.perf_counter()
    align_runs(feats, [hrf_operator(run, TR) for run in runs])
    ours = time.perf_counter() - start
    k = 8
    start = time.perf_counter()
    for run, f in zip(runs, feats):
        times = frame_times(run.n_scans, TR)
        for j in range(k):
            compute_regressor(np.vstack([run.onsets, run.offsets - run.onsets, f[:, j]]), "glover", times)
    reference = (time.perf_counter() - start) * d / k
    return {"seconds": ours, "reference_seconds": reference}


def float64_nested(xs, ys, alphas):
    """Nested LORO (per-voxel alpha) in float64 numpy, eigendecomposition per training set."""
    n_runs = len(xs)
    test_r = np.zeros((n_runs, ys[0].shape[1]))
    best_alpha = np.zeros((n_runs, ys[0].shape[1]))

    def fit_predict(train, targets):
        x = np.concatenate([xs[r] for r in train]).astype(np.float64)
        y = np.concatenate([ys[r] for r in train]).astype(np.float64)
        s, u = np.linalg.eigh(x.T @ x)
        return u, s, u.T @ (x.T @ y)

    def r(y, p):
        y = y - y.mean(0)
        p = p - p.mean(0)
        return (y * p).sum(0) / np.sqrt((y * y).sum(0) * (p * p).sum(0))

    for o in range(n_runs):
        train = [t for t in range(n_runs) if t != o]
        val = np.zeros((len(alphas), ys[0].shape[1]))
        for i in train:
            u, s, z = fit_predict([t for t in train if t != i], None)
            b = xs[i].astype(np.float64) @ u
            for k, a in enumerate(alphas):
                val[k] += r(ys[i], b @ (z / (s + a)[:, None]))
        best = val.argmax(0)
        u, s, z = fit_predict(train, None)
        b = xs[o].astype(np.float64) @ u
        pred = np.zeros_like(ys[o], dtype=np.float64)
        for k, a in enumerate(alphas):
            sel = best == k
            pred[:, sel] = b @ (z[:, sel] / (s + a)[:, None])
        test_r[o] = r(ys[o], pred)
        best_alpha[o] = np.asarray(alphas)[best]
    return test_r, best_alpha


def work_float64(xs, ys, args) -> dict:
    from mtbench.encoding import fit_nested_loro

    v = min(args.float64_voxels, ys[0].shape[1])
    ys = [np.ascontiguousarray(y[:, :v]) for y in ys]
    ref_r, ref_alpha = float64_nested(xs, ys, MTBENCH_ALPHAS)
    out = {}
    for precision in ("float32", "mixed"):
        res = fit_nested_loro(xs, ys, MTBENCH_ALPHAS, precision=precision, backend=args.backend)
        delta = np.abs(res.test - ref_r.mean(0))
        out[precision] = {"max_abs_delta_r": float(delta.max()), "p99_abs_delta_r": float(np.quantile(delta, 0.99)),
                          "mean_delta_r": float((res.test - ref_r.mean(0)).mean()), "voxels": v,
                          # share of voxels whose alpha changed in at least one outer fold
                          "alpha_changed_share": float(np.mean(~np.isclose(res.alpha, np.exp(np.log(ref_alpha).mean(0)),
                                                                            rtol=1e-3)))}
    return out


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    base = rss_mb()
    if args.worker == "alignment":
        out = work_alignment(args, args.d[0])
    else:
        n_vox = args.float64_voxels if args.worker == "float64" else (
            max(args.ref_voxels) if args.worker == "reference" else args.voxels)
        xs, ys = load_runs(Path(args.data), args.d[0], min(n_vox, args.voxels))
        data_mb = (sum(x.nbytes for x in xs) + sum(y.nbytes for y in ys)) / 2**20
        if args.worker in ("mtbench", "mtbench-mt"):
            out = work_mtbench(xs, ys, args, "mtbench" if args.worker == "mtbench" else "mindtransformer")
        elif args.worker == "reference":
            out = work_reference(xs, ys, args)
        elif args.worker == "himalaya":
            out = work_himalaya(xs, ys, args)
        elif args.worker == "floor":
            out = work_floor(xs, ys, args)
        else:
            out = work_float64(xs, ys, args)
        out["data_mb"] = data_mb
    out["peak_mb"] = peak_mb() - base
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------- driver
def run_worker(method: str, d: int, args, folder: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--d", str(d), "--data", str(folder),
           "--voxels", str(args.voxels), "--threads", str(args.threads), "--precision", args.precision,
           "--backend", args.backend,
           "--ref-voxels", ",".join(map(str, args.ref_voxels)), "--himalaya-folds", str(args.himalaya_folds),
           "--float64-voxels", str(args.float64_voxels), "--permutations", str(args.permutations)]
    # numpy/scikit-learn (OpenBLAS) get the same threads as torch where they do the work (reference, float64)
    blas = str(args.threads) if method in ("reference", "float64") else "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS=blas))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", default=None, help="comma list of feature widths (default 576,1536,4096,14336)")
    parser.add_argument("--voxels", type=int, default=None, help=f"voxels (default {LPP_VOXELS})")
    parser.add_argument("--quick", action="store_true", help="4,000 voxels, d 576,1536, himalaya on 1 fold")
    parser.add_argument("--methods", default="mtbench,mtbench-mt,reference,himalaya,floor")
    parser.add_argument("--alignment", action="store_true", help="also time words -> scans")
    parser.add_argument("--float64", action="store_true", help="also compare float32/mixed scores with float64")
    parser.add_argument("--float64-voxels", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed"])
    parser.add_argument("--backend", default="torch", choices=["torch", "torch_cuda"],
                        help="torch_cuda: mtbench's fits on the GPU (methods mtbench, mtbench-mt; --float64)")
    parser.add_argument("--ref-voxels", default="500,4000", help="voxel subsets the reference is timed on")
    parser.add_argument("--himalaya-folds", type=int, default=None, help="outer folds timed (default 9; quick 1)")
    parser.add_argument("--permutations", type=int, default=1000, help="also time significance (0: skip)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.d = [int(v) for v in (args.d or ("576,1536" if args.quick else "576,1536,4096,14336")).split(",")]
    args.voxels = args.voxels or (4000 if args.quick else LPP_VOXELS)
    args.himalaya_folds = args.himalaya_folds or (1 if args.quick else 9)
    args.ref_voxels = [int(v) for v in str(args.ref_voxels).split(",")]
    if args.worker:
        worker(args)
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cpu_only = [m for m in methods if m not in ("mtbench", "mtbench-mt")] + (["--alignment"] if args.alignment else [])
    if args.backend == "torch_cuda" and cpu_only:
        parser.error(f"--backend torch_cuda times mtbench's fits only; drop {', '.join(cpu_only)}")
    print(f"# LPP-scale encoding benchmark: 9 runs, {sum(LPP_SCANS)} scans, {args.voxels} voxels, "
          f"{args.threads} threads, {os.cpu_count()} CPUs, precision {args.precision}"
          + (f", backend {args.backend}" if args.backend != "torch" else ""))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, args.d, args.voxels)
        for d in args.d:
            results = {m: run_worker(m, d, args, folder) for m in methods}
            if args.alignment:
                results["alignment"] = run_worker("alignment", d, args, folder)
            if args.float64:
                results["float64"] = run_worker("float64", d, args, folder)
            rows.append((d, results))
            print_rows(d, results, args)
            sys.stdout.flush()
    print(json.dumps({str(d): r for d, r in rows}))
    return 0


def print_rows(d: int, results: dict, args) -> None:
    print(f"\n## d = {d}")
    print("| method | seconds | vs mtbench (same protocol) | peak MB | mem/data | note |")
    print("| --- | --- | --- | --- | --- | --- |")
    same = {"mtbench": "mtbench", "himalaya": "mtbench", "floor": "mtbench", "mtbench-mt": "mtbench-mt",
            "reference": "mtbench-mt"}
    for method, res in results.items():
        if method in ("alignment", "float64"):
            continue
        if "error" in res:
            print(f"| {method} | failed | | | | {res['error']} |")
            continue
        base = results.get(same.get(method, ""), {}).get("seconds")
        ratio = f"{res['seconds'] / base:.2f}x" if base else ""
        mark = "~" if res.get("extrapolated") else ""
        note = res.get("note", "")
        if method == "floor":
            note = f"{res['gflop']:.0f} GFLOP at {res['gflops']:.0f} GFLOP/s + eigh {res['eigh_seconds']:.1f} s"
        if "gpu_peak_mb" in res:
            note += f"GPU peak {res['gpu_peak_mb']:.0f} MB ({res['gpu_peak_mb'] / res['data_mb']:.2f}x data) "
        if "significance_seconds" in res:
            note += f"significance ({args.permutations} circular shifts): {res['significance_seconds']:.2f} s"
        mem = f"{res['peak_mb'] / res['data_mb']:.2f}" if method != "floor" else ""
        print(f"| {method} | {mark}{res['seconds']:.1f} | {ratio} | {res['peak_mb']:.0f} | {mem} | {note} |")
    if "alignment" in results and "error" not in results["alignment"]:
        a = results["alignment"]
        print(f"| alignment (words->scans, 9 runs) | {a['seconds']:.2f} | reference per-feature loop "
              f"~{a['reference_seconds']:.1f} s ({a['reference_seconds'] / a['seconds']:.0f}x) | | | |")
    if "float64" in results:
        print(f"float32/mixed vs float64 scores: {json.dumps(results['float64'])}")


if __name__ == "__main__":
    sys.exit(main())
