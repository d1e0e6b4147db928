"""The extraction engine around the Hugging Face adapter: streaming to the on-disk cache,
resuming an interrupted extraction, cache precision, devices and dtypes, hub ids.

All on a tiny random Llama (seconds); the real-weight checks are in test_hf_adapter.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mtbench.errors import MtbenchError  # noqa: E402
from mtbench.features import CachedFeatures, word_features  # noqa: E402
from mtbench_plugins.models.hf.adapter import HFAdapter  # noqa: E402
from mtbench_plugins.models.hf.loading import load_hf  # noqa: E402
from mtbench_plugins.models.hf.runtime import resolve_device  # noqa: E402
from mtbench_plugins.models.hf.tiny import save_tiny_model  # noqa: E402
from mtbench_plugins.models.hf.words import windows  # noqa: E402

from hf_checks import _stimulus  # noqa: E402

CONTEXT, STRIDE = 8, 3
STATES = ["per_head_k_rope", "ffn_activated_state"]
LAYERS = [1, 3]
RUN_A = "the old man told the story of a little girl who walked into the extraordinary forest"
RUN_B = "where nobody had ever lived then she listened to the quiet wind"


class _Interrupt(Exception):
    pass


_REAL_FORWARD = HFAdapter._forward



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-cache"), "llama")


@pytest.fixture(scope="module")
def adapter(folder):
    return load_hf(str(folder), context=CONTEXT, stride=STRIDE)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _count_forwards(adapter, monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count the adapter's forward passes; raise _Interrupt at pass ``stop_after + 1``."""
    adapter._state_dims()  # its one-token pass happens once per adapter: not counted
    calls = []
    real = _REAL_FORWARD

    def forward(self, ids, wanted, sink):
        if stop_after is not None and len(calls) == stop_after:
            raise _Interrupt
        calls.append(len(ids))
        return real(self, ids, wanted, sink)

    monkeypatch.setattr(type(adapter), "_forward", forward)
    return calls


def _n_windows(adapter, stimulus) -> list[int]:
    return [len(windows(len(adapter.tokenizer(stimulus.run_text(r)[0], add_special_tokens=False)["input_ids"]),
                        CONTEXT, STRIDE)) for r in range(len(stimulus.runs))]


def _as_arrays(feats) -> dict:
    return {key: [x.copy() for x in feats[key]] for key in feats}


# --------------------------------------------------------------------------- streaming and resuming
def test_words_stream_out_window_by_window(adapter, monkeypatch):
    stim = _stimulus(RUN_A)
    calls = _count_forwards(adapter, monkeypatch)
    stream = adapter.extract_stream(stim, STATES, LAYERS)
    run, first, block = next(stream)
    assert (run, first) == (0, 0) and len(calls) == 1  # the first words come out after one window
    assert set(block) == {(layer, s) for layer in LAYERS for s in STATES}
    copy = lambda b: {key: x.copy() for key, x in b.items()}  # noqa: E731  (blocks are reused buffers)
    blocks = [copy(block), *(copy(b) for _, _, b in stream)]
    assert len(calls) == _n_windows(adapter, stim)[0]
    # consecutive blocks, together exactly what extract() returns
    whole = adapter.extract(stim, STATES, LAYERS)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([b[key] for b in blocks]), whole[key][0])
    assert max(len(b[key]) for b in blocks) <= CONTEXT  # never more than one window's words held


