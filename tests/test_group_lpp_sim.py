"""`lpp-en-sim` simulated subjects (`mtbench data simulate lpp-en --option subjects=N`): each is the average's
planted signal plus sqrt(49) x its own AR(1) noise, so split halves of 49 of them correlate like the real
English split-half ISC (in planted voxels). Tiny mask, fake adapter (no torch), real timing and ISC."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from mtbench_plugins.datasets.lpp.dataset import load_lpp
from mtbench_plugins.datasets.lpp.simulate import simulate_lpp
from test_synthetic import FakeAdapter  # tests/ is on sys.path under pytest

from mtbench.errors import MtbenchError

HESCHL = "Heschl's Gyrus (includes H1 and H2)"
TRUTH = [{"parcel": HESCHL, "layer": 2, "state": "per_head_q_rope"}]


@pytest.fixture(scope="module")
def simulations(tmp_path_factory, lpp_reference, atlas_cache):
    root = tmp_path_factory.mktemp("lpp-sim-subjects")
    shutil.copytree(atlas_cache / "atlas", root / "cache" / "atlas")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTBENCH_CACHE", str(root / "cache"))
        for name, n in (("plain", 0), ("subjects", 49)):
            simulate_lpp(out=root / name, truth=json.dumps(TRUTH), source=lpp_reference, seed=0,
                         truth_model=FakeAdapter(), scale="tiny", subjects=n)
        yield {name: load_lpp("en", name="lpp-en-sim", root=str(root / name)) for name in ("plain", "subjects")}, root


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_subjects_leave_the_average_untouched(simulations):
    datasets, root = simulations
    bold = "derivatives/mtbench-4mm/bold"
    assert _digest(root / "plain" / bold) == _digest(root / "subjects" / bold)  # the average, bit for bit
    assert not (root / "plain" / "derivatives/mtbench-4mm/subjects").exists()
    assert datasets["plain"].subjects == ["average"]
    assert datasets["subjects"].subjects[:3] == ["average", "sim01", "sim02"] and len(datasets["subjects"].subjects) == 50
    assert datasets["subjects"].expand_subjects("all")[-1] == "sim49"
    one = datasets["subjects"].load_bold("sim01")
    assert [b.shape for b in one] == [b.shape for b in datasets["plain"].load_bold("average")]
    assert np.array_equal(one[0], datasets["subjects"].load_bold("sim01")[0])
    assert not np.array_equal(one[0], datasets["subjects"].load_bold("sim02")[0])


def test_split_half_reliability_matches_the_real_isc(simulations, lpp_reference):
    """Halves of 24 and 25 of the 49 simulated subjects: their mean time series correlate per planted voxel
    as the real ISC says (r_v clipped to [0.01, 0.9]); the mean over Heschl's gyrus within 0.03 (one voxel's
    split-half r over 2,816 scans has SD ~0.02), and voxel by voxel the two correlate (> 0.5)."""
    import nibabel as nib

    datasets, _ = simulations
    dataset = datasets["subjects"]
    subjects = dataset.expand_subjects("all")
    sums = [None, None]
    for i, subject in enumerate(subjects):
        y = np.concatenate(dataset.load_bold(subject)).astype(np.float64)
        half = i % 2
        sums[half] = y if sums[half] is None else sums[half] + y
    za, zb = ((s - s.mean(0)) / s.std(0) for s in sums)
    measured = (za * zb).mean(0)
    real_mask = np.asarray(nib.load(lpp_reference / "en" / "mask_lpp_en.nii.gz").dataobj) > 0
    kept = (np.asarray(dataset.mask_img.dataobj) > 0)[real_mask]
    real = np.clip(np.load(lpp_reference / "en" / "isc_10trials_en.npy").mean(0)[kept], 0.01, 0.9)
    planted = dataset.parcels.labels == 45
    assert abs(measured[planted].mean() - real[planted].mean()) < 0.03, (measured[planted].mean(), real[planted].mean())
    assert np.corrcoef(measured[planted], real[planted])[0, 1] > 0.5
    assert abs(measured[~planted].mean()) < 0.02  # null voxels: no shared signal
    # a simulated subject's exact ceiling: its SNR is the average's / 49
    c_avg, c_sub = dataset.noise_ceiling("average")[planted], dataset.noise_ceiling("sim01")[planted]
    snr = c_avg ** 2 / (1 - c_avg ** 2)
    np.testing.assert_allclose(c_sub, np.sqrt(snr / 49 / (1 + snr / 49)), rtol=1e-4)


def test_bad_subjects_option(tmp_path, lpp_reference):
    with pytest.raises(MtbenchError, match="option subjects must be an integer"):
        simulate_lpp(out=tmp_path / "x", truth=json.dumps(TRUTH), source=lpp_reference, truth_model=FakeAdapter(),
                     scale="tiny", subjects="many")
