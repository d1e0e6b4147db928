"""Damaged cache files of the right size are never used (issue 32, item 4): zeroing a block of a cached
feature file changed a run's mean r from 0.0137 to 0.0011, zeroing 200 MB of the converted weights every
parcel's winner, both under the same recorded revision. Every cache file carries a checksum, checked when
it is read: a damaged one is made again, with a note."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mtbench import paths
from mtbench.api import Stimulus, StimulusRun
from mtbench.checkpoint import FitCheckpoint
from mtbench.errors import MtbenchError
from mtbench.features import CachedFeatures, ScanFeatures, word_features
from mtbench.runner import run
from run_helpers import tiny_run_settings, voxel_table


class Model:
    """A model without torch whose extractions are counted; its features differ per (layer, state, word)."""

    name, revision, n_layers, family = "integrity-test", "r1", 2, "test"

    def __init__(self):
        self.calls = 0

    def settings(self) -> dict:
        return {}

    def extract(self, stimulus, states, layers, progress=None):
        self.calls += 1
        return {(layer, state): [np.arange(len(run.words) * 4, dtype=np.float32).reshape(-1, 4) / 8 + layer + r
                                 for r, run in enumerate(stimulus.runs)]
                for layer in layers for state in states}


def _stimulus() -> Stimulus:
    runs = []
    for n_words in (40, 30):
        onsets = np.arange(n_words, dtype=float)
        runs.append(StimulusRun([f"w{i}" for i in range(n_words)], onsets, onsets + 0.5, n_scans=20))
    return Stimulus(language="en", tr=2.0, runs=runs)


def _zero_the_middle(path) -> None:
    """Zero a block inside a file, keeping its size (and so the shape in its header)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle - 64:middle + 64] = bytes(128)
    path.write_bytes(bytes(data))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_damaged_feature_file_is_extracted_again_never_used(cache, capfd):
    model, stimulus = Model(), _stimulus()
    first = word_features(model, stimulus, ["s", "t"], [1, 2])
    expected = {key: [x.copy() for x in first[key]] for key in first}
    path = first.file((2, "t"))
    _zero_the_middle(path)
    assert path.stat().st_size == first.file((1, "t")).stat().st_size  # the same size: shape checks miss it

    again = word_features(model, stimulus, ["s", "t"], [1, 2])
    assert model.calls == 1  # nothing read yet: the damage is found when the file is read
    for key in expected:
        for got, want in zip(again[key], expected[key]):
            np.testing.assert_array_equal(got, want)
    assert model.calls == 2  # (2, "t") alone was extracted again
    assert capfd.readouterr().err.splitlines() == [
        f"note: the cached features {path} are damaged (its content does not match its checksum); extracting them "
        "again"]
    np.testing.assert_array_equal(word_features(model, stimulus, ["t"], [2])[2, "t"][1], expected[2, "t"][1])
    assert model.calls == 2 and capfd.readouterr().err == ""  # whole again


def test_a_feature_file_without_a_checksum_is_extracted_again(cache, capfd):
    """A file of an older mtbench (or whose checksum was cut off): the right shape, no checksum."""
    model, stimulus = Model(), _stimulus()
    features = word_features(model, stimulus, ["s"], [1, 2])
    path = features.file((1, "s"))
    np.save(path, np.zeros((70, 4), dtype=np.float16))  # the right shape, other numbers
    again = word_features(model, stimulus, ["s"], [1, 2])
    assert model.calls == 2
    np.testing.assert_array_equal(again[1, "s"][0], model.extract(stimulus, ["s"], [1])[1, "s"][0])
    assert capfd.readouterr().err.splitlines() == [
        f"note: 1 cached feature file(s) in {path.parent} have no checksum (written by an older mtbench, or damaged); "
        "extracting them again"]


def test_damaged_aligned_features_are_aligned_again(tmp_path, capfd):
    words = tmp_path / "L001_s.npy"
    np.save(words, np.arange(120, dtype=np.float16).reshape(30, 4))  # a caller's own plain file
    calls = []

    def align(runs):
        calls.append(1)
        return [np.asarray(r[:5] * 2, dtype=np.float32) for r in runs]

    scans = ScanFeatures(CachedFeatures({(1, "s"): words}, np.array([0, 10, 30])), align, "abc", [5, 5])
    fresh = np.concatenate(scans[(1, "s")])
    cached = tmp_path / "scans-abc" / "L001_s.npy"
    _zero_the_middle(cached)
    np.testing.assert_array_equal(np.concatenate(scans[(1, "s")]), fresh)
    assert len(calls) == 2
    assert capfd.readouterr().err.splitlines() == [
        f"note: the aligned features {cached} are damaged (its content does not match its checksum); aligning them "
        "again"]


