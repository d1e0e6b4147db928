"""Words <-> tokens: which token belongs to which word, context windows, the special prefix.

Nothing here runs a model; the tokenizer is only asked to encode texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtbench.errors import MtbenchError


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
