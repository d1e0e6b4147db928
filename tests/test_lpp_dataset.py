"""Le Petit Prince loader: real annotation, real run labels and file names, prepared folder, errors."""

from __future__ import annotations

import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from mtbench.ceiling import ceiling_from_split_half, random_halves, split_half_reliability
from mtbench.errors import MtbenchError
from mtbench_plugins.datasets.lpp.dataset import load_lpp, write_bold, write_prepared
from mtbench_plugins.datasets.lpp.layout import LANGUAGES, PREPARED_DIR, read_annotation, read_manifest, runs_by_subject

# Rows per section of the real lppEN_word_information.csv, and its empty words (the "n't" halves).
EN_ROWS_PER_SECTION = [1517, 1690, 1852, 1624, 1534, 1815, 1786, 1583, 1975]
EN_EMPTY_WORDS = 31


def test_real_english_annotation_has_15376_words_in_9_sections(lpp_reference):
    annotation = read_annotation(lpp_reference / "en" / "annotation" / "lppEN_word_information.csv")
    assert annotation.n_rows == 15376 == sum(EN_ROWS_PER_SECTION)
    assert len(annotation.sections) == 9
    assert annotation.dropped == {"empty word": EN_EMPTY_WORDS}
    kept = [len(s) for s in annotation.sections]
    assert sum(kept) == 15376 - EN_EMPTY_WORDS
    assert all(0 <= rows - k <= EN_EMPTY_WORDS for rows, k in zip(EN_ROWS_PER_SECTION, kept))
    assert annotation.sections[0][0] == ("once", 0.113, 0.728)
    for section, n_scans in zip(annotation.sections, LANGUAGES["en"].n_scans):
        onsets = np.array([w[1] for w in section])
        assert np.all(np.diff(onsets) >= 0) and section[-1][2] < n_scans * 2.0


def test_annotation_quirks_are_dropped_and_counted(tmp_path):
    path = tmp_path / "lppFR_word_information.csv"
    path.write_text(",word,lemma,onset,offset,section\n0,le,le,0.1,0.3,1\n1,,pas,0.3,0.4,1\n2,nan,x,,,1\n"
                    "3,petit,petit,0.5,0.8,1\n4,prince,prince,0.9,1.2,2\n", encoding="utf-8")
    annotation = read_annotation(path, n_sections=2)
    assert annotation.n_rows == 5
    assert annotation.dropped == {"empty word": 1, "missing onset/offset/section": 1}
    assert [w for w, *_ in annotation.sections[0]] == ["le", "petit"]
    with pytest.raises(MtbenchError, match="section"):
        read_annotation(path, n_sections=3)  # section 3 has no words


@pytest.mark.parametrize("key, n_subjects", [("en", 49), ("fr", 28), ("cn", 35)])
def test_runs_are_the_sorted_real_run_labels(key, n_subjects, lpp_reference):
    lang = LANGUAGES[key]
    real = [row.path for row in read_manifest(lpp_reference / "ds003643_manifest.tsv")]
    runs = runs_by_subject(lang, real)
    assert len(runs) == n_subjects
    for subject, paths in runs.items():
        labels = [int(re.search(r"_run-(\d+)_", p)[1]) for p in paths]
        assert len(paths) == 9 and labels == sorted(labels) and len(set(labels)) == 9, subject
        assert paths == [str(lang.bold(subject, label)) for label in labels]
    assert str(lang.annotation) in real


def test_run_labels_of_real_subjects(lpp_reference):
    real = [row.path for row in read_manifest(lpp_reference / "ds003643_manifest.tsv")]
    en = runs_by_subject(LANGUAGES["en"], real)
    assert [p.split("_run-")[1][:2] for p in en["EN057"]] == [str(n) for n in range(15, 24)]  # the README's 15..23
    assert [p.split("_run-")[1][:2] for p in en["EN093"]] == ["06", "07", "08", "11", "12", "13", "14", "15", "16"]
    fr = runs_by_subject(LANGUAGES["fr"], real)
    assert all([p.split("_run-")[1][:2] for p in paths] == [f"{n:02d}" for n in range(1, 10)] for paths in fr.values())
    with pytest.raises(MtbenchError, match="sub-EN057 has 8 BOLD runs, expected 9"):
        runs_by_subject(LANGUAGES["en"], en["EN057"][:8])


