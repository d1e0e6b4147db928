"""What each task of a sweep asks its executor for (CPUs, memory, GPUs, minutes), estimated from the
model's and the dataset's size, and the rough cost the dry run prints."""

from __future__ import annotations

import math

from mtbench.api import TaskResources
from mtbench.registry import get_registry
from mtbench.settings import RunSettings

from .plan import DatasetInfo, Group, Plan, options_of


def layers_per_pass(group: Group, plan: Plan) -> int:
    """Layers extracted per pass of the model, so that their features fit ``extract_feature_gb`` (16)."""
    info, data = group.model_info, group.dataset_info
    per_layer_gb = len(group.states) * data.n_words * 4 * info.hidden * 4 / 1e9
    budget = float(plan.resources.get("extract_feature_gb", 16))
    return max(1, min(len(group.layers), int(budget // max(per_layer_gb, 1e-9))))


def extract_resources(group: Group, plan: Plan) -> TaskResources:
    """Weights (float32) with room for activations, plus the features of one pass in memory."""
    info, data = group.model_info, group.dataset_info
    weights_gb = info.n_params * 4 / 1e9
    chunk = layers_per_pass(group, plan)
    features_gb = chunk * len(group.states) * data.n_words * 4 * info.hidden * 4 / 1e9
    passes = math.ceil(len(group.layers) / chunk)
    flops = passes * 2 * info.n_params * data.n_words * 2  # windows overlap by half: each word seen about twice
    gpus = int(plan.resources.get("extract_gpus", 0))
    seconds = flops / (5e12 if gpus else 2e10)
    return TaskResources(cpus=int(plan.resources.get("extract_cpus", 2)), mem_gb=_round_gb(2 + 2 * weights_gb + features_gb),
                         gpus=gpus, minutes=_minutes(seconds, plan))


def fit_resources(group: Group, plan: Plan, mode=None) -> TaskResources:
    """BOLD and features of one cell, copied per fold; time grows with scans x voxels x alphas."""
    data = group.dataset_info
    dim = cell_width(group, plan, mode)
    bold_gb = data.n_scans * data.n_voxels * 4 * 2 * data.n_runs / 1e9
    feats_gb = (data.n_words + data.n_scans * data.n_runs) * dim * 4 / 1e9
    gpus = int(plan.resources.get("fit_gpus", 1 if str(plan.settings.get("backend", "")).endswith("_cuda") else 0))
    return TaskResources(cpus=int(plan.resources.get("fit_cpus", 1)), mem_gb=_round_gb(1.5 + bold_gb + feats_gb),
                         gpus=gpus, minutes=_minutes(cell_seconds(group, plan, mode), plan))


def cell_cost(plan: Plan, mode=None) -> tuple[int, int]:
    """(states fitted side by side, fits per cell) of a cell of ``mode`` (None: the plan's first), as its analysis says."""
    mode = plan.modes[0] if mode is None else mode
    settings = RunSettings("", "", ["all"], mode=mode, **options_of(plan, mode))
    return get_registry().analysis(mode).load().cost(settings)


def cell_seconds(group: Group, plan: Plan, mode=None) -> float:
    """Rough single-CPU time of one cell (e.g. a Mode 2 cell fits its inputs side by side, twice: two stages)."""
    n_alphas = len(plan.settings.get("alphas", RunSettings("", "", []).alphas))
    return fit_seconds(group.dataset_info, cell_width(group, plan, mode), n_alphas) * cell_cost(plan, mode)[1]


def cell_width(group: Group, plan: Plan, mode=None) -> int:
    """Bound on a cell's feature count: the widest state (FFN activation, 4 x hidden) per state fitted side by side."""
    return 4 * group.model_info.hidden * cell_cost(plan, mode)[0]


def fit_seconds(data: DatasetInfo, dim: int, n_alphas: int) -> float:
    """Rough single-CPU time of one cell: nested leave-one-run-out ridge, plus start-up."""
    folds = data.n_runs * max(data.n_runs - 1, 1)
    flops = folds * (data.n_scans * min(dim, data.n_scans) ** 2 + n_alphas * data.n_scans * data.n_voxels * 8)
    return 5 + flops / 1e10


def _minutes(seconds: float, plan: Plan) -> int:
    return max(10, math.ceil(float(plan.resources.get("minutes_factor", 3)) * seconds / 60))


def _round_gb(gb: float) -> float:
    return math.ceil(gb * 4) / 4
