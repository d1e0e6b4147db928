"""Words -> tokens by character offsets, in French (apostrophes, accents) and Chinese
(jieba words, joined with and without spaces), with a tiny byte-level BPE and with the
real SmolLM2 tokenizer (slow).

The oracle is independent of the adapter's span arithmetic: decoding the tokens given to
a word must give back exactly that word (or, for a token that straddles two Chinese
words, a text containing it), and every non-space token of the text belongs to a word.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mtbench.api import Stimulus, StimulusRun  # noqa: E402
from mtbench_plugins.models.hf.loading import load_hf  # noqa: E402
from mtbench_plugins.models.hf.tiny import save_tiny_model  # noqa: E402
from mtbench_plugins.models.hf.words import token_word_pairs  # noqa: E402

FRENCH = ("Lorsque j'avais six ans j'ai vu, une fois, une magnifique image, dans un livre sur la forêt vierge "
          "qui s'appelait « Histoires vécues ». Ça représentait un serpent boa qui avalait un fauve. "
          "L'aviateur s'est réveillé à l'aube : « S'il vous plaît… dessine-moi un mouton ! » dit le petit prince, "
          "étonné. Où est l'œuf ? Aujourd'hui, c'est déjà l'été.")
CHINESE = ("当我还只有六岁的时候，在一本描写原始森林的名叫《真实的故事》的书中，看到了一副精彩的插画，"
           "画的是一条蟒蛇正在吞食一只大野兽。小王子说：“请你给我画一只羊吧！”飞行员醒来了。")


def _words(language: str) -> list[str]:
    if language == "fr":
        return FRENCH.split()
    import jieba

    jieba.setLogLevel(60)
    return [w for w in jieba.lcut(CHINESE) if w.strip()]


def _stimulus(words: list[str], language: str) -> Stimulus:
    n = len(words)
    return Stimulus(language, 2.0, [StimulusRun(words, np.arange(n, dtype=float), np.arange(n) + 0.5, 10)])


def _check_every_word_gets_its_tokens(tokenizer, stimulus: Stimulus) -> tuple[np.ndarray, np.ndarray]:
    text, spans = stimulus.run_text(0)
    words = stimulus.runs[0].words
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    tokens, word_ids = token_word_pairs(text, enc["offset_mapping"], spans, words)
    owners: dict[int, set[int]] = {}
    for t, w in zip(tokens.tolist(), word_ids.tolist()):
        owners.setdefault(t, set()).add(w)
    for w, word in enumerate(words):
        mine = tokens[word_ids == w].tolist()
        assert mine == sorted(mine) and mine == list(range(mine[0], mine[-1] + 1)), (word, mine)  # contiguous
        decoded = tokenizer.decode([ids[t] for t in mine]).strip()
        if all(len(owners[t]) == 1 for t in mine):
            assert decoded == word, (word, decoded)
        else:  # a token shared with a neighbouring word (Chinese text without spaces)
            assert word in decoded, (word, decoded)
    for t, token in enumerate(ids):
        if tokenizer.decode([token]).strip() and t not in owners:
            raise AssertionError(f"token {t} ({tokenizer.decode([token])!r}) belongs to no word")
    return tokens, word_ids



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama whose byte-level BPE learnt some French and Chinese merges; one window."""
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny-multilingual"), "llama", vocab_size=600,
                             extra_text=[FRENCH, CHINESE])
    return load_hf(str(folder))


@pytest.mark.parametrize("language, separator", [("fr", " "), ("zh", ""), ("zh", " ")])
def test_words_get_exactly_their_tokens(tiny, language, separator):
    words = _words(language)
    stimulus = _stimulus(words, language if separator == ("" if language == "zh" else " ") else "en")
    assert stimulus.separator == separator
    assert any("'" in w for w in words) or language == "zh"
    tokens, word_ids = _check_every_word_gets_its_tokens(tiny.tokenizer, stimulus)
    if language == "zh" and separator == "":
        # some Chinese characters are several byte-level tokens sharing one character span
        per_word = np.bincount(word_ids)
        assert per_word.max() > 1
    # and the features are the mean of exactly those tokens' vectors (one window: context 512)
    ids = tiny.tokenizer(stimulus.run_text(0)[0], add_special_tokens=False)["input_ids"]
    assert len(ids) <= tiny.context
    captured = tiny.capture(ids, ["pre_attn_norm"], [2])[2, "pre_attn_norm"].numpy()
    (got,) = tiny.extract(stimulus, ["pre_attn_norm"], [2])[2, "pre_attn_norm"]
    expected = np.stack([captured[tokens[word_ids == w]].mean(0) for w in range(len(words))])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("language, separator", [("fr", " "), ("zh", ""), ("zh", " ")])
def test_smollm2_tokenizer_gives_every_word_its_tokens(language, separator):
    from transformers import AutoTokenizer

    from mtbench_plugins.models.hf.gguf import convert_smollm2

    folder, _ = convert_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = _words(language)
    stimulus = _stimulus(words, language if separator == ("" if language == "zh" else " ") else "en")
    _check_every_word_gets_its_tokens(tokenizer, stimulus)
