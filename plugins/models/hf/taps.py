"""Capturing states during one forward pass: forward hooks on submodules, and taps in the
attention function for the query/key/value as attention receives them.

The query/key *after* RoPE (and QK-norm where the family has one) are returned by no
module, so they are taken from the attention-function call: mtbench registers its own
entries in transformers' official ``AttentionInterface`` (at import of this module) that
record query/key/value and then delegate to ``sdpa`` (or the family's ``eager``); the
adapter switches its model to them (:data:`ATTENTION_IMPLEMENTATIONS`). Where each state
is read is the family's :class:`~mtbench_plugins.models.hf.families.FamilySpec`.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Sequence

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask, sdpa_mask

from .families import (
    FUSED_K,
    FUSED_Q,
    FUSED_V,
    INPUT,
    KEY,
    OUTPUT,
    QUERY,
    ROUTED,
    VALUE,
    FamilySpec,
)

_FUSED_PART = {FUSED_Q: 0, FUSED_K: 1, FUSED_V: 2}

# id(attention module) -> {QUERY/KEY/VALUE: callback(tensor (T, heads*head_dim))}; set only
# while forward_with_taps runs, so other models in the process are unaffected.
_ATTENTION_TAPS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mtbench_attention_taps", default=None)


def _eager_attention(module, *args, **kwargs):
    # Each modeling file defines its own eager function (softcapping, sinks...): use the
    # one of the module's family.
    return sys.modules[type(module).__module__].eager_attention_forward(module, *args, **kwargs)


def _sdpa_attention(module, *args, **kwargs):
    # Looked up at call time so that a kernel registered over "sdpa" is honoured.
    return AttentionInterface._global_mapping["sdpa"](module, *args, **kwargs)


def _tapping(delegate: Callable) -> Callable:
    """An attention function that records query/key/value (B, heads, T, head_dim) then delegates."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        taps = _ATTENTION_TAPS.get()
        if taps:
            here = taps.get(id(module))
            if here:
                # (B, heads, T, head_dim) -> (T, heads * head_dim), head-major like q_proj
                for port, tensor in ((QUERY, query), (KEY, key), (VALUE, value)):
                    if port in here:
                        here[port](tensor[0].transpose(0, 1).reshape(tensor.shape[2], -1))
        return delegate(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


# Registered once at import; the mask function must match the delegate's expectations.
# attn_implementation of the model -> mtbench's tapping entry that delegates to it.
ATTENTION_IMPLEMENTATIONS = {"sdpa": "mtbench_sdpa", "eager": "mtbench_eager"}
AttentionInterface.register("mtbench_sdpa", _tapping(_sdpa_attention))
AttentionMaskInterface.register("mtbench_sdpa", sdpa_mask)
AttentionInterface.register("mtbench_eager", _tapping(_eager_attention))
AttentionMaskInterface.register("mtbench_eager", eager_mask)


class _StopForward(Exception):
    """Raised after the deepest requested block: the rest of the model is not needed."""


def forward_with_taps(base, blocks, spec: FamilySpec, input_ids: torch.Tensor,
                      wanted: Sequence[tuple[int, str]], sink: Callable) -> set[tuple[int, str]]:
    """Run ``base`` on ``input_ids`` (1, T) and call ``sink((layer, state), tensor (T, dim))`` per tap.

    Hooks (and attention taps) are placed only for the ``wanted`` (layer, state) keys, where
    ``spec`` says each state is read in ``blocks`` (the model's decoder blocks); the forward
    stops after the deepest wanted block. Every hook is removed on return.

    Returns
    -------
    set of (int, str)
        The keys that were captured (a key missing from it: the modules do not match ``spec``).
    """
    taps: dict[tuple[int, str, str], list[tuple[int, str]]] = {}
    for layer, state in wanted:
        path, port = spec.states[state]
        taps.setdefault((layer, path, port), []).append((layer, state))
    seen: set[tuple[int, str]] = set()

    def emitter(keys):
        def emit(x):
            for key in keys:
                sink(key, x)
                seen.add(key)

        return emit

    handles = []
    attention_taps: dict[int, dict[str, Callable]] = {}
    try:
        for (layer, path, port), keys in taps.items():
            block = blocks[layer - 1]
            module = block.get_submodule(path) if path else block
            emit = emitter(keys)
            if port == INPUT:
                handles.append(module.register_forward_pre_hook(_input_hook(emit), with_kwargs=True))
            elif port == OUTPUT:
                handles.append(module.register_forward_hook(_output_hook(emit)))
            elif port == ROUTED:
                handles.append(module.register_forward_hook(_routed_hook(emit), with_kwargs=True))
            elif port in _FUSED_PART:
                heads = base.config.num_attention_heads
                handles.append(module.register_forward_hook(_fused_part_hook(emit, heads, _FUSED_PART[port])))
            else:
                attention_taps.setdefault(id(module), {})[port] = emit
        deepest = max(layer for layer, _ in wanted)
        if deepest < len(blocks):
            handles.append(blocks[deepest - 1].register_forward_hook(_stop_hook))
        token = _ATTENTION_TAPS.set(attention_taps)
        try:
            base(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            _ATTENTION_TAPS.reset(token)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _input_hook(emit):
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
        emit(x[0].reshape(x.shape[1], -1))  # (1, T, ...) -> (T, dim)

    return hook


def _output_hook(emit):
    def hook(module, args, output):
        x = _first_tensor(output)
        emit(x[0].reshape(x.shape[1], -1))

    return hook


def _fused_part_hook(emit, heads: int, part: int):
    """Forward hook on a per-head fused q/k/v projection (see ``FUSED_Q`` in families.py):
    emits part ``part`` (0 q, 1 k, 2 v) of every head, (T, heads * head_dim)."""

    def hook(module, args, output):
        x = _first_tensor(output)[0]  # (T, heads * 3 * head_dim)
        emit(x.view(x.shape[0], heads, 3, -1)[:, :, part].reshape(x.shape[0], -1))

    return hook


def _routed_hook(emit):
    """Forward hook (with kwargs) on an experts module: emits the ROUTED state (T, intermediate)."""

    def hook(module, args, kwargs, output):
        # experts(hidden_states (N, H), top-k expert indices (N, k), routing weights (N, k))
        names = (("hidden_states",), ("router_indices", "top_k_index"), ("routing_weights", "top_k_weights"))
        values = list(args[:3]) + [None] * (3 - len(args[:3]))
        for i, alternatives in enumerate(names):
            if values[i] is None:
                values[i] = next((kwargs[n] for n in alternatives if n in kwargs), None)
        x, index, weights = values
        x = x.reshape(-1, x.shape[-1])
        emit(routed_activation(module, x, index.reshape(x.shape[0], -1), weights.reshape(x.shape[0], -1)))

    return hook


def routed_activation(experts, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Router-weighted sum of the selected experts' activated intermediates.

    ``out[t] = sum_k weights[t, k] * gate(x[t] @ W_up[index[t, k]] + b[index[t, k]])``, the
    input of each expert's down projection, mixed as the MoE mixes the expert outputs.
    Uses the experts module's own weights and gate (``_apply_gate``), for modules laid out
    by transformers' ``use_experts_implementation`` (``gate_up_proj`` or ``up_proj``,
    ``is_transposed``, ``has_bias``, ``has_gate``).

    Parameters
    ----------
    experts : torch.nn.Module
    x : tensor (N, hidden)
        What the experts module received (the normed FFN input).
    index, weights : tensor (N, top_k)
        Selected experts and their routing weights.

    Returns
    -------
    tensor (N, intermediate)
    """
    has_gate = getattr(experts, "has_gate", True)
    weight = experts.gate_up_proj if has_gate else experts.up_proj
    bias = None
    if getattr(experts, "has_bias", False):
        bias = experts.gate_up_proj_bias if has_gate else experts.up_proj_bias
    out = None
    for e in torch.unique(index).tolist():
        if not 0 <= e < experts.num_experts:  # expert-parallel sentinel: not on this rank
            continue
        tok, slot = torch.where(index == e)
        h = x[tok] @ weight[e] if experts.is_transposed else x[tok] @ weight[e].T
        if bias is not None:
            h = h + bias[e]
        h = experts._apply_gate(h) if has_gate else experts.act_fn(h)
        if out is None:
            out = x.new_zeros(x.shape[0], h.shape[-1])
        out.index_add_(0, tok, (h * weights[tok, slot, None].to(h.dtype)).to(out.dtype))
    return out


def _stop_hook(module, args, output):
    raise _StopForward
