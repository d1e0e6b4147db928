"""Sweep resources planned from the architecture (``plugins/commands/sweep/resources.py``): catalog
models are planned without loading them, GPUs follow the weights' dtype, fit times reproduce the
engine's measured rates, and the dry run prints totals and warns about cells a partition cannot hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from mtbench_plugins.commands.sweep import plan as plan_module
from mtbench_plugins.commands.sweep.plan import DatasetInfo, Group, Plan, model_info
from mtbench_plugins.commands.sweep.resources import (
    cache_bytes,
    device_gb,
    extract_resources,
    fit_seconds,
    plan_totals,
    state_widths,
)

from mtbench.cli import main

LPP = DatasetInfo(subjects=["average"], n_voxels=25_870, n_scans=2_816, n_words=15_376, n_runs=9)


def group(spec: str, dtype: str = "bfloat16") -> Group:
    info = model_info(spec, {"dtype": dtype}, Path("unused"))
    return Group(spec, spec, "lpp-en", {"dtype": dtype}, {}, info.states, list(range(1, info.n_layers + 1)), info, LPP)


def test_catalog_models_are_planned_from_their_architecture_without_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded to plan a sweep")

    monkeypatch.setattr(plan_module, "load_model", refuse)
    llama = group("llama-3.3-70b-instruct")
    assert llama.model_info.n_layers == 80 and len(llama.model_info.states) == 13
    widths = state_widths(llama.model_info.architecture)
    assert (widths["per_head_k"], widths["per_head_q"], widths["ffn_activated_state"]) == (1024, 8192, 28672)
    # weights in the dtype decide the GPUs: 70.6e9 x 2 bytes (bfloat16) on 80 GB GPUs, twice that in float32
    gpu = Plan(models=["m"], resources={"gpu_mem_gb": 80})
    assert 141 < device_gb(llama, gpu) / 1.1 < 150
    assert extract_resources(llama, gpu).gpus == 2
    assert extract_resources(group("llama-3.3-70b-instruct", "float32"), gpu).gpus == 4
    assert extract_resources(group("qwen3-0.6b"), gpu).gpus == 1
    assert extract_resources(llama, Plan(models=["m"])).gpus == 0  # no GPU asked for: on CPU, weights in memory
    assert extract_resources(llama, Plan(models=["m"])).mem_gb > 141
    # feature cache: words in float16 and scans in float32, per (layer, state)
    assert cache_bytes(llama, "ffn_activated_state") == 28672 * (15_376 * 2 + 2_816 * 4)


@pytest.mark.parametrize("dim, measured", [(192, 11.3), (576, 38.2), (1536, 121.0)])
def test_fit_time_reproduces_the_engine_measured_at_lpp_scale(dim, measured):
    """Bare fits in mixed precision on the 2-core EPYC Zen 4 (docs/encoding.md): within 25%, start-up aside."""
    planned = fit_seconds(LPP, dim, 9, "mixed", cpus=2) - 10.0
    assert abs(planned / measured - 1) < 0.25, planned


def test_totals_add_up_cells_and_warn_about_a_partition_too_small():
    groups = [group("qwen3-0.6b"), group("llama-3.3-70b-instruct")]
    plan = Plan(models=["qwen3-0.6b", "llama-3.3-70b-instruct"], modes=[1],
                resources={"gpu_mem_gb": 80, "max_gpus": 1, "max_mem_gb": 64})
    for g in groups:  # every (layer, state) is a cell
        g.cells = [type("Cell", (), {"name": f"{g.name}-{l}-{s}", "settings": type("S", (), {"mode": 1, "states": [s]})})
                   for l in g.layers for s in g.states]
    totals = plan_totals(groups, plan)
    assert totals.cells == 28 * 13 + 80 * 13
    alone = [plan_totals([g], plan) for g in groups]
    assert totals.cpu_hours == pytest.approx(sum(t.cpu_hours for t in alone))
    assert totals.disk_gb == pytest.approx(sum(t.disk_gb for t in alone)) and totals.disk_gb > 300
    assert totals.gpu_hours > 0
    assert any("extract llama-3.3-70b-instruct" in w and "2 GPUs" in w and "max_gpus" in w for w in totals.warnings)
    assert not any("qwen3-0.6b" in w for w in totals.warnings)


def test_dry_run_prints_totals_and_warnings(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["qwen3-0.6b", "mistral-large-instruct-2407"]\nlayers = "1-2"\n'
                    'datasets = ["synthetic"]\n[dataset_options.synthetic]\nscale = "tiny"\n'
                    '[resources]\ngpu_mem_gb = 80\nmax_gpus = 2\n')
    result = CliRunner().invoke(main, ["sweep", str(plan), "--dry-run", "--out", str(tmp_path / "r")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "planned from the architecture, 52 fit cells" in result.output and "GPU-hours" in result.output
    assert "warning extract mistral-large-instruct-2407" in result.output
    assert "cannot run there" in result.output


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3", "gemma3_text", "gpt_oss"])
def test_planned_state_widths_are_the_adapters(family, tmp_path):
    """The widths planning derives from the architecture numbers are those the HF adapter extracts
    (head dim chosen unequal to hidden / heads, fewer kv heads, an FFN width of its own; per expert
    for GPT-OSS), and the states are the ones the catalog registers for the family."""
    from mtbench_plugins.models.hf.loading import load_hf
    from mtbench_plugins.models.hf.tiny import save_tiny_model
    from mtbench_plugins.models.hooks import _states

    folder = save_tiny_model(tmp_path / family, family, n_layers=1, hidden=64, heads=4, kv_heads=2, intermediate=96,
                             head_dim=24)
    adapter = load_hf(str(folder))
    planned = state_widths({"hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 24, "ffn": 96})
    assert adapter._state_dims() == {s: planned[s] for s in adapter.available_states()}
    assert adapter.available_states() == _states(family)
