"""The embedded synthetic dataset: story, timings, atlas, determinism, planted signal.

A fake adapter (seeded random features per word, no torch) stands in for the truth model.
"""

from __future__ import annotations

import json
import zlib

import nibabel as nib
import numpy as np
import pytest

from mtbench.alignment import hrf_operator, zscore
from mtbench.api import Dataset
from mtbench.errors import MtbenchError
from mtbench_plugins.datasets import synthetic
from mtbench_plugins.datasets.atlas import MNI_4MM_AFFINE, MNI_4MM_SHAPE, harvard_oxford_cortical

HESCHL = "Heschl's Gyrus (includes H1 and H2)"
STG_POST = "Superior Temporal Gyrus, posterior division"
TRUTH = [
    {"parcel": HESCHL, "layer": 2, "state": "per_head_q_rope"},
    {"parcel": STG_POST, "layer": 3, "state": "ffn_activated_state"},
]
DIMS = {"per_head_q_rope": 12, "ffn_activated_state": 48, "per_head_k_rope": 8}  # 48 > 32 PCs


class FakeAdapter:
    """Word-level features drawn from a seed made of (layer, state, word, previous word)."""

    name = "fake-model"
    revision = "fake-rev-1"
    n_layers = 4
    family = "fake"

    def __init__(self):
        self.calls = 0

    def available_states(self):
        return list(DIMS)

    def settings(self):
        return {"fake": True}

    def extract(self, stimulus, states, layers, progress=None):
        self.calls += 1
        out = {}
        for layer in layers:
            for state in states:
                runs = []
                for run in stimulus.runs:
                    rows = []
                    for i, word in enumerate(run.words):
                        previous = run.words[i - 1] if i else ""
                        seed = zlib.crc32(f"{layer}|{state}|{previous}|{word}".encode())
                        rows.append(np.random.default_rng(seed).standard_normal(DIMS[state]) + 3.0)
                    runs.append(np.array(rows, dtype=np.float32))
                out[(layer, state)] = runs
        return out


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One throw-away cache for the module (the atlas is derived once, ~5 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTBENCH_CACHE", str(tmp_path_factory.mktemp("mtbench-cache")))
        yield


@pytest.fixture(scope="module")
def atlas():
    return harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)


@pytest.fixture(scope="module")
def full():
    return synthetic.load_synthetic(truth_model=FakeAdapter(), truth=TRUTH)


# --------------------------------------------------------------------------- story
def test_story_is_long_enough_with_runs_of_similar_length():
    runs = synthetic.read_story()
    lengths = [len(run) for run in runs]
    assert len(runs) >= 4
    assert sum(lengths) >= 1600
    assert max(lengths) < 1.5 * min(lengths)
    words = [w for run in runs for w, _ in run]
    assert all(any(ch.isalnum() for ch in w) for w in words)  # no bare punctuation tokens
    assert any(w.startswith('"') for w in words) and any(w.endswith(".") for w in words)


def test_timings_are_plausible_speech():
    stim = synthetic.make_stimulus(seed=0)
    assert stim.tr == 2.0
    for run in stim.runs:
        rate = len(run.words) / (run.offsets[-1] - run.onsets[0])
        assert 2.0 <= rate <= 3.2
        assert run.onsets[0] >= 2.0  # silence before the first word
        assert np.all(np.diff(run.onsets) > 0)
        assert np.all(run.offsets > run.onsets)
        assert np.all(run.onsets[1:] >= run.offsets[:-1])  # words do not overlap
        covered = run.n_scans * stim.tr
        assert run.offsets[-1] + 8.0 <= covered <= run.offsets[-1] + 14.0
    rate = sum(len(r.words) for r in stim.runs) / sum(r.offsets[-1] - r.onsets[0] for r in stim.runs)
    assert 2.5 <= rate <= 2.8


def test_timings_depend_on_seed_and_tiny_is_a_prefix():
    a, b = synthetic.make_stimulus(seed=0), synthetic.make_stimulus(seed=1)
    assert a.runs[0].words == b.runs[0].words
    assert not np.allclose(a.runs[0].onsets, b.runs[0].onsets)
    tiny = synthetic.make_stimulus(seed=0, max_words=150)
    for small, big in zip(tiny.runs, a.runs):
        assert small.words == big.words[:150]
        np.testing.assert_array_equal(small.onsets, big.onsets[:150])
        assert small.n_scans * tiny.tr >= small.offsets[-1] + 8.0


