"""Shared by the sweep tests: a plan on the tiny synthetic dataset, and what the results hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from mtbench_plugins.commands.sweep.tasks import read_events

PLANTED = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "per_head_q_rope"}]


def write_plan(path: Path, model: Path, cache: Path, states=("per_head_q_rope", "ffn_activated_state"),
               layers="all", protocols=("mtbench",), executor="local", executor_options: dict | None = None,
               extra: str = "") -> Path:
    """A TOML plan of ``states x layers x protocols`` cells of the tiny synthetic dataset (``extra``: more
    top-level keys)."""
    options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in (executor_options or {}).items())
    path.write_text(f"""
models = [{json.dumps(f"hf:{model}")}]
states = {json.dumps(list(states))}
layers = {json.dumps(layers)}
datasets = ["synthetic"]
subjects = ["average"]
protocols = {json.dumps(list(protocols))}
{extra}
executor = "{executor}"
cache = {json.dumps(str(cache))}

[dataset_options.synthetic]
scale = "tiny"
snr = 2.0
truth_model = {json.dumps(f"hf:{model}")}
truth = {json.dumps(json.dumps(PLANTED))}

[executor_options]
{options}
""")
    return path


def sweep_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.Popen:
    """``mtbench sweep ARGS`` in a fresh interpreter (not waited for)."""
    full_env = dict(os.environ, COLUMNS="200", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "mtbench.cli", "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def event_counts(results: Path, kind: str = "cells") -> dict[str, dict[str, int]]:
    """Task name -> {event: count} from the sweep's append-only event logs."""
    out = {}
    for path in sorted((results / "sweep" / kind).glob("*.events")):
        counts: dict[str, int] = {}
        for event in read_events(path):
            counts[event["event"]] = counts.get(event["event"], 0) + 1
        out[path.name[: -len(".events")]] = counts
    return out


def scores_by_cell(results: Path) -> dict[str, list]:
    """Run folder -> sorted (layer, state, parcel, split, value) rows of its scores.parquet."""
    out = {}
    for run in sorted((results / "runs").iterdir()):
        rows = pq.read_table(run / "scores.parquet").to_pylist()
        out[run.name] = sorted((r["layer"], r["state"], r["parcel_id"], r["split"], r["value"]) for r in rows)
    return out