def test_a_damaged_sealed_file_without_a_way_to_make_it_again_is_refused(tmp_path):
    """A caller's own sealed word file (no extraction to redo it) is one line, never used."""
    from mtbench.features import npy_bytes

    words = tmp_path / "L001_s.npy"
    paths.atomic_write_bytes(words, npy_bytes(np.arange(120, dtype=np.float16).reshape(30, 4)), seal=True)
    np.testing.assert_array_equal(CachedFeatures({(1, "s"): words}, np.array([0, 30]))[(1, "s")][0],
                                  np.arange(120, dtype=np.float32).reshape(30, 4))
    _zero_the_middle(words)
    with pytest.raises(MtbenchError) as err:
        CachedFeatures({(1, "s"): words}, np.array([0, 30]))[(1, "s")]
    assert str(err.value) == (f"the features in {words} are damaged (its content does not match its checksum); "
                              f"delete {tmp_path} and run again (they are extracted again)")


def test_a_damaged_checkpoint_is_fitted_again_with_a_note(tmp_path, capfd):
    with FitCheckpoint(tmp_path, "key") as checkpoint:
        checkpoint.save("L1-x", {"test": np.arange(1000, dtype=np.float32)})
        path = checkpoint.folder / "L1-x.npz"
        _zero_the_middle(path)
        assert checkpoint.load("L1-x") is None and not path.exists()  # zip's CRC-32: fitted again
    assert capfd.readouterr().err.splitlines() == [
        f"note: the checkpoint {path} is damaged (unreadable, or its checksum does not match); fitting it again"]


def test_a_converted_model_damaged_since_is_converted_again(tmp_path, monkeypatch, capfd):
    """The stamp records each converted file's checksum: a zeroed block (same size) is converted again,
    so the weights used are always the conversion of the GGUF whose sha256 the manifest records."""
    from mtbench_plugins.models.hf import gguf as conversion

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf")
    calls = []

    def convert(parts, stats, target, expected_sha256):  # stands in for the dequantisation
        calls.append(target)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(np.arange(4096, dtype=np.float32).tobytes())
        (target / "config.json").write_text("{}")
        conversion._write_stamp(target, parts, stats, "sha-of-the-gguf")
        return target, "sha-of-the-gguf"

    monkeypatch.setattr(conversion, "_convert", convert)
    target, digest = conversion.convert_gguf([gguf], "tiny-v1")
    assert conversion.convert_gguf([gguf], "tiny-v1") == (target, digest) and len(calls) == 1  # reused
    weights = target / "model.safetensors"
    good = weights.read_bytes()
    _zero_the_middle(weights)
    assert conversion.convert_gguf([gguf], "tiny-v1") == (target, digest) and len(calls) == 2
    assert weights.read_bytes() == good
    assert capfd.readouterr().err.splitlines() == [
        f"note: the converted model in {target} is damaged (model.safetensors does not match its checksum); "
        "converting it again"]
    # a stamp of an older mtbench (sizes, no checksums): trusted as before, and given checksums
    stamp = target / conversion.CONVERSION_STAMP
    info = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({k: v for k, v in info.items() if k != "checksums"}))
    assert conversion.convert_gguf([gguf], "tiny-v1") == (target, digest) and len(calls) == 2
    assert json.loads(stamp.read_text())["checksums"] == info["checksums"]


def test_a_run_on_damaged_caches_gives_the_numbers_of_a_clean_run(tmp_path, monkeypatch, capfd):
    """The issue's reproduction at small scale: the second run reads the caches the first wrote."""
    settings = tiny_run_settings(tmp_path, monkeypatch, ["per_head_v", "ffn_output"], "per_head_v", permutations=0)
    first = voxel_table(run(settings, tmp_path / "a").run_dir)
    features = tmp_path / "cache" / "features"
    damaged = [p for p in features.rglob("*.npy") if p.name.startswith("L002_per_head_v")]
    assert len(damaged) == 2  # the word features and the aligned ones
    for path in damaged:
        _zero_the_middle(path)
    capfd.readouterr()
    second = voxel_table(run(settings, tmp_path / "b").run_dir)
    for column in ("test", "validation", "alpha"):
        np.testing.assert_array_equal(second[column].to_numpy(), first[column].to_numpy(), err_msg=column)
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and all("L002_per_head_v.npy are damaged" in line for line in notes), notes
