"""What each task of a sweep asks its executor for (CPUs, memory, GPUs, minutes), planned from the
model's architecture and the dataset's size, and the plan's totals the dry run prints.

Extraction (one task per model and dataset): the weights in the chosen dtype plus one context
window's activations on the device (GPU memory, hence the number of GPUs), the features of one
pass of the model in host memory, and ``2 x active parameters`` FLOPs per token and window.
Feature cache: every (layer, state) the sweep extracts, ``words x width`` values in the cache's
dtype, plus its ``scans x width`` aligned copy in float32. Fitting (one task per cell): the
nested leave-one-run-out ridge's FLOPs at the cell's width, at the engine's measured rate, and
memory from its measured peak (``docs/encoding.md``; how each number is derived:
``docs/catalog.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mtbench.api import TaskResources
from mtbench.registry import get_registry
from mtbench.settings import RunSettings

from .plan import DatasetInfo, Group, Plan, options_of, state_widths  # noqa: F401 (re-exported)

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Nested leave-one-run-out ridge, measured at LPP scale (9 runs, 2,816 scans, 25,870 voxels; docs/encoding.md):
# 9,215 GFLOP of unavoidable products at d = 576, i.e. FIT_FLOPS x scans x d x voxels x runs^2, with d
# capped by the kernel form at the inner training scans (36,208 GFLOP at d >= 4,096).
FIT_FLOPS = 2.71
# GFLOP/s per CPU core the engine reaches (2-vCPU EPYC Zen 4: 148-167 GFLOP/s float32 on 2 cores, and
# 38.2 s for the 9,215 GFLOP of d = 576 in mixed precision); a GPU's rate is an assumption, not measured.
CPU_FIT_RATE = {"mixed": 120e9, "float32": 75e9}
GPU_FIT_RATE = 2e13
# Seconds a fit cell spends outside the ridge: start-up, reading cached features, alignment, significance.
CELL_OVERHEAD_S = 10.0
# Peak memory of a fit / its data (X and Y), measured 1.9-2.9 (docs/encoding.md); 1,000 null columns.
FIT_MEMORY_RATIO, NULL_COLUMNS = 3.0, 1000
# Extraction: tokens per word (BPE on English prose) and the rates (FLOP/s) of the forward pass, assumed.
TOKENS_PER_WORD = 1.3
HOST_SHARD_GB = 10.0
CPU_EXTRACT_RATE, GPU_EXTRACT_RATE = 2e10, {"float32": 2e13, "float16": 1e14, "bfloat16": 1e14}


# --------------------------------------------------------------------------- what a model's states are
def width_of(group: Group, state: str) -> int:
    """A state's width: from the architecture when known, else the bound (the FFN activation, 4 x hidden)."""
    return int(group.model_info.widths.get(state) or 4 * group.model_info.hidden)


