"""Where each of the 13 block states sits, family by family: data, not code.

A family is one :class:`FamilySpec` in :data:`HOOK_MAPS`, keyed by ``config.model_type``.
Each spec is checked against one hand-written forward pass of its family
(``tests/hf_checks.py``, ``REFERENCES``) and has one row in the family table of
``docs/states.md`` (``tests/test_hf_families.py`` fails when either is missing).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --------------------------------------------------------------------------- ports
# Where a state is read, relative to one decoder block:
#   (submodule path, port); path "" is the block itself.
#   port INPUT  -> first positional input of that module (forward pre-hook)
#   port OUTPUT -> its output (first element when it returns a tuple)
#   port QUERY / KEY / VALUE -> query / key / value as the attention function receives
#        them (after RoPE and any QK-norm; key/value not repeated for GQA); path is the
#        attention module. Each layer's attention receives its own RoPE (Gemma 3: the
#        sliding-window or the global one) because the tap sits after the rotation.
#   port ROUTED -> path is a Mixture-of-Experts ``experts`` module (transformers'
#        ``use_experts_implementation`` layout); the state is the router-weighted sum over
#        each token's selected experts of that expert's activated intermediate (the input
#        of its down projection), sum_k w_k * gate(x @ W_gate_up[e_k] + b[e_k]), width =
#        the expert intermediate size. No module returns it (the eager loop and the
#        batched/grouped kernels keep it inside the experts' forward), so a forward hook on
#        the experts module recomputes it from that module's own inputs (hidden states,
#        selected experts, routing weights), weights and gate (``experts._apply_gate``:
#        GPT-OSS's clamped SwiGLU); this costs one more up projection of the routed tokens.
#   port FUSED_Q / FUSED_K / FUSED_V -> path is a fused q/k/v projection laid out per head
#        (GPT-NeoX's query_key_value: its output viewed (T, heads, 3 * head_dim) is, per head,
#        [q_h | k_h | v_h], which the attention module chunks in three); the state is that
#        part of every head, heads x head_dim flattened: the projection, before RoPE.
#        (GPT-2's c_attn is [q | k | v] over all heads instead: read there at QUERY/KEY/VALUE.)
INPUT, OUTPUT, QUERY, KEY, VALUE = "input", "output", "attention_query", "attention_key", "attention_value"
ROUTED = "routed_expert_activation"
FUSED_Q, FUSED_K, FUSED_V = "fused_qkv_query", "fused_qkv_key", "fused_qkv_value"

# --------------------------------------------------------------------------- layouts
_LLAMA_LAYOUT: dict[str, tuple[str, str]] = {
    "input_hidden_state": ("", INPUT),
    "pre_attn_norm": ("input_layernorm", OUTPUT),
    # q_proj / k_proj outputs: before any QK-norm (Qwen3, Gemma 3) and before RoPE.
    "per_head_q": ("self_attn.q_proj", OUTPUT),
    # As attention receives it: q_norm(q_proj) (where the family has a q_norm) then RoPE.
    "per_head_q_rope": ("self_attn", QUERY),
    "per_head_k": ("self_attn.k_proj", OUTPUT),
    "per_head_k_rope": ("self_attn", KEY),
    "per_head_v": ("self_attn.v_proj", OUTPUT),
    "per_head_context_vector": ("self_attn.o_proj", INPUT),
    "attn_output": ("self_attn.o_proj", OUTPUT),
    # Llama adds the attention output to the residual and feeds the sum to this norm.
    "post_attn_hidden_state": ("post_attention_layernorm", INPUT),
    "pre_ffn_norm": ("post_attention_layernorm", OUTPUT),
    # SwiGLU: down_proj reads act(gate_proj(x)) * up_proj(x).
    "ffn_activated_state": ("mlp.down_proj", INPUT),
    "ffn_output": ("mlp", OUTPUT),
}

# Gemma 3: sandwich norms. The block is
#   h = x + post_attention_layernorm(o_proj(attn(input_layernorm(x))))
#   y = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))
# attn_output is the o_proj output *before* post_attention_layernorm and ffn_output the
# mlp output *before* post_feedforward_layernorm (the raw sub-block outputs, as in every
# other family); post_attn_hidden_state is h (input of pre_feedforward_layernorm) and
# pre_ffn_norm its normed copy (what the MLP reads). QK-norm as in Qwen3 (see HOOK_MAPS).
_GEMMA3_LAYOUT = {
    **_LLAMA_LAYOUT,
    "post_attn_hidden_state": ("pre_feedforward_layernorm", INPUT),
    "pre_ffn_norm": ("pre_feedforward_layernorm", OUTPUT),
    # GeGLU: down_proj reads gelu_tanh(gate_proj(x)) * up_proj(x).
}

# GPT-OSS: Llama's attention layout (plus learned per-head sink logits inside the
# softmax, which no state exposes) and a Mixture-of-Experts FFN: ffn_activated_state is
# the router-weighted sum of the selected experts' clamped-SwiGLU intermediates (see
# ROUTED), ffn_output the MoE block output (sum of the weighted expert outputs).
_GPT_OSS_LAYOUT = {
    **_LLAMA_LAYOUT,
    "ffn_activated_state": ("mlp.experts", ROUTED),
}

# GPT-2: fused c_attn (q, k, v in one Conv1D), so q/k/v are read where attention
# receives them (split into heads; no RoPE, no GQA); learned absolute positions are
# already in the block-1 input. LayerNorm instead of RMSNorm, GELU MLP.
_NO_ROPE = "no rotary embeddings"
_GPT2_LAYOUT = {
    "input_hidden_state": ("", INPUT),
    "pre_attn_norm": ("ln_1", OUTPUT),
    "per_head_q": ("attn", QUERY),
    "per_head_k": ("attn", KEY),
    "per_head_v": ("attn", VALUE),
    "per_head_context_vector": ("attn.c_proj", INPUT),
    "attn_output": ("attn.c_proj", OUTPUT),
    "post_attn_hidden_state": ("ln_2", INPUT),
    "pre_ffn_norm": ("ln_2", OUTPUT),
    "ffn_activated_state": ("mlp.c_proj", INPUT),
    "ffn_output": ("mlp", OUTPUT),
}

# GPT-NeoX (Pythia): parallel residual, y = x + dense(attn(ln1(x))) + mlp(ln2(x)) with
# ln1 = input_layernorm, ln2 = post_attention_layernorm (LayerNorms with bias). x + attn_output
# is never formed (the FFN reads ln2 of the block input), so post_attn_hidden_state does not
# exist (not_applicable in HOOK_MAPS); pre_ffn_norm is ln2(x). Fused per-head query_key_value
# (FUSED_*): per_head_q/k/v are its parts before RoPE. RoPE rotates only the first
# rotary_pct (0.25) of each head's dims: the *_rope states are q/k as attention receives
# them, rotated quarter and passed-through rest. GELU MLP: ffn_activated_state is the input
# of dense_4h_to_h, gelu(dense_h_to_4h(ln2(x))).
_GPT_NEOX_LAYOUT = {
    "input_hidden_state": ("", INPUT),
    "pre_attn_norm": ("input_layernorm", OUTPUT),
    "per_head_q": ("attention.query_key_value", FUSED_Q),
    "per_head_q_rope": ("attention", QUERY),
    "per_head_k": ("attention.query_key_value", FUSED_K),
    "per_head_k_rope": ("attention", KEY),
    "per_head_v": ("attention.query_key_value", FUSED_V),
    "per_head_context_vector": ("attention.dense", INPUT),
    "attn_output": ("attention.dense", OUTPUT),
    "pre_ffn_norm": ("post_attention_layernorm", OUTPUT),
    "ffn_activated_state": ("mlp.dense_4h_to_h", INPUT),
    "ffn_output": ("mlp", OUTPUT),
}
_PARALLEL_RESIDUAL = ("parallel residual: the block adds attention and FFN outputs to its input together, "
                      "x + attn_output is never formed")


@dataclass(frozen=True)
class FamilySpec:
    """Where things are in one architecture family.

    Attributes
    ----------
    layers : str
        Path of the ``ModuleList`` of decoder blocks, relative to the base model
        (``model.<base_model_prefix>``).
    states : dict of str to (str, str)
        State name -> (submodule path relative to a block, port); see the port constants.
    config_class, model_class : str
        The family's config and causal-LM classes, by name in transformers (the tiny test
        models are built from them; real models load through ``AutoModelForCausalLM``).
    summary : str
        What sets the family apart (its row of the family table in ``docs/states.md``).
    not_applicable : dict of str to str
        States the family does not have -> why (e.g. no RoPE: no ``*_rope`` states).
    requires : dict of str to object
        Config values the map assumes (``config.<key> == value``); a model of the family
        with another value is refused when it loads (e.g. GPT-NeoX's parallel residual).
    """

    layers: str
    states: dict[str, tuple[str, str]]
    config_class: str
    model_class: str
    summary: str
    not_applicable: dict[str, str] = field(default_factory=dict)
    requires: dict[str, object] = field(default_factory=dict)


# Mistral and Qwen2 blocks have Llama's module names and order (Qwen2 adds q/k/v biases,
# which the q_proj/k_proj/v_proj outputs include). Qwen3 too, plus a per-head RMSNorm on
# q and k (q_norm/k_norm) applied before RoPE: per_head_q/per_head_k stay the raw
# q_proj/k_proj outputs and the *_rope states are RoPE(q_norm(q)) / RoPE(k_norm(k)).
HOOK_MAPS: dict[str, FamilySpec] = {
    "llama": FamilySpec(
        layers="layers", states=_LLAMA_LAYOUT, config_class="LlamaConfig", model_class="LlamaForCausalLM",
        summary="RMSNorm, RoPE, grouped-query attention, SwiGLU MLP (the layout the others start from)"),
    "mistral": FamilySpec(
        layers="layers", states=_LLAMA_LAYOUT, config_class="MistralConfig", model_class="MistralForCausalLM",
        summary="Llama's blocks; sliding-window attention"),
    "qwen2": FamilySpec(
        layers="layers", states=_LLAMA_LAYOUT, config_class="Qwen2Config", model_class="Qwen2ForCausalLM",
        summary="Llama's blocks; q/k/v projections with biases"),
    "qwen3": FamilySpec(
        layers="layers", states=_LLAMA_LAYOUT, config_class="Qwen3Config", model_class="Qwen3ForCausalLM",
        summary="Llama's blocks; QK-norm (per-head RMSNorm of q and k before RoPE)"),
    # Gemma 3 text-only causal LM (Gemma3ForCausalLM; also what the gemma-3-270m GGUF loads as)
    "gemma3_text": FamilySpec(
        layers="layers", states=_GEMMA3_LAYOUT, config_class="Gemma3TextConfig", model_class="Gemma3ForCausalLM",
        summary="QK-norm, sandwich norms, sliding-window and global layers with their own RoPE, GeGLU MLP"),
    "gpt_oss": FamilySpec(
        layers="layers", states=_GPT_OSS_LAYOUT, config_class="GptOssConfig", model_class="GptOssForCausalLM",
        summary="attention sinks, sliding-window and full layers, Mixture-of-Experts FFN (routed experts)"),
    "gpt2": FamilySpec(
        layers="h", states=_GPT2_LAYOUT, config_class="GPT2Config", model_class="GPT2LMHeadModel",
        summary="fused q/k/v projection, learned absolute positions (no RoPE), LayerNorm, GELU MLP",
        not_applicable={"per_head_q_rope": _NO_ROPE, "per_head_k_rope": _NO_ROPE}),
    # Pythia (EleutherAI), GPT-NeoX-20B
    "gpt_neox": FamilySpec(
        layers="layers", states=_GPT_NEOX_LAYOUT, config_class="GPTNeoXConfig", model_class="GPTNeoXForCausalLM",
        summary="parallel residual, fused per-head q/k/v projection, RoPE on the first rotary_pct of each head, "
                "LayerNorm, GELU MLP",
        not_applicable={"post_attn_hidden_state": _PARALLEL_RESIDUAL},
        requires={"use_parallel_residual": True}),
}
