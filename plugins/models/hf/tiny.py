"""Tiny, offline, deterministic random models of every family, for tests and plugin authors.

:func:`save_tiny_model` saves a random-initialised causal LM of a family (the transformers
classes its :class:`~mtbench_plugins.models.hf.families.FamilySpec` names) and a tiny
byte-level BPE tokenizer trained offline; :func:`save_tiny_llama` is the Llama of most tests
(and of the ``mtbench_tiny_model`` pytest fixture). The folders load with ``hf:<folder>``.

Nothing here downloads anything; heavy imports (torch, transformers, tokenizers) happen
inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .families import HOOK_MAPS

# Enough English to give a byte-level BPE common words as single tokens while rarer
# words (and any word absent from this text) split into several tokens.
_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "In the beginning the story was told in a small room by an old man with a quiet voice.",
    "We listened to the radio every night and the words carried us far away from home.",
    "A little girl walked into the forest to find her grandmother's house near the river.",
    "They said that the weather would change, but the sun was still shining in the morning.",
    "Then he looked at me and laughed, because nobody had ever asked him such a question.",
]


def save_tiny_llama(
    path: str | Path,
    seed: int = 0,
    n_layers: int = 3,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab_size: int = 320,
    extra_text: Iterable[str] = (),
) -> Path:
    """Save a random-initialised ``LlamaForCausalLM`` and a fast tokenizer to a folder.

    The folder loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and with
    mtbench's ``hf:<path>`` model. Same arguments, same files (weights and tokenizer are
    both seeded/deterministic).

    Parameters
    ----------
    path : str or Path
        Folder to create (parents too); existing files are overwritten.
    seed : int
        Seed of the weight initialisation.
    n_layers : int
        Number of transformer blocks.
    hidden : int
        Residual stream width.
    heads, kv_heads : int
        Query heads and key/value heads (grouped-query attention when fewer kv heads);
        ``head_dim = hidden // heads``.
    intermediate : int
        FFN width.
    vocab_size : int
        Target vocabulary of the byte-level BPE (256 bytes + merges + 1 special token).
    extra_text : iterable of str
        More training text for the tokenizer (e.g. the words of a test stimulus).

    Returns
    -------
    Path
        The folder.
    """
    return save_tiny_model(path, "llama", seed=seed, n_layers=n_layers, hidden=hidden, heads=heads,
                           kv_heads=kv_heads, intermediate=intermediate, vocab_size=vocab_size, extra_text=extra_text)


def _tiny_tokenizer(vocab_size: int, extra_text: Iterable[str], add_bos: bool = False):
    """Byte-level BPE (GPT-2 style: leading spaces belong to the next token), trained
    offline on a fixed text, so any string is encodable and offsets are available.

    With ``add_bos``, encoding with special tokens (the default) prepends the BOS token
    ``<|endoftext|>`` (a post-processor, as Gemma's tokenizer does); same vocabulary."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*_TRAINING_TEXT, *extra_text], trainer=trainer)
    if add_bos:
        bos = "<|endoftext|>"
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def save_tiny_model(
    path: str | Path,
    family: str = "llama",
    seed: int = 0,
    n_layers: int = 3,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab_size: int = 320,
    extra_text: Iterable[str] = (),
    add_bos: bool = False,
    **config,
) -> Path:
    """Save a random-initialised causal LM of ``family`` and the tiny BPE tokenizer.

    Like :func:`save_tiny_llama` (same tokenizer, same kind of non-degenerate weights),
    for any family of :data:`~mtbench_plugins.models.hf.families.HOOK_MAPS` (``llama``,
    ``mistral``, ``qwen2``, ``qwen3``, ``gemma3_text``, ``gpt_oss``, ``gpt2``, ``gpt_neox``), built from
    the transformers classes its :class:`~mtbench_plugins.models.hf.families.FamilySpec` names.

    Parameters
    ----------
    path : str or Path
        Folder to create (parents too); existing files are overwritten.
    family : str
        ``config.model_type`` of the model to build.
    seed, n_layers, hidden, heads, kv_heads, intermediate, vocab_size, extra_text
        As in :func:`save_tiny_llama`; ``head_dim = hidden // heads``. ``intermediate``
        is the FFN width (per expert for ``gpt_oss``); gpt2 and gpt_neox have no grouped
        kv heads (``kv_heads`` is ignored).
    add_bos : bool
        The tokenizer prepends its BOS token when encoding with special tokens (like
        Gemma's); same vocabulary and weights as without.
    **config
        Overrides of the family's config (e.g. ``sliding_window=4``, ``layer_types=[...]``,
        ``num_local_experts=4``, ``num_experts_per_tok=2``, ``use_parallel_residual=False``).

    Returns
    -------
    Path
        The folder.
    """
    import torch
    import transformers

    if family not in HOOK_MAPS:
        raise ValueError(f"unknown family {family!r}: use one of {', '.join(HOOK_MAPS)}")
    config_name, model_name = HOOK_MAPS[family].config_class, HOOK_MAPS[family].model_class
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(vocab_size, extra_text, add_bos=add_bos)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    if family == "gpt2":
        settings = dict(vocab_size=len(tokenizer), n_embd=hidden, n_layer=n_layers, n_head=heads,
                        n_inner=intermediate, n_positions=2048, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    elif family == "gpt_neox":
        # Pythia's settings, under their config.json names: RoPE on a quarter of each head,
        # parallel residual, exact GELU, LayerNorm (no grouped kv heads)
        settings = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                        num_hidden_layers=n_layers, num_attention_heads=heads, max_position_embeddings=2048,
                        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
                        layer_norm_eps=1e-5, **special)
    else:
        settings = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                        num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        head_dim=hidden // heads, max_position_embeddings=2048, rms_norm_eps=1e-6, **special)
    if family == "gemma3_text":
        settings["query_pre_attn_scalar"] = hidden // heads
    if family == "gpt_oss":
        # the real model's context length (its YaRN RoPE is defined relative to 4096)
        settings.update(num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=131072)
    settings.update(config)
    model_config = getattr(transformers, config_name)(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(model_config)
        # Larger weights than the default init, so activations differ across tokens.
        with torch.no_grad():
            for module in model.modules():
                is_norm = "Norm" in type(module).__name__
                for name, param in module.named_parameters(recurse=False):
                    if is_norm and name == "weight":
                        # non-trivial positive gains; Gemma's RMSNorm scales by (1 + weight)
                        param.uniform_(-0.5, 0.5) if family.startswith("gemma") else param.uniform_(0.5, 1.5)
                    elif name == "sinks":
                        param.normal_(0.0, 1.0)  # gpt_oss attention sinks: make them matter
                    else:
                        param.normal_(0.0, 0.1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
