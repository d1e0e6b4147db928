"""`mtbench data prepare lpp-en` on a miniature ds003643 tree, checked against direct nilearn calls.

The tree has the real file names of two English subjects (their real run labels, EN093's
with gaps), the real scan counts per run, the real annotation, and tiny NIfTIs (12 mm
voxels) holding a bright "brain" whose voxels share a story-driven signal plus subject noise.
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import resample_img
from nilearn.masking import compute_multi_epi_mask
from nilearn.signal import clean

from mtbench.errors import MtbenchError
from mtbench_plugins.datasets.atlas import MNI_4MM_AFFINE, MNI_4MM_SHAPE, harvard_oxford_cortical
from mtbench_plugins.datasets.lpp.dataset import load_lpp
from mtbench_plugins.datasets.lpp.layout import LANGUAGES, PREPARED_DIR, read_manifest, runs_by_subject
from mtbench_plugins.datasets.lpp.prepare import clean_run, group_mask, prepare_lpp, subject_mean_epi

SUBJECTS = ["EN057", "EN093"]
NATIVE_AFFINE = np.array([[12.0, 0, 0, -48], [0, 12, 0, -72], [0, 0, 12, -40], [0, 0, 0, 1]])
NATIVE_SHAPE = (9, 12, 8)


def _brain() -> np.ndarray:
    i, j, k = np.indices(NATIVE_SHAPE)
    return ((i - 4) / 3.6) ** 2 + ((j - 5.5) / 4.8) ** 2 + ((k - 3.5) / 3.2) ** 2 < 1


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """Two subjects' 24-scan runs on the tiny native grid (fast checks of the pipeline's pieces)."""
    rng = np.random.default_rng(1)
    brain, story = _brain(), rng.standard_normal((_brain().sum(), 24)).cumsum(1)
    imgs = []
    for s in range(2):
        data = rng.normal(5.0, 1.0, (*NATIVE_SHAPE, 24)).astype(np.float32)
        data[brain] = 1000 + np.linspace(0, 20, 24) + story + 2.0 * rng.standard_normal((brain.sum(), 24))
        imgs.append(nib.Nifti1Image(data, NATIVE_AFFINE))
    return imgs


def test_group_mask_and_clean_run_match_nilearn(short_runs):
    from nilearn.image import mean_img

    means = [mean_img(img, copy_header=True) for img in short_runs]
    mask = group_mask(means)
    direct = np.asarray(compute_multi_epi_mask(means, target_affine=MNI_4MM_AFFINE, target_shape=MNI_4MM_SHAPE,
                                               threshold=0.5).dataobj) > 0
    assert np.array_equal(mask, direct & direct[::-1]) and 100 < mask.sum() <= direct.sum()
    resampled = resample_img(short_runs[0], target_affine=MNI_4MM_AFFINE, target_shape=MNI_4MM_SHAPE,
                             interpolation="continuous", force_resample=True, copy_header=True)
    expected = clean(np.asarray(resampled.dataobj)[mask].T, detrend=True, standardize="zscore_sample",
                     high_pass=1 / 128, t_r=2.0)
    np.testing.assert_allclose(clean_run(short_runs[0], mask), expected, atol=2e-4)


@pytest.fixture(scope="module")
def mini_tree(tmp_path_factory, lpp_reference, atlas_cache):
    root = tmp_path_factory.mktemp("ds003643")
    lang = LANGUAGES["en"]
    (root / lang.annotation).parent.mkdir(parents=True)
    shutil.copyfile(lpp_reference / "en" / "annotation" / "lppEN_word_information.csv", root / lang.annotation)
    names = runs_by_subject(lang, [m.path for m in read_manifest(lpp_reference / "ds003643_manifest.tsv")])
    rng = np.random.default_rng(0)
    brain = _brain()
    story = [3.0 * rng.standard_normal((brain.sum(), n)) for n in lang.n_scans]  # shared by the subjects
    for s, subject in enumerate(SUBJECTS):
        for r, (relative, n_scans) in enumerate(zip(names[subject], lang.n_scans)):
            data = rng.normal(5.0, 1.0, (*NATIVE_SHAPE, n_scans)).astype(np.float32)
            drift = np.linspace(0, 20, n_scans)  # a linear drift the detrending removes
            data[brain] = 1000 + 50 * s + drift + story[r] + 2.0 * rng.standard_normal((brain.sum(), n_scans))
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, NATIVE_AFFINE), path)
    cache = tmp_path_factory.mktemp("cache")
    shutil.copytree(atlas_cache / "atlas", cache / "atlas")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTBENCH_CACHE", str(cache))
        message = prepare_lpp("en", root=root, n_splits=3)
    return root, names, message


@pytest.mark.slow
def test_prepare_matches_direct_nilearn(mini_tree):
    root, names, message = mini_tree
    assert message.startswith(f"prepared lpp-en in {root / PREPARED_DIR}: 2 subjects + average")
    dataset = load_lpp("en", root=str(root))
    assert dataset.subjects == ["average", *SUBJECTS]

    files = {s: [root / p for p in names[s]] for s in SUBJECTS}
    direct_mask = np.asarray(compute_multi_epi_mask([subject_mean_epi(files[s]) for s in SUBJECTS],
                                                    target_affine=MNI_4MM_AFFINE, target_shape=MNI_4MM_SHAPE,
                                                    threshold=0.5).dataobj) > 0
    mask = np.asarray(dataset.mask_img.dataobj) > 0
    assert np.array_equal(mask, direct_mask & direct_mask[::-1]) and mask.sum() > 100
    assert np.allclose(dataset.mask_img.affine, MNI_4MM_AFFINE) and mask.shape == MNI_4MM_SHAPE
    assert np.array_equal(mask, mask[::-1])  # symmetric about x = 0

    run = 2  # run 3: EN057's run-17, EN093's run-08
    direct = {}
    for subject in SUBJECTS:
        resampled = resample_img(nib.load(files[subject][run]), target_affine=MNI_4MM_AFFINE,
                                 target_shape=MNI_4MM_SHAPE, interpolation="continuous", force_resample=True,
                                 copy_header=True)
        signals = np.asarray(resampled.dataobj)[mask].T
        direct[subject] = clean(signals, detrend=True, standardize="zscore_sample", high_pass=1 / 128, t_r=2.0)
        np.testing.assert_allclose(dataset.load_bold(subject)[run], direct[subject], atol=2e-4)
    mean = (direct[SUBJECTS[0]] + direct[SUBJECTS[1]]) / 2
    std = mean.std(0, ddof=1)
    std[std < np.finfo(np.float64).eps] = 1.0  # as nilearn: (near-)constant voxels are only centred
    expected_average = (mean - mean.mean(0)) / std
    np.testing.assert_allclose(dataset.load_bold("average")[run], expected_average, atol=2e-4)

    # Two subjects: every split-half is subject A against subject B, a plain per-voxel correlation.
    a = np.concatenate(dataset.load_bold(SUBJECTS[0]))
    b = np.concatenate(dataset.load_bold(SUBJECTS[1]))
    a, b = a - a.mean(0), b - b.mean(0)
    norm = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    r_direct = np.divide((a * b).sum(0), norm, out=np.zeros_like(norm), where=norm > 0)  # 0 where constant
    reliability = np.load(root / PREPARED_DIR / "reliability.npy")
    assert reliability.shape == (3, mask.sum())
    np.testing.assert_allclose(reliability, np.broadcast_to(r_direct, reliability.shape), atol=1e-4)
    # The shared story signal survives the pipeline deep inside the brain; outside it nothing is shared.
    ijk = np.argwhere(mask)
    native = (np.linalg.inv(NATIVE_AFFINE) @ MNI_4MM_AFFINE @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    depth = ((native[:, 0] - 4) / 3.6) ** 2 + ((native[:, 1] - 5.5) / 4.8) ** 2 + ((native[:, 2] - 3.5) / 3.2) ** 2
    assert r_direct[depth < 0.5].mean() > 0.3
    outside = depth > 1.5
    assert not outside.any() or abs(r_direct[outside].mean()) < 0.1

    labels, _ = harvard_oxford_cortical(MNI_4MM_AFFINE, MNI_4MM_SHAPE)
    assert np.array_equal(dataset.parcels.labels, labels[mask])


def test_prepare_errors(tmp_path, lpp_reference):
    with pytest.raises(MtbenchError, match="lppEN_word_information.csv is missing"):
        prepare_lpp("en", root=tmp_path)
    lang = LANGUAGES["en"]
    (tmp_path / lang.annotation).parent.mkdir(parents=True)
    shutil.copyfile(lpp_reference / "en" / "annotation" / "lppEN_word_information.csv", tmp_path / lang.annotation)
    with pytest.raises(MtbenchError, match="at least 2 subjects .* run `mtbench data fetch lpp-en`"):
        prepare_lpp("en", root=tmp_path)
    with pytest.raises(MtbenchError, match="mtbench data fetch lpp-en --subjects EN001"):
        prepare_lpp("en", root=tmp_path, subjects=["EN001"])
    bad = tmp_path / lang.bold("EN057", 15)
    bad.parent.mkdir(parents=True)
    for label in range(15, 24):  # EN057's real labels, one run a scan short
        n_scans = lang.n_scans[label - 15] - (label == 16)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, n_scans), np.float32), np.eye(4)), tmp_path / lang.bold("EN057", label))
    shutil.copytree(bad.parent.parent, tmp_path / "derivatives" / "sub-EN058")
    for path in (tmp_path / "derivatives" / "sub-EN058" / "func").iterdir():
        path.rename(path.with_name(path.name.replace("EN057", "EN058")))
    with pytest.raises(MtbenchError, match="run-16.*297 scans but run 2 has 298"):
        prepare_lpp("en", root=tmp_path)
    for subject in ("EN057", "EN058"):  # whole runs now; but the output folder cannot be made (a read-only
        path = tmp_path / lang.bold(subject, 16)  # root would do the same): one line before any resampling
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, lang.n_scans[1]), np.float32), np.eye(4)), path)
    (tmp_path / PREPARED_DIR).write_text("")
    with pytest.raises(MtbenchError, match=r"cannot write to .*mtbench-4mm \(.*mtbench-4mm is a file\); make the "
                                           r"dataset root writable"):
        prepare_lpp("en", root=tmp_path)
