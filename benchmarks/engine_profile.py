"""Where the encoding engine's time goes: seconds per step of :class:`mtbench.encoding.eigen.EigenRidge`.

    python benchmarks/engine_profile.py                          # d = 1,536, MindTransformer protocol
    python benchmarks/engine_profile.py --d 576 --protocol default --precision mixed
    python benchmarks/engine_profile.py --d 4096 --voxels 8000

Fits the LPP-scale benchmark data of ``benchmarks/encoding.py`` (9 runs, 2,816 scans, same
generator and seed) once, with every method of ``EigenRidge`` and the eigendecompositions and
Cholesky factorizations timed. Prints, per step, its calls, its total (inclusive) seconds and
its own seconds (exclusive of the timed steps it calls), largest first. The own seconds add
up to the fit's wall time, minus the untimed glue (printed as ``(untimed)``).

Use it before optimizing: the benchmark table says how fast a fit is, this says which
step to look at. Timing wrappers add a few microseconds per call (~1,500 calls at LPP scale).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# benchmarks/ is on sys.path when this runs as a script
from encoding import LPP_VOXELS, MT_ALPHAS, MTBENCH_ALPHAS, load_runs, make_data  # noqa: E402

# Bookkeeping too small to time (called thousands of times, microseconds each).
_UNTIMED = {"n_train", "use_kernel", "train_index", "blocks_of", "validations", "fit"}


class StepClock:
    """Inclusive and exclusive seconds of wrapped callables, nested calls accounted once."""

    def __init__(self) -> None:
        self.total: defaultdict[str, float] = defaultdict(float)
        self.own: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.outermost = 0.0  # seconds in calls made from untimed code (the sum of every own time)
        self._children: list[float] = []  # per open call: seconds spent in timed callees

    def _timed(self, name: str, step):
        self._children.append(0.0)
        start = time.perf_counter()
        try:
            return step()
        finally:
            elapsed = time.perf_counter() - start
            inner = self._children.pop()
            self.total[name] += elapsed
            self.own[name] += elapsed - inner
            self.calls[name] += 1
            if self._children:
                self._children[-1] += elapsed
            else:
                self.outermost += elapsed

    def wrap(self, name: str, fn):
        """``fn`` timed under ``name``; a generator function is timed per item it yields."""
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def timed_generator(*args, **kwargs):
                items = fn(*args, **kwargs)
                while True:
                    try:
                        yield self._timed(name, lambda: next(items))
                    except StopIteration:
                        return
            return timed_generator

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            return self._timed(name, lambda: fn(*args, **kwargs))
        return timed


@contextlib.contextmanager
def instrument(clock: StepClock):
    """Within the block, the engine's methods and torch's factorizations are timed by ``clock``."""
    import torch

    from mtbench.encoding.eigen import EigenRidge

    engine_classes = [cls for cls in EigenRidge.__mro__ if cls is not object]  # the engine and its path mixins
    originals = [(cls, name, member) for cls in engine_classes for name, member in vars(cls).items()
                 if inspect.isfunction(member) and not name.startswith("_") and name not in _UNTIMED]
    originals += [(torch.linalg, name, getattr(torch.linalg, name)) for name in ("eigh", "cholesky_ex")]
    try:
        for owner, name, member in originals:
            label = name if owner in engine_classes else f"torch.linalg.{name}"
            setattr(owner, name, clock.wrap(label, member))
        yield clock
    finally:
        for owner, name, member in originals:
            setattr(owner, name, member)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1536, help="feature width (default 1536)")
    parser.add_argument("--voxels", type=int, default=LPP_VOXELS, help=f"voxels (default {LPP_VOXELS})")
    parser.add_argument("--protocol", choices=["mindtransformer", "default"], default="mindtransformer",
                        help="mindtransformer: first inner run, 16 alphas, shared alpha; "
                             "default: nested LORO, 9 alphas, alpha per voxel")
    parser.add_argument("--precision", choices=["float32", "mixed"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from mtbench.encoding import effective_precision, fit_nested_loro

    torch.set_num_threads(args.threads)
    if args.protocol == "mindtransformer":
        alphas, kwargs = MT_ALPHAS, dict(inner="first", shared_alpha=True)
    else:
        alphas, kwargs = MTBENCH_ALPHAS, {}
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), [args.d], args.voxels)
        xs, ys = load_runs(Path(tmp), args.d, args.voxels)
    with instrument(clock):
        start = time.perf_counter()
        fit_nested_loro(xs, ys, alphas, precision=args.precision, **kwargs)
        wall = time.perf_counter() - start

    print(f"# EigenRidge steps: d = {args.d}, {args.voxels} voxels, {args.protocol} protocol, "
          f"precision {effective_precision(args.precision)}, {args.threads} threads: {wall:.2f} s")
    print(f"{'step':28s} {'calls':>6s} {'total s':>9s} {'own s':>8s} {'own %':>6s}")
    for name in sorted(clock.own, key=clock.own.get, reverse=True):
        print(f"{name:28s} {clock.calls[name]:6d} {clock.total[name]:9.2f} {clock.own[name]:8.2f} "
              f"{100 * clock.own[name] / wall:6.1f}")
    untimed = wall - clock.outermost
    print(f"{'(untimed)':28s} {'':6s} {'':9s} {untimed:8.2f} {100 * untimed / wall:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
