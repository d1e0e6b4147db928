"""Independent re-computation of every block state, shared by the adapter test files.

``check_family_identities(adapter, ids)`` captures all 13 states of every block and
recomputes each one from the captured ones with the model's own modules plus an
independent implementation of what is family-specific (RoPE after QK-norm, per-layer
rotary embeddings, GQA, sliding windows, attention sinks, sandwich norms, routed experts).
"""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

from mtbench.api import Stimulus, StimulusRun  # noqa: E402
from mtbench_plugins.models.hf import HFAdapter  # noqa: E402
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
    model, family = adapter.model, adapter.family
    base = getattr(model, model.base_model_prefix)
    cfg = model.config
    gpt2 = family == "gpt2"
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", n_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    scale = (cfg.query_pre_attn_scalar if family == "gemma3_text" else head_dim) ** -0.5
    layer_types = getattr(cfg, "layer_types", None)
    states = adapter.available_states()
    caps = adapter.capture(ids, states, range(1, adapter.n_layers + 1))
    t = len(ids)
    ids_t = torch.tensor(ids)[None]
    positions = torch.arange(t)[None]
    close = dict(atol=atol, rtol=rtol)
    with torch.inference_mode():
        plain = model(ids_t, output_hidden_states=True, use_cache=False).hidden_states
        embedded = base.wte(ids_t) + base.wpe(positions) if gpt2 else base.embed_tokens(ids_t)
        torch.testing.assert_close(caps[1, "input_hidden_state"], embedded[0], **close)
        if family == "gemma3_text":  # the two layer types must really rotate differently
            assert not torch.allclose(_cos_sin(base, plain[0], positions, "sliding_attention")[0],
                                      _cos_sin(base, plain[0], positions, "full_attention")[0])
        for layer in range(1, adapter.n_layers + 1):
            i = layer - 1
            block = base.get_submodule(adapter.spec.layers)[i]
            c = {s: caps[layer, s] for s in states}
            layer_type = layer_types[i] if layer_types else None
            if layer_types:
                window = cfg.sliding_window if layer_type == "sliding_attention" else None
            else:
                window = getattr(cfg, "sliding_window", None)
            if gpt2:
                attn, in_norm, ffn_norm, o_proj = block.attn, block.ln_1, block.ln_2, block.attn.c_proj
            else:
                attn, in_norm, o_proj = block.self_attn, block.input_layernorm, block.self_attn.o_proj
                ffn_norm = block.pre_feedforward_layernorm if family == "gemma3_text" else block.post_attention_layernorm
            torch.testing.assert_close(in_norm(c["input_hidden_state"]), c["pre_attn_norm"], **close)

            # q, k, v and what enters attention
            if gpt2:
                q, k, v = attn.c_attn(c["pre_attn_norm"]).split(cfg.hidden_size, dim=-1)
                q_in, k_in = c["per_head_q"], c["per_head_k"]
            else:
                q, k, v = attn.q_proj(c["pre_attn_norm"]), attn.k_proj(c["pre_attn_norm"]), attn.v_proj(
                    c["pre_attn_norm"])
                q_normed, k_normed = c["per_head_q"], c["per_head_k"]
                if hasattr(attn, "q_norm"):  # Qwen3 / Gemma 3: per-head RMSNorm before RoPE
                    q_normed = attn.q_norm(q_normed.view(t, n_heads, head_dim)).reshape(t, -1)
                    k_normed = attn.k_norm(k_normed.view(t, n_kv, head_dim)).reshape(t, -1)
                    assert not torch.allclose(q_normed, c["per_head_q"], atol=1e-2)
                cos, sin = _cos_sin(base, plain[0], positions, layer_type)
                torch.testing.assert_close(_rope(q_normed, cos, sin, n_heads), c["per_head_q_rope"], **close)
                torch.testing.assert_close(_rope(k_normed, cos, sin, n_kv), c["per_head_k_rope"], **close)
                q_in, k_in = c["per_head_q_rope"], c["per_head_k_rope"]
            torch.testing.assert_close(q, c["per_head_q"], **close)
            torch.testing.assert_close(k, c["per_head_k"], **close)
            torch.testing.assert_close(v, c["per_head_v"], **close)
            assert c["per_head_k"].shape[1] == c["per_head_v"].shape[1] == n_kv * head_dim  # no GQA repetition

            sinks = attn.sinks if hasattr(attn, "sinks") else None
            context = _attention(q_in, k_in, c["per_head_v"], n_heads, n_kv, scale, window, sinks)
            torch.testing.assert_close(context, c["per_head_context_vector"], **close)
            if (window is not None and window < t) or sinks is not None:  # the mask / sinks make a difference
                assert not torch.allclose(context, _attention(q_in, k_in, c["per_head_v"], n_heads, n_kv, scale),
                                          atol=1e-3)
            torch.testing.assert_close(o_proj(c["per_head_context_vector"]), c["attn_output"], **close)

            # residual stream, FFN
            attn_residual = c["attn_output"]
            if family == "gemma3_text":  # sandwich norm on the attention output
                attn_residual = block.post_attention_layernorm(attn_residual)
            torch.testing.assert_close(c["input_hidden_state"] + attn_residual, c["post_attn_hidden_state"], **close)
            torch.testing.assert_close(ffn_norm(c["post_attn_hidden_state"]), c["pre_ffn_norm"], **close)
            mlp, x = block.mlp, c["pre_ffn_norm"]
            if family == "gpt_oss":
                activated, moe_out, chosen = _gpt_oss_moe(mlp, x, cfg)
                torch.testing.assert_close(activated, c["ffn_activated_state"], **close)
                torch.testing.assert_close(moe_out, c["ffn_output"], **close)
                if cfg.num_experts_per_tok == 1:  # one expert, weight 1: its down projection of the state
                    e = chosen[:, 0]
                    down = torch.einsum("ti,tih->th", c["ffn_activated_state"], mlp.experts.down_proj[e])
                    torch.testing.assert_close(down + mlp.experts.down_proj_bias[e], c["ffn_output"], **close)
                assert c["ffn_activated_state"].shape[1] == cfg.intermediate_size
            elif gpt2:
                torch.testing.assert_close(mlp.act(mlp.c_fc(x)), c["ffn_activated_state"], **close)
                torch.testing.assert_close(mlp.c_proj(c["ffn_activated_state"]), c["ffn_output"], **close)
            else:
                torch.testing.assert_close(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), c["ffn_activated_state"],
                                           **close)
                torch.testing.assert_close(mlp.down_proj(c["ffn_activated_state"]), c["ffn_output"], **close)
            ffn_residual = c["ffn_output"]
            if family == "gemma3_text":
                ffn_residual = block.post_feedforward_layernorm(ffn_residual)
            block_out = c["post_attn_hidden_state"] + ffn_residual
            if layer < adapter.n_layers:
                torch.testing.assert_close(block_out, caps[layer + 1, "input_hidden_state"], **close)
                torch.testing.assert_close(block_out, plain[layer][0], **close)
            else:  # transformers applies the final norm to the last hidden state it returns
                final_norm = base.ln_f if gpt2 else base.norm
                torch.testing.assert_close(final_norm(block_out), plain[layer][0], **close)
