"""Independent re-computation of every block state, shared by the adapter test files.

``check_family_identities(adapter, ids)`` captures all 13 states of every block and
recomputes each one from the captured ones with the model's own modules plus an
independent implementation of what is family-specific (RoPE after QK-norm, per-layer
rotary embeddings, GQA, sliding windows, attention sinks, sandwich norms, routed experts,
partial rotary, per-head fused q/k/v, parallel residual).

What is family-specific is one :class:`Reference` per family in :data:`REFERENCES`: the
family's reference-test case, the hand-written forward pass its ``FamilySpec`` is checked
against (and the tiny model it is checked on). ``tests/test_hf_families.py`` runs every
family's case and fails when a ``FamilySpec`` has no case or a case no ``FamilySpec``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

from mtbench.api import Stimulus, StimulusRun  # noqa: E402
from mtbench_plugins.models.hf.adapter import HFAdapter  # noqa: E402
from mtbench_plugins.states.hooks import STATES  # noqa: E402

ALL_STATES = [s[0] for s in STATES]
ROPE_STATES = ["per_head_q_rope", "per_head_k_rope"]
TOL = dict(atol=1e-4, rtol=1e-4)


def _ids(adapter: HFAdapter, text: str) -> list[int]:
    return adapter.tokenizer(text, add_special_tokens=False)["input_ids"]


def _window_ids(adapter: HFAdapter, text: str) -> list[int]:
    """What one window of ``text`` feeds the model: the special prefix (BOS, if the
    tokenizer adds one by default), then the text tokens."""
    return list(adapter.prefix_ids) + _ids(adapter, text)


def _stimulus(*texts: str) -> Stimulus:
    runs = []
    for text in texts:
        words = text.split()
        runs.append(StimulusRun(words, np.arange(len(words), dtype=float), np.arange(len(words)) + 0.5, 10))
    return Stimulus("en", 2.0, runs)


# --------------------------------------------------------------------------- independent math
def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half RoPE of x (T, n_heads*head_dim); cos/sin (T, head_dim) or (T, head_dim/2)."""
    t = x.shape[0]
    x = x.view(t, n_heads, -1)
    if cos.shape[-1] * 2 == x.shape[-1]:  # GPT-OSS returns the half-size tables
        cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos[:, None] + rotated * sin[:, None]).reshape(t, -1)


def _partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int, rotary_dims: int) -> torch.Tensor:
    """GPT-NeoX's partial RoPE: rotate-half on the first ``rotary_dims`` dims of each head
    (cos/sin (T, rotary_dims)), the other dims passed through unchanged."""
    t = x.shape[0]
    x = x.view(t, n_heads, -1)
    rotated = _rope(x[..., :rotary_dims].reshape(t, -1), cos, sin, n_heads).view(t, n_heads, rotary_dims)
    return torch.cat([rotated, x[..., rotary_dims:]], dim=-1).reshape(t, -1)