@pytest.mark.parametrize("stop_after", [2, "in the second run"])
def test_an_interrupted_extraction_resumes_where_it_stopped(stop_after, adapter, cache, monkeypatch, tmp_path):
    stim = _stimulus(RUN_A, RUN_B)
    per_run = _n_windows(adapter, stim)
    total = sum(per_run)
    k = per_run[0] + 2 if stop_after == "in the second run" else stop_after
    _count_forwards(adapter, monkeypatch, stop_after=k)
    with pytest.raises(_Interrupt):
        word_features(adapter, stim, STATES, LAYERS)
    (partial,) = [p for p in cache.rglob("partial-*") if p.is_dir()]
    done = json.loads((partial / "progress.json").read_text())["done"]
    assert 0 < sum(done) < sum(len(r.words) for r in stim.runs)
    assert [p for p in cache.rglob("L*.npy") if p.parent != partial] == []  # nothing final yet

    calls = _count_forwards(adapter, monkeypatch)
    resumed = _as_arrays(word_features(adapter, stim, STATES, LAYERS))
    # only the missing part: the windows not run before, plus at most the one a word straddled
    assert total - k <= len(calls) <= total - k + 1
    if stop_after == "in the second run":
        assert len(calls) <= per_run[1] - 1  # nothing of the first run again
    assert not partial.exists() and len(list(partial.parent.glob("L*.npy"))) == len(STATES) * len(LAYERS)

    calls.clear()
    again = word_features(adapter, stim, STATES, LAYERS)
    assert calls == []  # second run: all from the cache
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "fresh"))
    uninterrupted = word_features(adapter, stim, STATES, LAYERS)
    assert len(calls) == total
    for key in uninterrupted:
        for got, cached, expected in zip(resumed[key], again[key], uninterrupted[key]):
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(cached, expected)


def test_a_corrupt_progress_file_restarts_from_scratch(adapter, cache, monkeypatch):
    stim = _stimulus(RUN_A)
    _count_forwards(adapter, monkeypatch, stop_after=3)
    with pytest.raises(_Interrupt):
        word_features(adapter, stim, ["ffn_output"], [2])
    (progress,) = cache.rglob("progress.json")
    progress.write_text("{not json")
    calls = _count_forwards(adapter, monkeypatch)
    feats = word_features(adapter, stim, ["ffn_output"], [2])
    assert len(calls) == _n_windows(adapter, stim)[0]
    np.testing.assert_array_equal(feats[2, "ffn_output"][0],
                                  adapter.extract(stim, ["ffn_output"], [2])[2, "ffn_output"][0].astype(np.float16))


def test_cache_keeps_only_what_was_requested_and_reads_lazily(adapter, cache, monkeypatch):
    seen = set()
    real = _REAL_FORWARD

    def forward(self, ids, wanted, sink):
        return real(self, ids, wanted, lambda key, x: (seen.add(key), sink(key, x)))

    monkeypatch.setattr(type(adapter), "_forward", forward)
    stim = _stimulus(RUN_A, RUN_B)
    feats = word_features(adapter, stim, ["per_head_v"], [2])
    assert seen == {(2, "per_head_v")}  # nothing else was even captured
    assert isinstance(feats, CachedFeatures) and list(feats) == [(2, "per_head_v")]
    assert sorted(p.name for p in cache.rglob("*.npy")) == ["L002_per_head_v.npy"]
    runs = feats.pop((2, "per_head_v"))
    assert [r.shape[0] for r in runs] == [len(r.words) for r in stim.runs] and runs[0].dtype == np.float32
    assert len(feats) == 0
    index = json.loads(next(cache.rglob("index.json")).read_text())
    assert index["run_lengths"] == [len(r.words) for r in stim.runs] and index["settings"]["context"] == CONTEXT


def test_float32_cache_is_exact_and_float16_is_its_rounding(adapter, cache):
    stim = _stimulus(RUN_A)
    exact = adapter.extract(stim, ["attn_output"], [1])[1, "attn_output"][0]
    f32 = word_features(adapter, stim, ["attn_output"], [1], dtype="float32")[1, "attn_output"][0]
    f16 = word_features(adapter, stim, ["attn_output"], [1])[1, "attn_output"][0]
    np.testing.assert_array_equal(f32, exact)
    np.testing.assert_array_equal(f16, exact.astype(np.float16).astype(np.float32))
    assert {p.name for p in cache.rglob("*.npy")} == {"L001_attn_output.npy", "L001_attn_output.float32.npy"}
    with pytest.raises(MtbenchError, match="cache dtype 'float64'"):
        word_features(adapter, stim, ["attn_output"], [1], dtype="float64")


