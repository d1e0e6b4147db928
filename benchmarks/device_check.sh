#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, from the repository root, with .whl carried (docs/gpu.md):
#   bash benchmarks/device_check.sh
# .whl/ comes from benchmarks/device_prepare.sh, run beforehand on a machine that reaches PyPI.
#
#   1. installs the carried wheels into $SITE (/tmp/site) and puts it first on PYTHONPATH: the image's
#      own environment is never changed;
#   2. installs mtbench from the work tree as links in $SITE (mtbench, and plugins/ as mtbench_plugins)
#      with generated distribution metadata (its entry points, read from pyproject.toml), so the
#      built-in plugins load as in an installed mtbench;
#   3. prints nvidia-smi and the versions, checks that every built-in plugin loads (setup.log);
#   4. runs the GPU tests: pytest -m gpu tests/test_gpu.py (gpu_tests.log, gpu_tests.xml);
#   5. times mtbench's fits on the GPU at Le Petit Prince scale, float32 and mixed, and compares the
#      GPU scores with float64 at d = 576 (benchmarks/encoding.py --backend torch_cuda; encoding_*.log).
# Everything goes to $OUT (a new folder under /tmp when unset); summary.txt holds the verdict. About
# 5 minutes on an H200 (estimated, never run there yet). Exit status: 0 when every step passed, 1 when
# a test or benchmark failed, 2 when the setup failed (nothing else ran).
set -uo pipefail  # no -e: after the setup every step runs and is reported, the verdict comes last
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network there: fail at once instead of retrying
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$(mktemp -d /tmp/device-out.XXXXXX)}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}  # the carried wheels (another folder only to simulate the install elsewhere)
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ -x /opt/torch/.venv/bin/python3 ]] && PYTHON=/opt/torch/.venv/bin/python3  # the image's torch environment
fi
mkdir -p "$OUT"
MTBENCH_CACHE=$(mktemp -d)
export MTBENCH_CACHE
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
fail_setup() { note "SETUP FAILED: $*"; exit 2; }

# ---------------------------------------------------------------------------- 1. wheels
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
(( ${#wheels[@]} )) || fail_setup "no wheels in $WHEELS/: run benchmarks/device_prepare.sh (needs PyPI), carry .whl"
rm -rf "$SITE"
mkdir -p "$SITE"
if "$PYTHON" -m pip --version > /dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${wheels[@]}" 2>&1 | tee "$OUT/install.log" || fail_setup "pip install of $WHEELS failed (install.log)"
else  # no pip there: a wheel of Python files (and prebuilt libraries) installs by unpacking it
  "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
    "$SITE" "${wheels[@]}" || fail_setup "unpacking $WHEELS failed"
fi

# ---------------------------------------------------------------------------- 2. mtbench from the work tree
# Entry points are how mtbench finds its plugins (mtbench/registry.py): write mtbench's dist-info
# from pyproject.toml, and link its packages as pyproject's package-dir maps them (plugins/ is
# mtbench_plugins, never a bare `plugins`: the repository root stays off the path).
"$PYTHON" - "$REPO" "$SITE" <<'EOF' || fail_setup "could not link mtbench into $SITE"
import pathlib, sys, tomllib

root, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
config = tomllib.loads((root / "pyproject.toml").read_text())
project = config["project"]
info = site / f"{project['name']}-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
lines = []
for group, points in groups.items():
    lines += [f"[{group}]", *(f"{name} = {value}" for name, value in points.items()), ""]
(info / "entry_points.txt").write_text("\n".join(lines))
for name, folder in config["tool"]["setuptools"]["package-dir"].items():
    (site / name).symlink_to(root / folder, target_is_directory=True)
EOF
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------------------- 3. machine, versions, plugins
{
  echo "# $(date -u +%FT%TZ) $(hostname) $(nproc) CPUs; python $PYTHON"
  nvidia-smi || echo "nvidia-smi: not available"
} 2>&1 | tee "$OUT/setup.log"
"$PYTHON" - "$SITE" <<'EOF' 2>&1 | tee -a "$OUT/setup.log" || fail_setup "mtbench does not load its plugins (setup.log)"
import sys, tomllib
from pathlib import Path

site = sys.argv[1]
import torch, transformers, huggingface_hub, himalaya, nilearn, nibabel  # noqa: E401
for module in (torch, transformers, huggingface_hub, himalaya, nilearn, nibabel):
    carried = "carried" if module.__file__.startswith(site) else "image"
    print(f"{module.__name__:16s} {module.__version__:14s} {carried:8s} {Path(module.__file__).parent}")
cuda = torch.cuda.is_available()
print(f"torch CUDA {torch.version.cuda}, available {cuda}" + (
    f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, capability "
    f"{torch.cuda.get_device_capability(0)}, native bfloat16 "
    f"{torch.cuda.is_bf16_supported(including_emulation=False)}" if cuda else ""))
from mtbench.encoding import effective_precision
from mtbench.registry import get_registry

if cuda:
    print("precision mixed on cuda runs as:", effective_precision("mixed", "cuda"))
registry = get_registry()
expected = set(tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]["mtbench"])
for info in registry.plugins:
    print(f"plugin {info.name:16s} {info.distribution} {info.version}: {info.error or 'ok'}")
broken = [p.name for p in registry.plugins if p.error]
missing = expected - {p.name for p in registry.plugins}
if broken or missing:
    sys.exit(f"plugins broken: {broken}, not found: {sorted(missing)}")
print("models:", ", ".join(registry.names("model")), "| states:", len(registry.names("state")))
EOF

failed=()
# ---------------------------------------------------------------------------- 4. GPU tests
note "setup: $SECONDS s"
start=$SECONDS
timeout 200 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --durations=8 \
  --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=$?
counts=$(grep -E '(passed|failed|error)' "$OUT/gpu_tests.log" | tail -1)
note "gpu tests (exit $tests_rc, $((SECONDS - start)) s): $counts"
(( tests_rc == 0 )) || failed+=("gpu tests")

# ---------------------------------------------------------------------------- 5. LPP-scale timings on the GPU
bench() {  # bench NAME SECONDS ARGS...: one benchmarks/encoding.py invocation, its log in $OUT
  local name=$1 limit=$2 begin=$SECONDS
  shift 2
  timeout "$limit" "$PYTHON" benchmarks/encoding.py --backend torch_cuda --permutations 0 --threads "$(nproc)" "$@" \
    2>&1 | tee "$OUT/encoding_$name.log"
  local rc=$?
  if (( rc != 0 )) || grep -q "\"error\"" "$OUT/encoding_$name.log"; then  # a worker failed
    failed+=("benchmark $name")
    note "benchmark $name: FAILED (exit $rc, $((SECONDS - begin)) s, encoding_$name.log)"
  else
    note "benchmark $name: ok ($((SECONDS - begin)) s)"
    grep -E "^## d|^\| mtbench|^float32/mixed" "$OUT/encoding_$name.log" >> "$SUMMARY"
  fi
}
bench float32 150 --precision float32 --methods mtbench,mtbench-mt
bench mixed 80 --precision mixed --methods mtbench --d 1536,4096,14336
bench mixed-576-vs-float64 120 --precision mixed --methods mtbench --d 576 --float64 --float64-voxels 1000

echo "results in $OUT"
if (( ${#failed[@]} )); then
  note "VERDICT: FAILED: ${failed[*]}"
  exit 1
fi
note "VERDICT: every GPU check passed"