# --------------------------------------------------------------------------- prepared folder
N_VOXELS = 24
SUBJECTS = ["EN057", "EN058"]


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory, lpp_reference):
    """A ds003643 root with the real annotation, tiny raw BOLD for EN057 and a prepared folder."""
    root = tmp_path_factory.mktemp("lpp-root")
    lang = LANGUAGES["en"]
    (root / lang.annotation).parent.mkdir(parents=True)
    shutil.copyfile(lpp_reference / "en" / "annotation" / "lppEN_word_information.csv", root / lang.annotation)
    real_names = runs_by_subject(lang, [row.path for row in read_manifest(lpp_reference / "ds003643_manifest.tsv")])
    for relative, n_scans in zip(real_names["EN057"], lang.n_scans):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, n_scans), np.float32), np.eye(4)), path)
    mask = np.zeros((37, 46, 38), dtype=bool)
    mask[10:12, 20:24, 15:18] = True  # 24 voxels
    parcels = np.where(np.arange(N_VOXELS) < 12, 45, 0)
    rng = np.random.default_rng(0)
    bold = {s: [rng.standard_normal((n, N_VOXELS)).astype(np.float32) for n in lang.n_scans]
            for s in ["average", *SUBJECTS]}
    prepared = root / PREPARED_DIR
    for subject, runs in bold.items():
        write_bold(prepared, subject, runs)
    reliability = rng.uniform(-0.1, 0.7, (10, N_VOXELS)).astype(np.float32)
    write_prepared(prepared, mask, np.diag([4.0, 4.0, 4.0, 1.0]), parcels, reliability,
                   {"subjects": ["average", *SUBJECTS], "n_scans": list(lang.n_scans)})
    return root, bold, reliability


def test_loader_reads_the_prepared_root(prepared_root):
    root, bold, reliability = prepared_root
    dataset = load_lpp("en", root=str(root))
    assert dataset.name == "lpp-en" and dataset.stimulus.language == "en" and dataset.stimulus.tr == 2.0
    assert [run.n_scans for run in dataset.stimulus.runs] == [282, 298, 340, 303, 265, 343, 325, 292, 368]
    assert sum(len(run.words) for run in dataset.stimulus.runs) == 15376 - EN_EMPTY_WORDS
    assert dataset.annotation.dropped == {"empty word": EN_EMPTY_WORDS}
    assert dataset.subjects == ["average", *SUBJECTS]
    assert dataset.expand_subjects("all") == SUBJECTS
    assert dataset.expand_subjects("sub-EN058,EN057") == ["EN058", "EN057"]
    for subject in ("average", "EN057"):
        loaded = dataset.load_bold(subject)
        assert len(loaded) == 9 and all(np.array_equal(a, b) for a, b in zip(loaded, bold[subject]))
    assert dataset.parcels.labels.shape == (N_VOXELS,) and dataset.parcels.names == {
        45: "Heschl's Gyrus (includes H1 and H2)"}
    expected = np.sqrt(2 * np.clip(reliability.mean(0), 0, 1) / (1 + np.clip(reliability.mean(0), 0, 1)))
    np.testing.assert_allclose(dataset.noise_ceiling("average"), expected, rtol=1e-6)
    assert dataset.noise_ceiling("EN057") is None
    assert dataset.truth is None
    with pytest.raises(MtbenchError, match="no subject 'EN999'"):
        dataset.load_bold("EN999")


def test_missing_root_says_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(MtbenchError, match="mtbench data fetch lpp-en") as err:
        load_lpp("en", root=str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    monkeypatch.setenv("MTBENCH_LPP_ROOT", str(tmp_path / "from-env"))
    with pytest.raises(MtbenchError, match="from-env"):
        load_lpp("fr")
    (tmp_path / "from-env").mkdir()
    with pytest.raises(MtbenchError, match="lppFR_word_information.csv is missing"):
        load_lpp("fr")
    with pytest.raises(MtbenchError, match="unknown option 'rooot'"):
        load_lpp("en", rooot="x")


def test_scan_counts_are_checked_against_the_bold_files(prepared_root, tmp_path):
    root, _, _ = prepared_root
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    lang = LANGUAGES["en"]  # EN057's run 3 is its run-17
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 339), np.float32), np.eye(4)), copy / lang.bold("EN057", 17))
    dataset = load_lpp("en", root=str(copy))
    with pytest.raises(MtbenchError, match="run-17.*339 scans, run 3 has 340"):
        dataset.load_bold("EN057")
    np.save(copy / PREPARED_DIR / "bold" / "sub-EN058_run-2.npy", np.zeros((297, N_VOXELS), np.float32))
    with pytest.raises(MtbenchError, match=r"sub-EN058_run-2.npy has shape \(297, 24\), expected \(298, 24\)"):
        dataset.load_bold("EN058")


