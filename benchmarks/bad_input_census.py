"""Count the bad inputs the test suite tries, and how many end in one line (docs/robustness.md).

Every ``MtbenchError`` made while the suite runs (in pytest's process and in every ``mtbench``
it starts) is recorded with the test that made it; one distinct message (numbers and paths left
out) per test is one bad input tried. The message says what went wrong, which gives its category.
Errors the code makes and catches itself while probing (a sweep asking whether a cell's folder
is a finished run) are not bad inputs and are left out, as is a test's own stop signal.

    .venv/bin/python benchmarks/bad_input_census.py             # runs the default suite (~6 min)
    .venv/bin/python benchmarks/bad_input_census.py --log FILE  # counts a log recorded before
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HOOK = '''
import json, os
if os.environ.get("MTBENCH_CENSUS"):
    try:
        import mtbench.errors as errors
    except Exception:
        errors = None
    if errors is not None:
        init = errors.MtbenchError.__init__
        def recorded(self, *args, **kwargs):
            init(self, *args, **kwargs)
            with open(os.environ["MTBENCH_CENSUS"], "a") as f:
                f.write(json.dumps([os.environ.get("PYTEST_CURRENT_TEST", ""), str(args[0]) if args else ""]) + "\\n")
        errors.MtbenchError.__init__ = recorded
'''

# (category, pattern on "test file::test | message"), the first that matches wins
CATEGORIES = [
    ("security: paths from outside", r"not a path inside|run[ _]id '[^']*(/|\\\\|\.\.)|run[ _]id '\.?'|"
                                     r"plugin name '(\.\.|[^']*/)"),
    ("signals, memory, disk, locks, devices", r"of memory|out of memory|SIGTERM|interrupted|gave up waiting|"
                                              r"LOCK_TIMEOUT|No space|CUDA GPU|being written by another process|"
                                              r"cannot keep fit checkpoints"),
    ("sweep plans", r"^tests/test_sweep\.py|test_bad_input\.py::test_(bad_sweep|a_plan|an_executor)|\| plan "),
    ("plugins", r"^tests/test_(conformance|external_plugins|seam|broken_plugins)\.py|distribution|"
                r"test_plugins_filtered"),
    ("names", r"\| unknown |did you mean|invalid run id|is not a run id|no parcel is named|not supported; known "
              r"families|has no subject|no subject|does not exist in|not applicable to|has no `data fetch`"),
    ("files: data, caches, results, configs", r"damaged|not a readable|is missing|foreign|JSON|UTF-8|Parquet|NIfTI|"
                                              r"does not exist|no data at|cannot read|has \d+ scans|already exists|"
                                              r"not in a results folder|not an mtbench run|cannot write|"
                                              r"cannot load the weights|not installed|sha256|could not download|"
                                              r"no BOLD|no English word|has shape|no valid run|no run left|"
                                              r"schema|is empty|needs the|no labelled voxel"),
    ("values: settings and options", r"."),
]
# errors made and caught by the code itself, not by a bad input
PROBES = r"^tests/test_sweep\.py::.*\| [^ ]*/runs/[^ ]*: not an mtbench run|\| stop here$"


def record(log: Path) -> None:
    """Run the default suite with every MtbenchError recorded into ``log``."""
    with tempfile.TemporaryDirectory() as hook:
        (Path(hook) / "sitecustomize.py").write_text(HOOK)
        env = dict(os.environ, MTBENCH_CENSUS=str(log),
                   PYTHONPATH=os.pathsep.join(filter(None, [hook, os.environ.get("PYTHONPATH")])))
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env=env,
                       cwd=Path(__file__).resolve().parents[1])


def count(log: Path) -> dict:
    """Category -> [bad inputs, of which one line]."""
    cases = {}
    for line in log.read_text().splitlines():
        test, message = json.loads(line)
        test = re.sub(r" \((setup|call|teardown)\)$", "", test)
        shape = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", re.sub(r"/[^\s'\"(),;:]+", "PATH", message))
        cases.setdefault((test, shape), message)
    table = collections.defaultdict(lambda: [0, 0])
    for (test, _), message in cases.items():
        text = f"{test} | {message}"
        if re.search(PROBES, text):
            continue
        category = next(name for name, pattern in CATEGORIES if re.search(pattern, text))
        table[category][0] += 1
        table[category][1] += "\n" not in message.strip()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="count this log instead of running the suite")
    args = parser.parse_args()
    log = args.log
    if log is None:
        log = Path(tempfile.mkdtemp()) / "census.jsonl"
        record(log)
    table = count(log)
    print("| category | bad inputs tried | end in one line |\n|---|---:|---:|")
    for name, _ in CATEGORIES:
        tried, one = table.get(name, (0, 0))
        print(f"| {name} | {tried} | {one} |")
    print(f"| **all** | **{sum(t for t, _ in table.values())}** | **{sum(o for _, o in table.values())}** |")


if __name__ == "__main__":
    main()