def test_context_settings_key_the_cache(folder, cache):
    stim = _stimulus(RUN_A)
    a = word_features(load_hf(str(folder), context=CONTEXT, stride=STRIDE), stim, ["ffn_output"], [3])
    b = word_features(load_hf(str(folder), context=CONTEXT, stride=STRIDE - 1), stim, ["ffn_output"], [3])
    assert len(list(cache.rglob("L003_ffn_output.npy"))) == 2
    assert not np.array_equal(a[3, "ffn_output"][0], b[3, "ffn_output"][0])


# --------------------------------------------------------------------------- devices and dtypes
def test_bfloat16_on_cpu_is_float32_within_bfloat16_precision(folder, adapter):
    bf16 = load_hf(str(folder), context=CONTEXT, stride=STRIDE, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.settings()["dtype"] == "bfloat16"
    stim = _stimulus(RUN_A)
    states = ["per_head_q_rope", "per_head_context_vector", "ffn_activated_state", "ffn_output"]
    low, ref = bf16.extract(stim, states, [1, 3]), adapter.extract(stim, states, [1, 3])
    for key in ref:
        got, expected = low[key][0], ref[key][0]
        assert got.dtype == np.float32
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert 1e-5 < error < 3e-2, (key, error)  # really computed in bf16 (8-bit mantissa), and close


def test_devices(folder, adapter):
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MtbenchError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MtbenchError, match="sees no CUDA GPU.*--device cpu"):
            load_hf(str(folder), device="cuda")
    # device_map=auto: accelerate places the model (here on the CPU); same features
    placed = load_hf(str(folder), context=CONTEXT, stride=STRIDE, device_map="auto")
    stim = _stimulus(RUN_B)
    for key, runs in placed.extract(stim, STATES, LAYERS).items():
        np.testing.assert_allclose(runs[0], adapter.extract(stim, STATES, LAYERS)[key][0], atol=1e-6)
    with pytest.raises(MtbenchError, match="device_map must be auto"):
        load_hf(str(folder), device_map="balanced")


