"""Helpers for tests and plugin authors: tiny, offline, deterministic models.

Nothing here downloads anything; heavy imports (torch, transformers, tokenizers) happen
inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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


def make_tiny_llama(
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
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    # Byte-level BPE (GPT-2 style: leading spaces belong to the next token), trained
    # offline on a fixed text, so any string is encodable and offsets are available.
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
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    # A fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # The default init (std 0.02) gives near-identical activations across tokens;
        # larger weights make the tests' identities non-trivial.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.uniform_(0.5, 1.5)  # non-trivial norm gains, still positive
                else:
                    param.normal_(0.0, 0.1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
