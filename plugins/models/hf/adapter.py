"""The Hugging Face causal-LM adapter: one class, :class:`HFAdapter`, for every family.

One forward pass per context window captures every requested (layer, state) (see
:mod:`~mtbench_plugins.models.hf.taps`); in :meth:`HFAdapter.extract_stream` each captured
tensor is folded into per-word sums immediately and finished words are handed out after
each window, so memory is one window's words x dims, never the text's (``mtbench.features``
streams them into its resumable disk cache).

Every window starts with the tokenizer's default special prefix (the BOS token of models
trained with one, e.g. Gemma's ``<bos>``; nothing for tokenizers that add none, e.g.
SmolLM2's), as in training; those prefix tokens are never pooled into words (see
:func:`~mtbench_plugins.models.hf.words.special_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mtbench.api import Stimulus
from mtbench.errors import MtbenchError, unknown_name_error

from .families import HOOK_MAPS
from .runtime import DTYPES, resolve_device
from .taps import ATTENTION_IMPLEMENTATIONS, forward_with_taps
from .words import special_prefix, token_word_pairs, windows

# Bump when the extraction algorithm changes its numbers: it is part of settings(), hence
# of the feature cache key. 2: windows start with the tokenizer's special prefix (BOS).
EXTRACTOR_VERSION = 2
POOLINGS = ("mean", "last")


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
        for key, value in HOOK_MAPS[family].requires.items():  # what the family's map assumes
            if getattr(model.config, key, value) != value:
                raise MtbenchError(f"model {name}: {family} with {key}={getattr(model.config, key)} is not supported "
                                   f"(the {family} state map reads {key}={value} models); use such a model")
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
        if current not in ATTENTION_IMPLEMENTATIONS.values():
            # eager stays eager (exact softmax); everything else (sdpa, flash...) -> sdpa, unless
            # the family computes something sdpa cannot (GPT-OSS's attention sinks:
            # _supports_sdpa is False), then its own eager function.
            eager = current == "eager" or not getattr(model, "_supports_sdpa", True)
            self.model.set_attn_implementation(ATTENTION_IMPLEMENTATIONS["eager" if eager else "sdpa"])
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
        seen = forward_with_taps(self.base, self.blocks, self.spec, ids.to(self.input_device)[None], wanted, sink)
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


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise MtbenchError(f"{name} must be a positive integer, got {value!r}")
    return number