@pytest.mark.parametrize("name, damage", [
    ("prepared.json", "truncate"),
    ("mask.nii.gz", "truncate"),  # the gzip stream ends early
    ("mask.nii.gz", "garbage"),
    ("parcels.npy", "truncate"),
    ("reliability.npy", "garbage"),
    ("bold/sub-EN058_run-4.npy", "truncate"),  # a copy cut short
])
def test_damaged_prepared_files_are_one_line_errors_naming_them(prepared_root, tmp_path, name, damage):
    root, _, _ = prepared_root
    copy = shutil.copytree(root, tmp_path / "copy")
    path = copy / PREPARED_DIR / name
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2] if damage == "truncate" else b"not a file")
    with pytest.raises(MtbenchError) as err:
        dataset = load_lpp("en", root=str(copy))
        dataset.load_bold("EN058")
        dataset.noise_ceiling("average")
    message = str(err.value)
    assert message.startswith(f"dataset lpp-en: {path} is damaged (") and "\n" not in message, message
    assert message.endswith("); re-run `mtbench data prepare lpp-en`")


def test_a_simulated_dataset_names_the_command_that_rewrites_it(prepared_root, tmp_path):
    root, _, _ = prepared_root
    copy = shutil.copytree(root, tmp_path / "copy")
    (copy / PREPARED_DIR / "bold" / "sub-average_run-1.npy").unlink()
    dataset = load_lpp("en", name="lpp-en-sim", root=str(copy))
    with pytest.raises(MtbenchError, match=r"run-1.npy is missing: re-run `mtbench data simulate lpp-en-sim`$"):
        dataset.load_bold("average")  # there is no `data prepare lpp-en-sim`


def test_split_half_reliability_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    shared = [rng.standard_normal((n, 5)) for n in (30, 40)]
    data = [[s + rng.standard_normal(s.shape) * (1 + v) for s, v in zip(shared, range(2))] for _ in range(6)]
    r = split_half_reliability(lambda s, k: data[s][k], n_subjects=6, n_runs=2, n_splits=4, seed=3)
    halves = random_halves(6, 4, seed=3)
    assert halves.sum(1).tolist() == [3, 3, 3, 3]
    for split in range(4):
        a = [np.mean([data[s][k] for s in range(6) if halves[split, s]], 0) for k in range(2)]
        b = [np.mean([data[s][k] for s in range(6) if not halves[split, s]], 0) for k in range(2)]
        a = np.concatenate([x - x.mean(0) for x in a])
        b = np.concatenate([x - x.mean(0) for x in b])
        direct = [np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(5)]
        np.testing.assert_allclose(r[split], direct, rtol=1e-5)
    assert r.mean() > 0.3  # the shared signal makes the halves agree
    np.testing.assert_allclose(ceiling_from_split_half(np.array([[0.5, -0.2]])), [np.sqrt(2 / 3), 0.0], rtol=1e-6)


def test_subject_all_expands_through_the_dataset(prepared_root):
    from mtbench.settings import RunSettings
    from mtbench.runner import expand_subjects

    root, _, _ = prepared_root
    settings = RunSettings(model="smollm2-135m", dataset="lpp-en", states=["all"], subject="all",
                           dataset_options={"root": str(root)})
    assert expand_subjects(settings) == SUBJECTS
    settings.subject = "EN058,sub-EN057"
    assert expand_subjects(settings) == ["EN058", "EN057"]
    settings.subject, settings.dataset_options = "average", {"root": "/nowhere"}
    assert expand_subjects(settings) == ["average"]  # one subject: nothing is loaded