def _rope_tables(theta: float, dims: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (T, dims) of the original RoPE: frequencies theta^(-2i/dims), each used twice."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _attention(q, k, v, n_heads, n_kv, scale, window=None, sinks=None) -> torch.Tensor:
    """Causal softmax attention per head, grouped kv heads, optional sliding window (a query
    sees the ``window`` most recent positions, itself included) and per-head sink logits
    (an extra softmax column whose probability is dropped)."""
    t = q.shape[0]
    q, k, v = q.view(t, n_heads, -1), k.view(t, n_kv, -1), v.view(t, n_kv, -1)
    group = n_heads // n_kv
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    heads = []
    for h in range(n_heads):
        scores = (q[:, h] @ k[:, h // group].T) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            scores = torch.cat([scores, sinks[h].expand(t, 1)], dim=-1)
            weights = torch.softmax(scores, dim=-1)[:, :-1]
        else:
            weights = torch.softmax(scores, dim=-1)
        heads.append(weights @ v[:, h // group])
    return torch.cat(heads, dim=-1)


def _gpt_oss_moe(mlp, x: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPT-OSS's MoE from its parameters: (router-weighted activated intermediate, MoE output,
    selected experts (T, k)). Interleaved gate/up columns, clamped SwiGLU (alpha, limit)."""
    router, experts = mlp.router, mlp.experts
    logits = x @ router.weight.T + router.bias
    top_value, top_index = torch.topk(logits, cfg.num_experts_per_tok, dim=-1)
    weights = torch.softmax(top_value, dim=-1)
    activated = torch.zeros(x.shape[0], cfg.intermediate_size)
    output = torch.zeros_like(x)
    clamped = 0
    for slot in range(cfg.num_experts_per_tok):
        e = top_index[:, slot]
        gate_up = torch.einsum("th,thj->tj", x, experts.gate_up_proj[e]) + experts.gate_up_proj_bias[e]
        gate, up = gate_up[:, ::2], gate_up[:, 1::2]
        clamped += int((gate > cfg.swiglu_limit).sum() + (up.abs() > cfg.swiglu_limit).sum())
        gate, up = gate.clamp(max=cfg.swiglu_limit), up.clamp(-cfg.swiglu_limit, cfg.swiglu_limit)
        act = (up + 1) * gate * torch.sigmoid(cfg.swiglu_alpha * gate)
        w = weights[:, slot, None]
        activated += w * act
        output += w * (torch.einsum("ti,tih->th", act, experts.down_proj[e]) + experts.down_proj_bias[e])
    assert clamped > 0, "the test needs the SwiGLU clamps to be active"
    return activated, output, top_index


# --------------------------------------------------------------------------- family by family
@dataclass(frozen=True)
class BlockModules:
    """The modules of one decoder block that the reference forward pass calls."""

    attn: object
    in_norm: object  # before attention
    o_proj: object  # attention output projection
    ffn_norm: object  # before the FFN
    attn_out_norm: object = None  # sandwich norm of the attention output, before the residual add
    ffn_out_norm: object = None  # sandwich norm of the FFN output, before the residual add


def _llama_modules(block) -> BlockModules:
    return BlockModules(block.self_attn, block.input_layernorm, block.self_attn.o_proj,
                        block.post_attention_layernorm)


def _gemma3_modules(block) -> BlockModules:
    return BlockModules(block.self_attn, block.input_layernorm, block.self_attn.o_proj,
                        block.pre_feedforward_layernorm, block.post_attention_layernorm,
                        block.post_feedforward_layernorm)


def _gpt2_modules(block) -> BlockModules:
    return BlockModules(block.attn, block.ln_1, block.attn.c_proj, block.ln_2)


def _neox_modules(block) -> BlockModules:
    return BlockModules(block.attention, block.input_layernorm, block.attention.dense, block.post_attention_layernorm)


def _separate_projections(attn, x, cfg):
    return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


def _fused_projection(attn, x, cfg):
    return attn.c_attn(x).split(cfg.hidden_size, dim=-1)


def _fused_per_head_projection(attn, x, cfg):
    """GPT-NeoX: query_key_value's output is, per head, [q_h | k_h | v_h] (heads x 3 x head_dim)."""
    t = x.shape[0]
    qkv = attn.query_key_value(x).view(t, cfg.num_attention_heads, 3, -1)
    return tuple(qkv[:, :, i].reshape(t, -1) for i in range(3))


def _token_embedding(base, ids, positions):
    return base.embed_tokens(ids)


def _embed_in(base, ids, positions):
    return base.embed_in(ids)  # GPT-NeoX: token embedding only (positions are in the rotation)


def _token_and_position_embedding(base, ids, positions):
    return base.wte(ids) + base.wpe(positions)


def _head_dim_scale(cfg, head_dim: int) -> float:
    return head_dim ** -0.5


def _query_pre_attn_scale(cfg, head_dim: int) -> float:
    return cfg.query_pre_attn_scalar ** -0.5


def _gated_ffn(mlp, c: dict, cfg, close: dict) -> None:
    """SwiGLU / GeGLU: down_proj(act(gate_proj(x)) * up_proj(x))."""
    x = c["pre_ffn_norm"]
    torch.testing.assert_close(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), c["ffn_activated_state"], **close)
    torch.testing.assert_close(mlp.down_proj(c["ffn_activated_state"]), c["ffn_output"], **close)


def _gelu_ffn(mlp, c: dict, cfg, close: dict) -> None:
    """GPT-2: c_proj(act(c_fc(x)))."""
    torch.testing.assert_close(mlp.act(mlp.c_fc(c["pre_ffn_norm"])), c["ffn_activated_state"], **close)
    torch.testing.assert_close(mlp.c_proj(c["ffn_activated_state"]), c["ffn_output"], **close)


def _neox_gelu_ffn(mlp, c: dict, cfg, close: dict) -> None:
    """GPT-NeoX: dense_4h_to_h(gelu(dense_h_to_4h(x))), exact (erf) GELU as Pythia's hidden_act."""
    assert cfg.hidden_act == "gelu"
    activated = torch.nn.functional.gelu(mlp.dense_h_to_4h(c["pre_ffn_norm"]))
    torch.testing.assert_close(activated, c["ffn_activated_state"], **close)
    torch.testing.assert_close(mlp.dense_4h_to_h(c["ffn_activated_state"]), c["ffn_output"], **close)


def _routed_experts_ffn(mlp, c: dict, cfg, close: dict) -> None:
    """GPT-OSS: router-weighted clamped-SwiGLU experts (:func:`_gpt_oss_moe`)."""
    activated, moe_out, chosen = _gpt_oss_moe(mlp, c["pre_ffn_norm"], cfg)
    torch.testing.assert_close(activated, c["ffn_activated_state"], **close)
    torch.testing.assert_close(moe_out, c["ffn_output"], **close)
    if cfg.num_experts_per_tok == 1:  # one expert, weight 1: its down projection of the state
        e = chosen[:, 0]
        down = torch.einsum("ti,tih->th", c["ffn_activated_state"], mlp.experts.down_proj[e])
        torch.testing.assert_close(down + mlp.experts.down_proj_bias[e], c["ffn_output"], **close)
    assert c["ffn_activated_state"].shape[1] == cfg.intermediate_size


@dataclass(frozen=True)
class Reference:
    """One family's reference-test case: the hand-written forward pass of its blocks (what
    differs from Llama's), and the tiny model it is checked on.

    Attributes
    ----------
    tiny : dict
        Config overrides of the family's tiny model (``save_tiny_model(folder, family, **tiny)``).
    modules : callable
        Decoder block -> :class:`BlockModules`.
    qkv : callable
        ``(attention module, normed input, config) -> (q, k, v)``, as projected.
    rope : bool
        q and k are rotated (after the ``q_norm``/``k_norm`` the attention module may have).
    per_layer_rope : bool
        Sliding-window and full layers have their own rotary embeddings (checked to differ).
    scale : callable
        ``(config, head_dim) -> `` softmax scale of the attention scores.
    embed : callable
        ``(base model, ids (1, T), positions (1, T)) ->`` block-1 input.
    ffn : callable
        ``(mlp, captured states of the block, config, tolerances)``: asserts the FFN states.
    final_norm : str
        Attribute of the base model normalising the last block's output.
    rotary_dims : callable, optional
        ``(config, head_dim) ->`` dims of each head that RoPE rotates, the first ones (GPT-NeoX:
        partial rotary); the tables are then recomputed from ``rope_theta`` here. None: all.
    parallel_residual : bool
        The block is ``x + attn(ln1(x)) + ffn(ln2(x))`` (GPT-NeoX): no post-attention residual,
        the FFN norm reads the block input.
    """

    tiny: dict
    modules: Callable = _llama_modules
    qkv: Callable = _separate_projections
    rope: bool = True
    per_layer_rope: bool = False
    scale: Callable = _head_dim_scale
    embed: Callable = _token_embedding
    ffn: Callable = _gated_ffn
    final_norm: str = "norm"
    rotary_dims: Callable | None = None
    parallel_residual: bool = False


def _neox_rotary_dims(cfg, head_dim: int) -> int:
    return int(head_dim * cfg.rope_parameters["partial_rotary_factor"])


_SLIDING_FULL = ["sliding_attention", "full_attention", "sliding_attention"]

# family (config.model_type) -> its reference-test case, one per FamilySpec. Windows of 4-6
# tokens on ~35-token texts, so the sliding-window masks matter; swiglu_limit=1 so
# GPT-OSS's clamps are active.
REFERENCES: dict[str, Reference] = {
    "llama": Reference(tiny={}),
    "mistral": Reference(tiny=dict(sliding_window=6)),
    "qwen2": Reference(tiny={}),  # q/k/v biases: part of the projections
    "qwen3": Reference(tiny={}),  # QK-norm: the attention module's q_norm/k_norm, before RoPE
    "gemma3_text": Reference(tiny=dict(sliding_window=4, layer_types=_SLIDING_FULL), modules=_gemma3_modules,
                             per_layer_rope=True, scale=_query_pre_attn_scale),
    "gpt_oss": Reference(tiny=dict(sliding_window=4, layer_types=_SLIDING_FULL, swiglu_limit=1.0),
                         ffn=_routed_experts_ffn),  # sinks: the attention module's, in the softmax
    "gpt2": Reference(tiny={}, modules=_gpt2_modules, qkv=_fused_projection, rope=False,
                      embed=_token_and_position_embedding, ffn=_gelu_ffn, final_norm="ln_f"),
    # Pythia: fused per-head q/k/v, RoPE on the first rotary_pct (0.25) of each head, parallel residual
    "gpt_neox": Reference(tiny={}, modules=_neox_modules, qkv=_fused_per_head_projection, embed=_embed_in,
                          ffn=_neox_gelu_ffn, final_norm="final_layer_norm", rotary_dims=_neox_rotary_dims,
                          parallel_residual=True),
}


def reference(family: str) -> Reference:
    """The reference-test case of ``family`` (an assertion error naming the fix when it has none)."""
    assert family in REFERENCES, (f"family {family!r} has no reference-test case: add its hand-written forward "
                                  "pass to REFERENCES in tests/hf_checks.py")
    return REFERENCES[family]


# --------------------------------------------------------------------------- the block equations
def _cos_sin(base, x, positions, layer_type):
    rotary = base.rotary_emb
    if "layer_type" in inspect.signature(rotary.forward).parameters:
        cos, sin = rotary(x, positions, layer_type=layer_type)
    else:
        cos, sin = rotary(x, positions)
    return cos[0], sin[0]


def check_family_identities(adapter: HFAdapter, ids: list[int], atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Recompute every state of every block from the captured ones; all must agree."""
    ref = reference(adapter.family)
    model = adapter.model
    base = getattr(model, model.base_model_prefix)
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", n_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    scale = ref.scale(cfg, head_dim)
    layer_types = getattr(cfg, "layer_types", None)
    states = adapter.available_states()
    caps = adapter.capture(ids, states, range(1, adapter.n_layers + 1))
    t = len(ids)
    ids_t = torch.tensor(ids)[None]
    positions = torch.arange(t)[None]
    close = dict(atol=atol, rtol=rtol)
    with torch.inference_mode():
        plain = model(ids_t, output_hidden_states=True, use_cache=False).hidden_states
        torch.testing.assert_close(caps[1, "input_hidden_state"], ref.embed(base, ids_t, positions)[0], **close)
        if ref.per_layer_rope:  # the two layer types must really rotate differently
            assert not torch.allclose(_cos_sin(base, plain[0], positions, "sliding_attention")[0],
                                      _cos_sin(base, plain[0], positions, "full_attention")[0])
        for layer in range(1, adapter.n_layers + 1):
            i = layer - 1
            block = base.get_submodule(adapter.spec.layers)[i]
            m = ref.modules(block)
            c = {s: caps[layer, s] for s in states}
            layer_type = layer_types[i] if layer_types else None
            if layer_types:
                window = cfg.sliding_window if layer_type == "sliding_attention" else None
            else:
                window = getattr(cfg, "sliding_window", None)
            torch.testing.assert_close(m.in_norm(c["input_hidden_state"]), c["pre_attn_norm"], **close)

            # q, k, v and what enters attention
            q, k, v = ref.qkv(m.attn, c["pre_attn_norm"], cfg)
            if ref.rope:
                q_normed, k_normed = c["per_head_q"], c["per_head_k"]
                if hasattr(m.attn, "q_norm"):  # Qwen3 / Gemma 3: per-head RMSNorm before RoPE
                    q_normed = m.attn.q_norm(q_normed.view(t, n_heads, head_dim)).reshape(t, -1)
                    k_normed = m.attn.k_norm(k_normed.view(t, n_kv, head_dim)).reshape(t, -1)
                    assert not torch.allclose(q_normed, c["per_head_q"], atol=1e-2)
                cos, sin = _cos_sin(base, plain[0], positions, layer_type)
                if ref.rotary_dims is not None:  # partial rotary: tables of the rotated dims only
                    dims = ref.rotary_dims(cfg, head_dim)
                    assert 0 < dims < head_dim and cos.shape[-1] == dims
                    cos, sin = _rope_tables(cfg.rope_parameters["rope_theta"], dims, t)
                    torch.testing.assert_close(cos, _cos_sin(base, plain[0], positions, layer_type)[0], **close)

                    def rotate(x, heads, cos=cos, sin=sin, dims=dims):
                        return _partial_rope(x, cos, sin, heads, dims)
                else:
                    def rotate(x, heads, cos=cos, sin=sin):
                        return _rope(x, cos, sin, heads)
                torch.testing.assert_close(rotate(q_normed, n_heads), c["per_head_q_rope"], **close)
                torch.testing.assert_close(rotate(k_normed, n_kv), c["per_head_k_rope"], **close)
                q_in, k_in = c["per_head_q_rope"], c["per_head_k_rope"]
            else:
                q_in, k_in = c["per_head_q"], c["per_head_k"]
            torch.testing.assert_close(q, c["per_head_q"], **close)
            torch.testing.assert_close(k, c["per_head_k"], **close)
            torch.testing.assert_close(v, c["per_head_v"], **close)
            assert c["per_head_k"].shape[1] == c["per_head_v"].shape[1] == n_kv * head_dim  # no GQA repetition

            sinks = m.attn.sinks if hasattr(m.attn, "sinks") else None
            context = _attention(q_in, k_in, c["per_head_v"], n_heads, n_kv, scale, window, sinks)
            torch.testing.assert_close(context, c["per_head_context_vector"], **close)
            if (window is not None and window < t) or sinks is not None:  # the mask / sinks make a difference
                assert not torch.allclose(context, _attention(q_in, k_in, c["per_head_v"], n_heads, n_kv, scale),
                                          atol=1e-3)
            torch.testing.assert_close(m.o_proj(c["per_head_context_vector"]), c["attn_output"], **close)

            # residual stream, FFN
            if ref.parallel_residual:  # x + attn(ln1(x)) + ffn(ln2(x)): x + attn_output is never formed
                assert "post_attn_hidden_state" not in c
                torch.testing.assert_close(m.ffn_norm(c["input_hidden_state"]), c["pre_ffn_norm"], **close)
                ref.ffn(block.mlp, c, cfg, close)
                block_out = c["input_hidden_state"] + c["attn_output"] + c["ffn_output"]
                _check_block_output(adapter, base, ref, layer, block_out, caps, plain, close)
                continue
            attn_residual = c["attn_output"]
            if m.attn_out_norm is not None:  # sandwich norm on the attention output
                attn_residual = m.attn_out_norm(attn_residual)
            torch.testing.assert_close(c["input_hidden_state"] + attn_residual, c["post_attn_hidden_state"], **close)
            torch.testing.assert_close(m.ffn_norm(c["post_attn_hidden_state"]), c["pre_ffn_norm"], **close)
            ref.ffn(block.mlp, c, cfg, close)
            ffn_residual = c["ffn_output"]
            if m.ffn_out_norm is not None:
                ffn_residual = m.ffn_out_norm(ffn_residual)
            block_out = c["post_attn_hidden_state"] + ffn_residual
            _check_block_output(adapter, base, ref, layer, block_out, caps, plain, close)


def _check_block_output(adapter, base, ref, layer, block_out, caps, plain, close) -> None:
    """The recomputed block output is the next block's captured input and the model's own hidden state."""
    if layer < adapter.n_layers:
        torch.testing.assert_close(block_out, caps[layer + 1, "input_hidden_state"], **close)
        torch.testing.assert_close(block_out, plain[layer][0], **close)
    else:  # transformers applies the final norm to the last hidden state it returns
        torch.testing.assert_close(getattr(base, ref.final_norm)(block_out), plain[layer][0], **close)