# --------------------------------------------------------------------------- extraction
def layers_per_pass(group: Group, plan: Plan) -> int:
    """Layers extracted per pass of the model, so that their features fit ``extract_feature_gb`` (16)."""
    per_layer_gb = _layer_feature_bytes(group) / 1e9
    budget = float(plan.resources.get("extract_feature_gb", 16))
    return max(1, min(len(group.layers), int(budget // max(per_layer_gb, 1e-9))))


def _layer_feature_bytes(group: Group) -> float:
    """One layer's word features of every state the group extracts, float32 in memory."""
    return group.dataset_info.n_words * sum(width_of(group, s) for s in group.states) * 4


def _dtype(group: Group) -> str:
    return str(group.model_options.get("dtype", "float32"))


def weights_gb(group: Group) -> float:
    return group.model_info.n_params * BYTES.get(_dtype(group), 4) / 1e9


def window_gb(group: Group, plan: Plan) -> float:
    """Device memory of one context window's forward pass: the widest block's transient tensors,
    the attention scores and the states kept for one pass's layers (float32)."""
    info, arch = group.model_info, group.model_info.architecture
    tokens = int(group.model_options.get("context", 512))
    hidden, ffn = info.hidden, int(arch.get("ffn") or 4 * info.hidden)
    heads = int(arch.get("heads") or 1)
    qkv = sum(width_of(group, s) for s in ("per_head_q", "per_head_k", "per_head_v")) if info.widths else 3 * hidden
    transient = tokens * (6 * hidden + 3 * ffn + qkv) + heads * tokens ** 2  # the base model: no logits
    kept = tokens * sum(width_of(group, s) for s in group.states) * layers_per_pass(group, plan) * 4
    return (transient * BYTES.get(_dtype(group), 4) + kept) / 1e9


def extract_gpus(group: Group, plan: Plan) -> int:
    """GPUs of the extraction task: ``[resources] extract_gpus`` when given (0: on CPU); else, when
    the plan gives ``gpu_mem_gb``, enough such GPUs for the weights and a window (10% to spare); else 0."""
    if "extract_gpus" in plan.resources:
        return int(plan.resources["extract_gpus"])
    if "gpu_mem_gb" not in plan.resources:
        return 0
    return max(1, math.ceil(device_gb(group, plan) / float(plan.resources["gpu_mem_gb"])))


def device_gb(group: Group, plan: Plan) -> float:
    """Device memory the extraction needs: the weights and one window, with 10% to spare."""
    return 1.1 * (weights_gb(group) + window_gb(group, plan))


def extract_seconds(group: Group, plan: Plan) -> float:
    """Forward passes over the stimulus: ``2 x active params`` FLOPs per token, each token in
    ``context / stride`` windows, once per pass of ``layers_per_pass`` layers."""
    info = group.model_info
    active = int(info.architecture.get("active_params") or info.n_params)
    overlap = int(group.model_options.get("context", 512)) / int(group.model_options.get("stride", 256))
    tokens = group.dataset_info.n_words * TOKENS_PER_WORD * max(overlap, 1.0)
    passes = math.ceil(len(group.layers) / layers_per_pass(group, plan))
    gpus = extract_gpus(group, plan)
    rate = (GPU_EXTRACT_RATE.get(_dtype(group), 2e13) * gpus if gpus
            else CPU_EXTRACT_RATE * int(plan.resources.get("extract_cpus", 2)))
    return 30 + passes * 2 * active * tokens / rate  # + loading the weights


def extract_resources(group: Group, plan: Plan) -> TaskResources:
    """Host memory: one pass's features, plus on CPU the weights and a window; on GPUs the weights
    go to the devices a shard at a time (at most ``HOST_SHARD_GB`` of them in host memory)."""
    gpus = extract_gpus(group, plan)
    features_gb = layers_per_pass(group, plan) * _layer_feature_bytes(group) / 1e9
    on_host = min(weights_gb(group), HOST_SHARD_GB) if gpus else weights_gb(group) + window_gb(group, plan)
    return TaskResources(cpus=int(plan.resources.get("extract_cpus", 2)), mem_gb=_round_gb(2 + on_host + features_gb),
                         gpus=gpus, minutes=_minutes(extract_seconds(group, plan), plan))


def cache_bytes(group: Group, state: str, feature_dtype: str = "float16") -> float:
    """Disk of one (layer, state) in the feature cache: word features in ``feature_dtype`` and the
    aligned scan features (float32)."""
    data = group.dataset_info
    return width_of(group, state) * (data.n_words * BYTES[feature_dtype] + data.n_scans * 4)


# --------------------------------------------------------------------------- fitting
def cell_cost(plan: Plan, mode=None) -> tuple[int, int]:
    """(states fitted side by side, fits per cell) of a cell of ``mode`` (None: the plan's first), as its analysis says."""
    mode = plan.modes[0] if mode is None else mode
    settings = RunSettings("", "", ["all"], mode=mode, **options_of(plan, mode))
    return get_registry().analysis(mode).load().cost(settings)


def cell_width(group: Group, plan: Plan, mode=None, state: str | None = None) -> int:
    """A cell's feature count: ``state``'s width (Mode 1), else the widest state the group extracts,
    per state fitted side by side."""
    width = width_of(group, state) if state else max((width_of(group, s) for s in group.states),
                                                     default=4 * group.model_info.hidden)
    return width * cell_cost(plan, mode)[0]


def fit_flops(data: DatasetInfo, dim: int) -> float:
    """FLOPs of one nested leave-one-run-out fit (products of the measured floor, ``FIT_FLOPS``)."""
    runs = max(data.n_runs, 2)
    kernel_cap = data.n_scans * (runs - 2) / runs  # beyond the inner training scans the kernel form is used
    return FIT_FLOPS * data.n_scans * min(dim, kernel_cap) * (data.n_voxels + NULL_COLUMNS) * runs ** 2


def fit_seconds(data: DatasetInfo, dim: int, n_alphas: int, precision: str = "mixed", cpus: int = 1,
                gpus: int = 0) -> float:
    """Wall time of one fit of width ``dim`` at the engine's rate (``n_alphas`` beyond the 9 measured scale it)."""
    rate = GPU_FIT_RATE * gpus if gpus else CPU_FIT_RATE.get(precision, CPU_FIT_RATE["float32"]) * max(cpus, 1)
    return CELL_OVERHEAD_S + fit_flops(data, dim) * max(n_alphas, 9) / 9 / rate


def _fit_gpus(plan: Plan) -> int:
    return int(plan.resources.get("fit_gpus", 1 if str(plan.settings.get("backend", "")).endswith("_cuda") else 0))


def cell_seconds(group: Group, plan: Plan, mode=None, state: str | None = None) -> float:
    """Wall time of one cell (e.g. a Mode 2 cell fits its inputs side by side, twice: two stages)."""
    n_alphas = len(plan.settings.get("alphas", RunSettings("", "", []).alphas))
    precision = str(plan.settings.get("precision", "mixed"))
    return fit_seconds(group.dataset_info, cell_width(group, plan, mode, state), n_alphas, precision,
                       int(plan.resources.get("fit_cpus", 1)), _fit_gpus(plan)) * cell_cost(plan, mode)[1]


def fit_resources(group: Group, plan: Plan, mode=None) -> TaskResources:
    """One request for every cell of ``mode`` in the group: its widest cell's memory and time."""
    data = group.dataset_info
    dim = min(cell_width(group, plan, mode), data.n_scans)  # the kernel form holds scans x scans, not d x d
    data_gb = data.n_scans * (data.n_voxels + NULL_COLUMNS + dim) * 4 / 1e9
    words_gb = data.n_words * cell_width(group, plan, mode) * 4 / 1e9  # the cell's word features, read once
    return TaskResources(cpus=int(plan.resources.get("fit_cpus", 1)),
                         mem_gb=_round_gb(1.5 + FIT_MEMORY_RATIO * data_gb + words_gb), gpus=_fit_gpus(plan),
                         minutes=_minutes(cell_seconds(group, plan, mode), plan))


# --------------------------------------------------------------------------- the plan's totals
@dataclass
class Totals:
    """What a plan costs: device hours, disk, and the cells a partition cannot hold."""

    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    extract_hours: float = 0.0  # wall hours of the extraction tasks
    fit_hours: float = 0.0  # wall hours of the fit cells (one after another)
    disk_gb: float = 0.0
    cells: int = 0
    warnings: list[str] = field(default_factory=list)


def plan_totals(groups: list[Group], plan: Plan, fit_tasks=None, extract_tasks=None) -> Totals:
    """GPU-hours, CPU-hours and feature-cache disk of the cells still to run (all cells when no tasks
    are given), and one warning per task kind that exceeds the partition (``[resources] max_mem_gb``,
    ``max_gpus``, ``max_minutes``, ``gpu_mem_gb``)."""
    totals = Totals()
    todo = None if fit_tasks is None else {t.name for t in fit_tasks}
    extracting = None if extract_tasks is None else {t.name for t in extract_tasks}
    feature_dtype = str(plan.settings.get("feature_dtype", "float16"))
    for group in groups:
        cells = [c for c in group.cells if todo is None or c.name in todo]
        if extracting is None or group.name in extracting:
            request = extract_resources(group, plan)
            hours = extract_seconds(group, plan) / 3600
            totals.extract_hours += hours
            totals.gpu_hours += hours * request.gpus
            totals.cpu_hours += hours * request.cpus
            totals.disk_gb += sum(cache_bytes(group, s, feature_dtype) for s in group.states) * len(group.layers) / 1e9
            _check_partition(totals, f"extract {group.model} on {group.dataset}", request, plan)
            per_gpu = float(plan.resources.get("gpu_mem_gb", 80))
            if request.gpus and device_gb(group, plan) > request.gpus * per_gpu:
                totals.warnings.append(
                    f"extract {group.model} on {group.dataset} needs about {device_gb(group, plan):.0f} GB of GPU "
                    f"memory, more than {request.gpus} x {per_gpu:g} GB (gpu_mem_gb): ask for "
                    f"{math.ceil(device_gb(group, plan) / per_gpu)} GPUs (extract_gpus) with device_map=auto, or a "
                    "smaller dtype (dtype=bfloat16)")
        for mode in plan.modes:
            mine = [c for c in cells if c.settings.mode == mode]
            if not mine:
                continue
            request = fit_resources(group, plan, mode)
            seconds = sum(cell_seconds(group, plan, mode, c.settings.states[0] if len(c.settings.states) == 1
                                       else None) for c in mine)
            totals.cells += len(mine)
            totals.fit_hours += seconds / 3600
            totals.cpu_hours += seconds / 3600 * request.cpus
            totals.gpu_hours += seconds / 3600 * request.gpus
            _check_partition(totals, f"{len(mine)} fit cells of {group.model} on {group.dataset} (mode {mode})",
                             request, plan)
    return totals


def _check_partition(totals: Totals, what: str, request: TaskResources, plan: Plan) -> None:
    limits = {"mem_gb": ("max_mem_gb", "GB of memory"), "gpus": ("max_gpus", "GPUs"),
              "minutes": ("max_minutes", "minutes")}
    for key, (limit_key, unit) in limits.items():
        limit = plan.resources.get(limit_key)
        if limit is not None and getattr(request, key) > limit:
            totals.warnings.append(f"{what} ask for {getattr(request, key):g} {unit}, more than the partition's "
                                   f"{limit:g} ({limit_key}): they cannot run there")


def _minutes(seconds: float, plan: Plan) -> int:
    return max(10, math.ceil(float(plan.resources.get("minutes_factor", 3)) * seconds / 60))


def _round_gb(gb: float) -> float:
    return math.ceil(gb * 4) / 4
