"""Feature cache precision chosen per state: float16 where it holds every value, float32 where it would
overflow (Gemma-like residuals beyond 65,504), recorded in the run's manifest, sealed and read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mtbench_plugins.models.baselines import RandomEmbedding
from mtbench_plugins.testing import tiny_stimulus

from mtbench.features import CachedFeatures, word_features
from mtbench.runner import run
from mtbench.settings import RunSettings

F16_MAX = float(np.finfo(np.float16).max)  # 65,504


class Planted:
    """Two states of one layer: ``quiet`` (|x| < 10) and ``loud`` (a residual-stream-like outlier dimension
    reaching 2.5x the float16 maximum)."""

    name, revision, family, n_layers = "planted-precision", "v1", "test", 1

    def available_states(self):
        return ["quiet", "loud"]

    def settings(self):
        return {}

    def extract(self, stimulus, states, layers, progress=None):
        rng = np.random.default_rng(0)
        runs = [rng.standard_normal((len(r.words), 6)).astype(np.float32) for r in stimulus.runs]
        loud = [x * 3.0 for x in runs]
        for x in loud:
            x[:, 0] = 1.6e5 * np.sign(x[:, 0])  # beyond float16, as Gemma's massive activations
            x[:, 1] += np.float32(0.123456)  # digits float16 would lose
        return {(1, s): (runs if s == "quiet" else loud) for s in states}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_overflowing_state_is_cached_exactly_in_float32_and_others_in_float16(cache, capsys):
    stim, adapter = tiny_stimulus(), Planted()
    exact = adapter.extract(stim, ["quiet", "loud"], [1])
    assert max(np.abs(x).max() for x in exact[1, "loud"]) > F16_MAX  # float16 alone would fail here
    feats = word_features(adapter, stim, ["quiet", "loud"], [1])
    assert isinstance(feats, CachedFeatures)
    assert feats.widened == {"L001 loud": "float32"}
    assert "exceed float16 and are cached in float32: L001 loud" in capsys.readouterr().err
    files = {p.name: np.load(p, mmap_mode="r").dtype for p in cache.rglob("L*.npy")}
    assert files == {"L001_quiet.npy": np.float16, "L001_loud.npy": np.float32}
    for got, want in zip(feats[1, "loud"], exact[1, "loud"]):
        np.testing.assert_array_equal(got, want)  # exact, not float16-rounded
    for got, want in zip(feats[1, "quiet"], exact[1, "quiet"]):
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))  # as before
    # read back from the cache (no model call), and the same numbers without the cache
    again = word_features(adapter, stim, ["quiet", "loud"], [1])
    memory = word_features(adapter, stim, ["quiet", "loud"], [1], use_cache=False)
    assert again.widened == memory.widened == {"L001 loud": "float32"}
    for key in exact:
        for a, b, c in zip(feats[key], again[key], memory[key]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_a_damaged_float32_state_is_detected_by_its_seal_and_extracted_again(cache, capsys):
    stim, adapter = tiny_stimulus(), Planted()
    word_features(adapter, stim, ["loud"], [1])
    (path,) = cache.rglob("L001_loud.npy")
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # one byte of the array
    path.write_bytes(bytes(data))
    feats = word_features(adapter, stim, ["loud"], [1])
    got = feats[1, "loud"]
    assert "damaged" in capsys.readouterr().err
    for a, b in zip(got, adapter.extract(stim, ["loud"], [1])[1, "loud"]):
        np.testing.assert_array_equal(a, b)


def test_float32_request_and_quiet_states_are_unchanged(cache):
    stim, adapter = tiny_stimulus(), Planted()
    f32 = word_features(adapter, stim, ["quiet", "loud"], [1], dtype="float32")
    assert f32.widened == {}
    assert {p.name for p in cache.rglob("L*.npy")} == {"L001_quiet.float32.npy", "L001_loud.float32.npy"}


class LoudRandom(RandomEmbedding):
    """The ``random`` baseline scaled beyond float16 (a model whose run failed after extraction before)."""

    name = "random"

    def __init__(self):
        super().__init__(dim=300, seed=0)
        self.revision = "random-v1-seed0-dim300-loud"

    def _features(self, stimulus):
        return [x * 4e4 for x in super()._features(stimulus)]


@pytest.mark.slow  # two tiny runs (~50 s on 2 shared cores)
def test_a_run_with_an_overflowing_state_finishes_and_records_it(tmp_path, cache):
    settings = RunSettings(model="random", dataset="synthetic", states=["embedding"], permutations=0,
                           alphas=[1.0, 100.0], dataset_options={"scale": "tiny"})
    out = run(settings, tmp_path / "results", adapter=LoudRandom())
    manifest = json.loads((out.run_dir / "manifest.json").read_text())
    assert manifest["feature_cache"] == {"dtype": "float16", "widened": {"L001 embedding": "float32"}}
    quiet = run(settings, tmp_path / "results", adapter=RandomEmbedding())
    assert "feature_cache" not in json.loads((quiet.run_dir / "manifest.json").read_text())