# --------------------------------------------------------------------------- atlas
def test_atlas_labels_and_names(atlas):
    labels, names = atlas
    assert labels.shape == MNI_4MM_SHAPE
    assert sorted(names) == list(range(1, 49))
    assert names[1] == "Frontal Pole" and names[45] == HESCHL and names[48] == "Occipital Pole"
    assert names[10] == STG_POST
    assert names[5] == "Inferior Frontal Gyrus, pars triangularis"
    assert names[26] == "Juxtapositional Lobule Cortex (formerly Supplementary Motor Cortex)"
    assert set(np.unique(labels)) == set(range(49))  # every parcel survives at 4 mm


def test_a_damaged_atlas_cache_is_derived_again(atlas):
    """Both cached files cut short (a full disk): the same labels come back, and whole files again."""
    from mtbench.paths import cache_dir

    cached = sorted(cache_dir("atlas").glob("ho-cort-*.npz"))
    assert [p.name.split("-")[2] for p in cached] == ["1mm", "grid"]
    sizes = [p.stat().st_size for p in cached]
    for path in cached:
        path.write_bytes(path.read_bytes()[:200])
    labels, names = harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)
    np.testing.assert_array_equal(labels, atlas[0])
    assert names == atlas[1] and [p.stat().st_size for p in cached] == sizes


def test_heschl_sits_where_it_should(atlas):
    labels, names = atlas
    xyz = nib.affines.apply_affine(MNI_4MM_AFFINE, np.argwhere(labels == 45))
    for side in (-1, 1):
        hemi = xyz[np.sign(xyz[:, 0]) == side]
        assert len(hemi) > 20
        centre = hemi.mean(0)
        assert np.linalg.norm(centre - np.array([45 * side, -20, 8])) < 10, centre


# --------------------------------------------------------------------------- dataset
def test_full_dataset_shapes(full, atlas):
    assert isinstance(full, Dataset)
    labels, _ = atlas
    mask = np.asarray(full.mask_img.dataobj).astype(bool)
    assert mask.shape == MNI_4MM_SHAPE
    assert mask.sum() == full.n_voxels == (labels > 0).sum()
    np.testing.assert_array_equal(full.parcels.labels, labels[mask])
    assert full.subjects == ["average"]
    bold = full.load_bold("average")
    assert len(bold) == len(full.stimulus.runs) >= 4
    for run, y in zip(full.stimulus.runs, bold):
        assert y.shape == (run.n_scans, full.n_voxels) and y.dtype == np.float32
        assert np.isfinite(y).all()
    json.dumps(full.truth)
    assert full.truth["truth_model_revision"] == "fake-rev-1"
    assert [p["layer"] for p in full.truth["planted"]] == [2, 3]
    with pytest.raises(MtbenchError):
        full.load_bold("sub-01")


def test_planted_signal_is_there_and_null_parcels_are_noise(full):
    bold = np.concatenate(full.load_bold("average"))
    clean = np.concatenate(full.signal())
    ceiling = full.noise_ceiling("average")
    labels = full.parcels.labels
    z = (bold - bold.mean(0)) / bold.std(0)
    for pid in (45, 10):
        voxels = np.flatnonzero(labels == pid)
        s = (clean[:, voxels] - clean[:, voxels].mean(0)) / clean[:, voxels].std(0)
        r = (z[:, voxels] * s).mean(0)
        assert 0.4 < ceiling[voxels].mean() < 0.7
        assert abs(r.mean() - ceiling[voxels].mean()) < 0.05
        assert np.corrcoef(r, ceiling[voxels])[0, 1] > 0.3  # gain varies by voxel and it shows
        # Null voxels do not follow the planted signal (~500 scans: |r| of noise ~0.045).
        null = np.flatnonzero(~np.isin(labels, [45, 10]))[::7]
        r_null = (z[:, null] * s[:, :1]).mean(0)
        assert np.abs(r_null).mean() < 0.06 and np.abs(r_null).max() < 0.3
    assert np.all(ceiling[~np.isin(labels, [45, 10])] == 0)