def test_device_and_window_options_from_the_cli(folder, tmp_path):
    from click.testing import CliRunner

    from mtbench.cli import main
    from mtbench.cli.options import key_value_options as _options

    assert _options(("context=64,stride=16", "pooling=last"), "--model-option") == {
        "context": 64, "stride": 16, "pooling": "last"}
    assert _options(('truth=[{"a": 1, "b": 2}]',), "--dataset-option") == {"truth": '[{"a": 1, "b": 2}]'}
    result = CliRunner().invoke(main, ["run", "--model", f"hf:{folder}", "--device", "banana",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "Error: unknown device 'banana': use cpu, cuda, cuda:N or auto"]


# --------------------------------------------------------------------------- hub ids
def test_hub_ids_download_once_then_load_offline_and_fail_clearly(folder, tmp_path, monkeypatch):
    import shutil

    from hub_server import HubServer

    repo = tmp_path / "repo"
    shutil.copytree(folder, repo)
    (repo / "model.gguf").write_bytes(b"another weight format: not downloaded")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    server = HubServer("tiny-org/tiny-llama", repo)
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        from_hub = load_hf("tiny-org/tiny-llama")
    assert sorted(server.served) == ["config.json", "generation_config.json", "model.safetensors",
                                     "tokenizer.json", "tokenizer_config.json"]
    local = load_hf(str(folder))
    assert from_hub.name == "hf:tiny-org/tiny-llama" and from_hub.revision == local.revision
    stim = _stimulus(RUN_B)
    np.testing.assert_array_equal(from_hub.extract(stim, ["ffn_output"], [2])[2, "ffn_output"][0],
                                  local.extract(stim, ["ffn_output"], [2])[2, "ffn_output"][0])
    # offline: the cached copy loads; a model never downloaded is a one-line error naming the fix
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_hf("tiny-org/tiny-llama").revision == local.revision
    with pytest.raises(MtbenchError, match=r"not in the Hugging Face cache and HF_HUB_OFFLINE is set: download "
                                           r"it first .* or pass a local folder") as offline:
        load_hf("someone/not-downloaded")
    assert "\n" not in str(offline.value)
    # online but the hub does not answer (the server is gone)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(MtbenchError, match="cannot reach the Hugging Face hub .* pass a local folder") as down:
        load_hf("someone/not-downloaded")
    assert "\n" not in str(down.value)


def test_unknown_model_type_is_one_line_listing_the_families(folder, tmp_path):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(MtbenchError) as err:
        load_hf(str(odd))
    assert "\n" not in str(err.value)
    assert "'mamba'" in str(err.value) and "llama, mistral, qwen2, qwen3, gemma3_text, gpt_oss, gpt2" in str(err.value)


def test_a_token_shared_by_two_words_counts_for_both(folder):
    """Words that cut through tokens (as jieba words can cut through a BPE token of Chinese
    text written without spaces): each word is the mean of every token it overlaps."""
    from mtbench.api import Stimulus, StimulusRun

    one_window = load_hf(str(folder))
    text = "the old man told the story"
    cuts = [0, 2, 5, 9, 13, 17, 19, 21, len(text)]  # "th|e o|ld m|an t|old |th|e |story"
    words = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    stim = Stimulus("zh", 2.0, [StimulusRun(words, np.zeros(len(words)), np.zeros(len(words)), 10)])
    enc = one_window.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # tokens sharing a non-space character with the word
    overlaps = [[t for t, (s, e) in enumerate(enc["offset_mapping"]) if text[max(s, a):min(e, b)].strip()]
                for a, b in zip(cuts[:-1], cuts[1:])]
    assert any(set(p) & set(q) for p, q in zip(overlaps[:-1], overlaps[1:])), "the test needs a shared token"
    captured = one_window.capture(enc["input_ids"], ["per_head_v"], [2])[2, "per_head_v"].numpy()
    (got,) = one_window.extract(stim, ["per_head_v"], [2])[2, "per_head_v"]
    np.testing.assert_allclose(got, np.stack([captured[o].mean(0) for o in overlaps]), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_streamed_cache_resumes_and_bfloat16_is_close(tmp_path, monkeypatch):
    """Real SmolLM2-135M: an interrupted, resumed extraction into the cache equals extract();
    bfloat16 weights give states within bf16 precision of float32."""
    from mtbench.registry import load_model

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    model = load_model("smollm2-135m", context=32, stride=16)
    stim = _stimulus(RUN_A + " " + RUN_B, RUN_B)
    states, layers = ["per_head_q_rope", "ffn_activated_state", "ffn_output"], [1, 15, 30]
    expected = model.extract(stim, states, layers)
    _count_forwards(model, monkeypatch, stop_after=1)
    with pytest.raises(_Interrupt):
        word_features(model, stim, states, layers, dtype="float32")
    _count_forwards(model, monkeypatch)
    resumed = word_features(model, stim, states, layers, dtype="float32")
    for key in expected:
        for got, want in zip(resumed[key], expected[key]):
            np.testing.assert_array_equal(got, want)
    low = load_model("smollm2-135m", context=32, stride=16, dtype="bfloat16").extract(stim, states, layers)
    for key in expected:
        got, want = low[key][0], expected[key][0]
        error = np.linalg.norm(got - want) / np.linalg.norm(want)
        r = np.corrcoef(got.ravel(), want.ravel())[0, 1]
        # bf16 keeps 8 mantissa bits: 0.4% per rounding, compounding over the blocks
        assert error < (2e-2 if key[0] == 1 else 1e-1) and r > 0.99, (key, error, r)
