"""Plugin discovery: built-ins and third parties go through the same entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtbench.registry import get_registry

STATES = [
    "input_hidden_state", "pre_attn_norm", "per_head_q", "per_head_q_rope", "per_head_k", "per_head_k_rope",
    "per_head_v", "per_head_context_vector", "attn_output", "post_attn_hidden_state", "pre_ffn_norm",
    "ffn_activated_state", "ffn_output",
]


def make_distribution(root: Path, dist: str, module: str, source: str, entry_name: str) -> Path:
    """Create an installed-looking distribution (dist-info with an entry point) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[mtbench]\n{entry_name} = {module}\n")
    return root


def mtbench(*args: str, extra_path: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter (entry points are read at start-up)."""
    full_env = dict(os.environ)
    full_env.pop("MTBENCH_LOAD_PLUGINS", None)
    full_env.pop("MTBENCH_BLOCK_PLUGINS", None)
    full_env["COLUMNS"] = "200"
    if extra_path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mtbench.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


GOOD_PLUGIN = """
    import numpy as np
    from mtbench.api import MetricEntry
    from mtbench.hookspecs import hookimpl

    @hookimpl
    def register_metrics():
        return [MetricEntry(name="neg-mse", summary="negative mean squared error",
                            score=lambda t, p: -((t - p) ** 2).mean(0))]
"""


def test_builtins_register_through_entry_points():
    registry = get_registry(reload=True)
    assert registry.names("state") == STATES + ["embedding"]  # the 13 block states, then the baselines' one
    assert {"smollm2-135m", "hf", "glove", "random", "word-rate", "log-frequency", "pos"} <= set(registry.names("model"))
    assert "synthetic" in registry.names("dataset")
    assert "pearson" in registry.names("metric")
    builtin = {p.name: p for p in registry.plugins}
    assert all(builtin[name].distribution == "mtbench" for name in ("core_states", "hf_models", "synthetic", "pearson",
                                                                      "baselines", "baseline_states"))


def test_core_has_no_builtin_list():
    """With entry-point loading switched off, nothing at all is registered."""
    result = mtbench("list", "models", env={"MTBENCH_LOAD_PLUGINS": ""})
    assert result.returncode == 0, result.stderr
    assert "models (0)" in result.stdout


def test_plugins_dir_is_namespaced(tmp_path):
    """The installed package exposes mtbench_plugins, never a bare top-level `plugins`."""
    code = ("import importlib.util as u, mtbench_plugins\n"
            "assert u.find_spec('plugins') is None, 'bare plugins package installed'\n"
            "print(mtbench_plugins.__name__)")
    # run outside the source tree, so only what is installed is importable
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mtbench_plugins"


def test_list_does_not_import_torch():
    code = ("import sys; from mtbench.cli import main\n"
            "try:\n    main(['list', 'models'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m" in result.stdout


def test_third_party_distribution_is_discovered(tmp_path):
    site = make_distribution(tmp_path / "site", "mtbench-extra-metric", "extra_metric", GOOD_PLUGIN, "negmse")
    listed = mtbench("list", "metrics", extra_path=site)
    assert listed.returncode == 0, listed.stderr
    assert "neg-mse" in listed.stdout and "pearson" in listed.stdout
    shown = mtbench("plugins", extra_path=site)
    assert "mtbench-extra-metric" in shown.stdout and "negmse" in shown.stdout


def test_broken_plugin_is_reported_and_skipped(tmp_path):
    site = make_distribution(tmp_path / "site", "mtbench-broken", "broken_plugin",
                             "raise ImportError('needs a package that is not installed')\n", "broken")
    shown = mtbench("plugins", extra_path=site)
    assert shown.returncode == 0
    assert "broken" in shown.stdout and "mtbench-broken" in shown.stdout and "failed" in shown.stdout
    listed = mtbench("list", "models", extra_path=site)
    assert listed.returncode == 0 and "smollm2-135m" in listed.stdout
    assert "skipped" in listed.stdout  # the user is told, not left guessing
    # a run that needs a name the broken plugin might have provided says so, in one line
    missing = mtbench("run", "--model", "fancy-model", extra_path=site)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "broken (mtbench-broken)" in missing.stderr


def test_plugin_returning_garbage_is_reported(tmp_path):
    source = """
        from mtbench.hookspecs import hookimpl

        @hookimpl
        def register_models():
            return ["not an entry"]
    """
    site = make_distribution(tmp_path / "site", "mtbench-garbage", "garbage_plugin", source, "garbage")
    shown = mtbench("plugins", extra_path=site)
    assert "register_models" in shown.stdout and "expected ModelEntry" in shown.stdout
    assert "smollm2-135m" in mtbench("list", "models", extra_path=site).stdout


def test_block_and_select_plugins(tmp_path):
    site = make_distribution(tmp_path / "site", "mtbench-extra-metric", "extra_metric", GOOD_PLUGIN, "negmse")
    blocked = mtbench("list", "metrics", extra_path=site, env={"MTBENCH_BLOCK_PLUGINS": "negmse"})
    assert "neg-mse" not in blocked.stdout and "pearson" in blocked.stdout
    only = mtbench("list", "metrics", extra_path=site, env={"MTBENCH_LOAD_PLUGINS": "negmse"})
    assert "neg-mse" in only.stdout and "pearson" not in only.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--model", "smollm2"], "unknown model 'smollm2': did you mean 'smollm2-135m'"),
        (["run", "--model", "smollm2-135m", "--states", "per_head_qrope"], "did you mean 'per_head_q_rope'"),
        (["run", "--model", "smollm2-135m", "--dataset", "synthtic"], "unknown dataset 'synthtic': did you mean 'synthetic'"),
        (["run", "--model", "smollm2-135m", "--metric", "pearsn"], "did you mean 'pearson'"),
        (["run", "--model", "smollm2-135m", "--alphas", "a:b"], "cannot read --alphas"),
        # values that used to run anyway, a traceback or a silent default
        (["run", "--model", "random", "--layers", "2-1"], "layer range '2-1' runs backwards: write 1-2"),
        (["run", "--model", "random", "--alphas", "1:0:3"], "start and stop must be positive"),
        (["run", "--model", "random", "--alphas", "1,nan"], "every penalty must be positive and finite"),
        (["run", "--model", "random", "--trim", "-1"], "trim_scans (--trim) must be a whole number of scans >= 0"),
        (["run", "--model", "random", "--pivot", "attn_output"], "--pivot attn_output is for --mode 2; add --mode 2"),
        (["run", "--model", "random", "--selection", "banded"], "--selection banded is for --mode 2"),
        # found once the run has started (the model loaded): still nothing but the error
        (["run", "--model", "random", "--layers", "3"], "layer 3 is out of range: this model has blocks 1..1"),
    ],
)
def test_unknown_names_and_bad_values_give_one_line_errors(args, expected):
    result = mtbench(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert result.stdout == "", repr(result.stdout)  # not even the empty line of a progress display never used


def test_plugins_filtered_by_hook(tmp_path):
    site = make_distribution(tmp_path / "site", "mtbench-extra-metric", "extra_metric", GOOD_PLUGIN, "negmse")
    shown = mtbench("plugins", "--hook", "register_metrics", extra_path=site)
    assert shown.returncode == 0, shown.stderr
    assert "negmse" in shown.stdout and "pearson" in shown.stdout and "hf_models" not in shown.stdout
    bad = mtbench("plugins", "--hook", "register_model")
    assert bad.returncode == 2 and "unknown hook 'register_model'" in bad.stderr