def test_signal_comes_from_the_planted_layer_and_state(full):
    """Within a run, the clean signal is a linear function of the HRF-aligned planted
    features, and not of another (layer, state)."""
    adapter = FakeAdapter()
    stim = full.stimulus
    feats = adapter.extract(stim, list(DIMS), [2, 3])
    run = 0
    op = hrf_operator(stim.runs[run], stim.tr)
    voxel = np.flatnonzero(full.parcels.labels == 45)[0]
    y = full.signal()[run][:, voxel]

    def fit(key):
        n_words = [len(r.words) for r in stim.runs]
        z = zscore(np.concatenate(feats[key]))[: n_words[run]]
        x = np.column_stack([op @ z, np.ones(op.shape[0])])
        resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1 - resid.var() / y.var()

    assert fit((2, "per_head_q_rope")) > 0.999
    assert fit((3, "per_head_q_rope")) < 0.8
    assert fit((2, "per_head_k_rope")) < 0.8


def test_deterministic_and_seeded():
    a = synthetic.load_synthetic(truth_model=FakeAdapter(), truth=TRUTH, scale="tiny")
    b = synthetic.load_synthetic(truth_model=FakeAdapter(), truth=json.dumps(TRUTH), scale="tiny")
    c = synthetic.load_synthetic(truth_model=FakeAdapter(), truth=TRUTH, scale="tiny", seed="1")
    assert a.version == b.version != c.version
    for x, y in zip(a.load_bold("average"), b.load_bold("average")):
        assert x.tobytes() == y.tobytes()
    np.testing.assert_array_equal(a.noise_ceiling("average"), b.noise_ceiling("average"))
    assert not np.allclose(a.load_bold("average")[0][:5], c.load_bold("average")[0][:5])


def test_tiny_scale_and_feature_cache():
    adapter = FakeAdapter()
    adapter.revision = "fake-rev-cache-test"  # a cache key no other test has filled
    tiny = synthetic.load_synthetic(truth_model=adapter, truth=TRUTH, scale="tiny")
    assert set(np.unique(tiny.parcels.labels)) == {1, 2, 10, 45}  # planted + 2 null parcels
    assert all(len(r.words) == 150 for r in tiny.stimulus.runs)
    assert tiny.load_bold("average")[0].shape == (tiny.stimulus.runs[0].n_scans, tiny.n_voxels)
    again = synthetic.load_synthetic(truth_model=adapter, truth=TRUTH, scale="tiny")
    again.load_bold("average")
    assert adapter.calls == 1  # the second load read the feature cache
    assert tiny.version != synthetic.load_synthetic(truth_model=adapter, truth=TRUTH).version


@pytest.mark.parametrize(
    "options, message",
    [
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"scale": "huge"}, "scale"),
        ({"snr": "-1"}, "snr"),
        ({"snr": "abc"}, r"^dataset option snr must be a number, got 'abc'; e.g. --dataset-option snr=0.45$"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),  # was silently seed 1
        ({"truth": "[not json"}, "JSON"),
        ({"truth": [{"parcel": "Heschls Gyrus", "layer": 1, "state": "per_head_q_rope"}]}, "did you mean"),
        ({"truth": [{"parcel": HESCHL, "layer": 9, "state": "per_head_q_rope"}]}, "has 4 layers"),
        ({"truth": [{"parcel": HESCHL, "layer": 1, "state": "nope"}]}, "not produced"),
        ({"truth": [TRUTH[0], TRUTH[0]]}, "twice"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(MtbenchError, match=message) as err:
        synthetic.load_synthetic(truth_model=FakeAdapter(), **options)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_default_truth_model_loads():
    """The real default: smollm2-135m features (minutes on CPU when not cached)."""
    data = synthetic.load_synthetic(scale="tiny")
    assert data.truth["truth_model"] == "smollm2-135m"
    assert data.load_bold("average")[0].shape[1] == data.n_voxels
