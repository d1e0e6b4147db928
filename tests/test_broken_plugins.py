"""Broken third-party plugins never break unrelated commands (complements test_plugins.py).

One environment holds four broken distributions at once: one raises on import, one returns
garbage from a hook, one raises inside a hook, one declares a hook with arguments the
specification does not have. Each is reported with its name and distribution; listing and
a real `mtbench run` of a built-in model still work.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from test_plugins import make_distribution, mtbench

BROKEN = {  # entry-point name -> (distribution, module source, what `mtbench plugins` says)
    "crash": ("mtbench-crash", "raise ImportError('needs libfoo.so')\n", "ImportError: needs libfoo.so"),
    "garbage": ("mtbench-garbage", """
        from mtbench.hookspecs import hookimpl

        @hookimpl
        def register_metrics():
            return {"name": "not a list of entries"}
    """, "register_metrics: TypeError"),
    "raiser": ("mtbench-raiser", """
        from mtbench.hookspecs import hookimpl

        @hookimpl
        def register_models():
            raise RuntimeError("licence server unreachable")
    """, "register_models: RuntimeError: licence server unreachable"),
    "badargs": ("mtbench-badargs", """
        from mtbench.hookspecs import hookimpl

        @hookimpl
        def register_datasets(config):
            return []
    """, "PluginValidationError"),
}
HESCHL = "Heschl's Gyrus (includes H1 and H2)"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "site"
    for entry, (dist, source, _) in BROKEN.items():
        make_distribution(root, dist, f"{entry}_plugin", source, entry)
    return root


def test_each_broken_plugin_is_reported_with_its_distribution(site):
    shown = mtbench("plugins", extra_path=site)
    assert shown.returncode == 0, shown.stderr
    for entry, (dist, _, message) in BROKEN.items():
        row = next((line for line in shown.stdout.splitlines() if line.lstrip("│ ").startswith(entry + " ")), "")
        assert dist in row and "failed" in row, (entry, shown.stdout)
        assert message in shown.stdout, (entry, message)
    listed = mtbench("list", "models", extra_path=site)
    assert listed.returncode == 0 and "smollm2-135m" in listed.stdout and "random" in listed.stdout
    for entry, (dist, _, _) in BROKEN.items():
        assert f"plugin {entry} ({dist}) was skipped" in " ".join(listed.stdout.split())


def test_run_of_another_model_still_works(site, tmp_path):
    truth = json.dumps([{"parcel": HESCHL, "layer": 1, "state": "embedding"}])
    result = mtbench("run", "--model", "random", "--alphas", "1e0:1e4:3", "--dataset-option", "scale=tiny",
                     "--dataset-option", "truth_model=random", "--dataset-option", f"truth={truth}",
                     "--dataset-option", "snr=2", "--out", str(tmp_path / "results"), extra_path=site,
                     env={"MTBENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = {row["parcel"]: row for row in pq.read_table(run_dir / "summary.parquet").to_pylist()}
    assert summary[HESCHL]["state"] == "embedding" and summary[HESCHL]["test"] > 0.2
