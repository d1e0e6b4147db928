"""Mode 2 (mtbench_plugins.analyses.mode2): the reference's two-stage pivot selection, its nesting, banded ridge, the CLI.

The reference below is MindTransformer's ``llm-mode2`` loop written out with scikit-learn
(one alpha for the parcel chosen on the first remaining run, ridge on all training runs,
rank features by mean |beta| over the parcel's voxels, keep as many as the pivot has,
refit with the same alpha). With ``shared_alpha=True, inner="first"`` mtbench must give
the same stage-1 and stage-2 scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import Ridge

from mtbench.alignment import zscore
from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError
from mtbench_plugins.analyses.mode2.fit import banded_ridge, pivot_selection
from mtbench_plugins.analyses.mode2.tables import LayerFit, Mode2Result, nested_choices, nested_layer_choice

ALPHAS = np.logspace(-1, 4, 8)
DIMS = [30, 8, 8, 30]  # states A, B, C, D; B and C carry signal, A and D are distractors
PIVOT = 8


def _corr_columns(y, p):
    return np.array([np.corrcoef(y[:, v], p[:, v])[0, 1] for v in range(y.shape[1])])


def reference_mode2(xs, ys, alphas, n_keep):
    """MindTransformer's Mode 2 on one parcel: per-fold stage-1 and stage-2 r, kept indices."""
    n_runs = len(xs)
    s1, s2, kept = [], [], []
    for o in range(n_runs):
        train = [r for r in range(n_runs) if r != o]
        val, inner = train[0], train[1:]
        x_in, y_in = np.concatenate([xs[r] for r in inner]), np.concatenate([ys[r] for r in inner])
        scores = [np.nanmean(_corr_columns(ys[val], Ridge(alpha=a, fit_intercept=False).fit(x_in, y_in).predict(xs[val])))
                  for a in alphas]
        alpha = alphas[int(np.nanargmax(scores))]
        x_tr, y_tr = np.concatenate([xs[r] for r in train]), np.concatenate([ys[r] for r in train])
        model = Ridge(alpha=alpha, fit_intercept=False).fit(x_tr, y_tr)
        s1.append(_corr_columns(ys[o], model.predict(xs[o])))
        keep = np.argsort(np.mean(np.abs(model.coef_), axis=0))[::-1][:n_keep]
        model2 = Ridge(alpha=alpha, fit_intercept=False).fit(x_tr[:, keep], y_tr)
        s2.append(_corr_columns(ys[o], model2.predict(xs[o][:, keep])))
        kept.append(np.sort(keep))
    return np.array(s1), np.array(s2), kept


def planted(seed=0, n_runs=4, n_scans=60, snr=1.0, test_only_run=None):
    """Four input states; parcel 1 driven by state B, parcel 2 by state C, parcel 3 noise.

    With ``test_only_run`` the signal exists only in that run (elsewhere pure noise).
    """
    rng = np.random.default_rng(seed)
    xs = [zscore(rng.standard_normal((n_scans, sum(DIMS)))) for _ in range(n_runs)]
    labels = np.repeat([1, 2, 3], 12)
    bounds = np.cumsum([0, *DIMS])
    weights = np.zeros((sum(DIMS), labels.size))
    for parcel, state in ((1, 1), (2, 2)):
        cols = slice(bounds[state], bounds[state + 1])
        weights[cols, labels == parcel] = rng.standard_normal((DIMS[state], (labels == parcel).sum()))
    ys = []
    for r, x in enumerate(xs):
        signal = zscore(x @ weights) * np.sqrt(snr) if test_only_run in (None, r) else 0.0
        ys.append(zscore(signal + rng.standard_normal((n_scans, labels.size))))
    groups = [(-1, "whole brain", np.arange(labels.size))] + [(p, f"parcel {p}", np.flatnonzero(labels == p))
                                                                 for p in (1, 2, 3)]
    return xs, ys, groups


# --------------------------------------------------------------------------- engine hooks
@pytest.mark.parametrize("n_features", [20, 100], ids=["feature-form", "kernel-form"])
def test_outer_runs_and_refit_coefficients(n_features):
    rng = np.random.default_rng(n_features)
    xs = [zscore(rng.standard_normal((30, n_features))) for _ in range(4)]
    ys = [zscore(x[:, :5] @ rng.standard_normal((5, 6)) + rng.standard_normal((30, 6))) for x in xs]
    full = fit_nested_loro(xs, ys, ALPHAS, precision="float32")
    coefs = {}
    part = fit_nested_loro(xs, ys, ALPHAS, precision="float32", outer_runs=[2],
                           on_refit=lambda o, c0, c1, coef: coefs.setdefault(o, coef))
    np.testing.assert_allclose(part.test_per_run[2], full.test_per_run[2], atol=1e-5)
    np.testing.assert_allclose(part.alpha_per_run[2], full.alpha_per_run[2])
    assert np.isnan(part.test_per_run[[0, 1, 3]]).all() and list(coefs) == [2]
    # the coefficients are the ridge solution on runs 0, 1, 3 at each voxel's chosen alpha
    x_tr, y_tr = np.concatenate([xs[r] for r in (0, 1, 3)]), np.concatenate([ys[r] for r in (0, 1, 3)])
    for v in range(6):
        model = Ridge(alpha=float(part.alpha_per_run[2, v]), fit_intercept=False).fit(x_tr, y_tr[:, v])
        np.testing.assert_allclose(coefs[2][:, v], model.coef_, atol=2e-4 * np.abs(model.coef_).max())


@pytest.mark.slow  # himalaya's solver: ~1 s alone, 15 s on a busy 2-core box
def test_himalaya_backend_gives_the_same_refit_coefficients():
    rng = np.random.default_rng(5)
    xs = [zscore(rng.standard_normal((30, 12))) for _ in range(4)]
    ys = [zscore(x[:, :3] @ rng.standard_normal((3, 4)) + rng.standard_normal((30, 4))) for x in xs]
    got = {}
    for backend in ("torch", "himalaya"):
        res = fit_nested_loro(xs, ys, ALPHAS, backend=backend, precision="float32", outer_runs=[1],
                              on_refit=lambda o, c0, c1, coef, b=backend: got.setdefault(b, coef))
        assert np.isnan(res.test_per_run[0]).all() and np.isfinite(res.test_per_run[1]).all()
    np.testing.assert_allclose(got["himalaya"], got["torch"], atol=1e-4)


# --------------------------------------------------------------------------- pivot selection
def test_pivot_matches_the_reference_with_shared_alpha():
    xs, ys, groups = planted(seed=1)
    fits = pivot_selection(xs, ys, DIMS, PIVOT, groups, ALPHAS, shared_alpha=True, inner="first",
                           precision="float32")
    bounds = np.cumsum([0, *DIMS])
    for fit, (_, _, idx) in zip(fits, groups):
        s1, s2, kept = reference_mode2(xs, [y[:, idx] for y in ys], ALPHAS, PIVOT)
        np.testing.assert_allclose(fit.stage1_test, s1, atol=1e-4)
        np.testing.assert_allclose(fit.stage2_test, s2, atol=1e-4)
        for o, keep in enumerate(kept):
            np.testing.assert_array_equal(fit.kept[o], np.histogram(keep, bounds)[0])


def test_pivot_keeps_the_planted_state_and_stage2_gains():
    xs, ys, groups = planted(seed=2)
    fits = {g.parcel_id: g for g in pivot_selection(xs, ys, DIMS, PIVOT, groups, ALPHAS, precision="float32")}
    for parcel, state in ((1, 1), (2, 2)):
        g = fits[parcel]
        share = g.kept.mean(0) / PIVOT
        assert share[state] >= 0.75, share  # most kept features come from the planted state
        assert np.argmax(g.importance.mean(0)) == state
        assert g.stage2_test.mean() > g.stage1_test.mean() + 0.02  # 8 right features beat 76 mixed ones
        assert g.stage2_test.mean() > 0.4
    assert abs(fits[3].stage2_test.mean()) < 0.1 and abs(fits[3].stage1_test.mean()) < 0.1
    assert fits[-1].kept.sum(1).tolist() == [PIVOT] * 4


def test_selection_never_sees_the_test_run():
    # Changing everything in run 0 (features and BOLD) must not change fold 0's selection,
    # its stage-1 coefficients' ranking or its validation scores: they use runs 1-3 only.
    xs, ys, groups = planted(seed=3)
    base = pivot_selection(xs, ys, DIMS, PIVOT, groups, ALPHAS, precision="float32")
    rng = np.random.default_rng(99)
    xs2, ys2 = list(xs), list(ys)
    xs2[0] = zscore(rng.standard_normal(xs[0].shape))
    ys2[0] = zscore(xs2[0][:, :DIMS[0]] @ rng.standard_normal((DIMS[0], ys[0].shape[1])))  # A explains run 0 fully
    moved = pivot_selection(xs2, ys2, DIMS, PIVOT, groups, ALPHAS, precision="float32")
    for a, b in zip(base, moved):
        np.testing.assert_array_equal(a.kept[0], b.kept[0])
        np.testing.assert_allclose(a.importance[0], b.importance[0], atol=1e-6)
        np.testing.assert_allclose(a.stage2_validation[0], b.stage2_validation[0], atol=1e-5)
        assert b.kept[0][0] == a.kept[0][0]  # state A did not gain features from run 0's planted signal


def test_signal_only_in_the_test_run_is_not_fitted():
    xs, ys, groups = planted(seed=4, snr=4.0, test_only_run=2)
    fits = {g.parcel_id: g for g in pivot_selection(xs, ys, DIMS, PIVOT, groups, ALPHAS, precision="float32")}
    for parcel in (1, 2):
        assert abs(fits[parcel].stage2_test[2].mean()) < 0.15  # a leaky selection/refit would reach r ~ 0.9
        assert abs(fits[parcel].stage1_test[2].mean()) < 0.15


# --------------------------------------------------------------------------- nested layer choice
def test_nested_choice_differs_from_the_fold_averaged_choice():
    # layer 0 wins fold 0's validation by far, hence the fold average (0.3 vs 0.2); layer 1
    # wins the other three folds. Nested: layer 0 is scored on fold 0 only, layer 1 on the rest.
    validation = np.array([[0.9, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2]])
    test = np.array([[0.5, 0.0, 0.0, 0.0], [0.1, 0.3, 0.3, 0.3]])
    assert np.argmax(validation.mean(1)) == 0 and test[0].mean() == pytest.approx(0.125)  # the averaged choice
    picks, score, modal, agree = nested_layer_choice(validation, test)
    assert picks.tolist() == [0, 1, 1, 1] and (modal, agree) == (1, 0.75)
    assert score == pytest.approx((0.5 + 3 * 0.3) / 4)
    # NaN validation never wins; an all-NaN fold and ties go to the first layer, a tie in counts too
    nan = np.nan
    picks, score, modal, agree = nested_layer_choice([[nan, 0.4, nan, 0.2], [0.1, nan, nan, 0.2]],
                                                     [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    assert picks.tolist() == [1, 0, 0, 0] and score == pytest.approx((5 + 2 + 3 + 4) / 4) and (modal, agree) == (0, 0.75)
    # one fold each: the reported layer is the one with the higher fold-averaged validation, then the first
    assert nested_layer_choice([[0.1, 0.2], [0.3, 0.15]], [[0, 0], [0, 0]])[2:] == (1, 0.5)
    assert nested_layer_choice([[0.1, 0.3], [0.3, 0.1]], [[0, 0], [0, 0]])[2:] == (0, 0.5)
    assert nested_layer_choice([[nan, 0.3], [0.3, 0.1]], [[0, 0], [0, 0]])[2:] == (0, 0.5)  # NaN: mean of the rest
    with pytest.raises(MtbenchError, match=r"shape \(n_layers, n_folds\)"):
        nested_layer_choice(validation, test[:, :3])

    # the same choice from per-fold rows (mode2_folds.parquet), with layer numbers and the other scores
    def rows(parcel_id, val, tst):
        return [{"layer": layer, "parcel_id": parcel_id, "parcel": f"p{parcel_id}", "n_voxels": 5, "fold": fold,
                 "stage2_validation": val[k, fold], "stage2_test": tst[k, fold], "stage1_test": 10 * k + fold,
                 "stage1_validation": 0.0} for k, layer in enumerate((1, 3)) for fold in range(4)]

    made = nested_choices(rows(4, validation, test) + rows(-1, validation[::-1], test[::-1]))
    assert [m["parcel_id"] for m in made] == [-1, 4]
    brain, parcel = made
    assert (parcel["layer"], parcel["folds_agree"], parcel["fold_layers"]) == (3, 0.75, "1,3,3,3")
    assert parcel["test"] == pytest.approx(0.35)
    assert parcel["stage1_test"] == pytest.approx((0 + 11 + 12 + 13) / 4)  # the same fold's choice, stage 1
    assert parcel["validation"] == pytest.approx((0.9 + 3 * 0.2) / 4)
    assert parcel["test_ci_low"] < 0.35 < parcel["test_ci_high"]
    assert (brain["layer"], brain["fold_layers"], brain["test"]) == (1, "3,1,1,1", pytest.approx(0.35))
    with pytest.raises(MtbenchError, match="has 7 per-fold rows, not 2 layers x 4 folds") as info:
        nested_choices(rows(4, validation, test)[:-1])
    assert "\n" not in str(info.value)


def test_nested_rows_of_a_two_layer_fit_recompute_from_the_fold_arrays():
    xs, ys, groups = planted(seed=2)
    bounds = np.cumsum([0, *DIMS])
    noisy = [x.copy() for x in xs]  # layer 2: state B (parcel 1's driver) replaced by noise
    rng = np.random.default_rng(7)
    for x in noisy:
        x[:, bounds[1]:bounds[2]] = zscore(rng.standard_normal((x.shape[0], DIMS[1])))
    result = Mode2Result("pivot", list("ABCD"), "B")
    for layer, features in ((1, xs), (2, noisy)):
        fits = pivot_selection(features, ys, DIMS, PIVOT, groups, ALPHAS, precision="float32")
        result.layers.append(LayerFit(layer=layer, dims=DIMS, n_kept=PIVOT, groups=fits))
    ceiling = np.linspace(0.2, 0.8, ys[0].shape[1])
    nested = {row["parcel_id"]: row for row in result.nested_rows(ceiling)}
    folds = result.fold_rows()
    assert len(folds) == 2 * len(groups) * len(xs)
    for g, (pid, _, idx) in enumerate(groups):
        # direct: per fold, the layer with the best parcel-mean stage-2 validation, its test r on that fold
        val = np.stack([fit.groups[g].stage2_validation.mean(1) for fit in result.layers])  # (n_layers, n_runs)
        test = np.stack([fit.groups[g].stage2_test.mean(1) for fit in result.layers])
        picks = np.argmax(val, axis=0)
        row = nested[pid]
        assert row["test"] == pytest.approx(test[picks, np.arange(len(xs))].mean(), abs=1e-6)
        assert row["fold_layers"] == ",".join(str(p + 1) for p in picks)
        assert row["ceiling"] == pytest.approx(ceiling[idx].mean())
        assert row["test_normalized"] == pytest.approx(row["test"] / row["ceiling"])
        mine = [f for f in folds if f["parcel_id"] == pid and f["layer"] == 2]
        np.testing.assert_allclose([f["stage2_test"] for f in mine], test[1], atol=1e-6)
    # parcel 1 needs state B: every fold chooses layer 1, and its top state there is B
    assert (nested[1]["layer"], nested[1]["folds_agree"], nested[1]["top_state"]) == (1, 1.0, "B")
    assert nested[1]["test"] > 0.5


# --------------------------------------------------------------------------- banded ridge
def test_banded_ridge_credits_the_planted_band():
    xs, ys, groups = planted(seed=5)
    fits = {g.parcel_id: g for g in banded_ridge(xs, ys, DIMS, groups, ALPHAS, n_iter=8, precision="float32")}
    for parcel, state in ((1, 1), (2, 2)):
        g = fits[parcel]
        contribution = g.contribution.mean(0)
        assert np.argmax(contribution) == state, contribution
        assert contribution[state] > 0.6 * contribution.sum()
        # the parts add up to the test r of the summed prediction
        np.testing.assert_allclose(g.contribution.sum(1), g.stage2_test.mean(1), atol=1e-4)
        assert g.stage2_test.mean() > g.stage1_test.mean()
    assert abs(fits[3].stage2_test.mean()) < 0.1


# --------------------------------------------------------------------------- CLI
PLANTED = [{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 1, "state": "per_head_q_rope"}]


def _cli(tmp, model, *extra):
    env = dict(os.environ, MTBENCH_CACHE=str(tmp / "cache"), COLUMNS="200")
    args = [sys.executable, "-m", "mtbench.cli", "run", "--model", f"hf:{model}", "--dataset", "synthetic",
            "--dataset-option", "scale=tiny", "--dataset-option", "snr=2.0",
            "--dataset-option", f"truth_model=hf:{model}", "--dataset-option", f"truth={json.dumps(PLANTED)}",
            "--out", str(tmp / "results"), *extra]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mtbench_plugins.models.hf.tiny import save_tiny_llama

    root = tmp_path_factory.mktemp("mode2")
    return root, save_tiny_llama(root / "tiny-llama", seed=0, n_layers=2)


def test_cli_mode2_end_to_end(tiny):
    root, model = tiny
    out = _cli(root, model, "--mode", "2", "--layers", "1", "--inputs", "per_head_q_rope,attn_output,ffn_activated_state",
               "--pivot", "input_hidden_state")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Mode 2 (pivot" in out.stdout and "yes" in out.stdout.split("planted state on top")[1]
    run_dir = next((root / "results" / "runs").iterdir())
    assert not (run_dir / "summary.parquet").exists()  # Mode 1 files are Mode 1's only
    rows = {r["parcel"]: r for r in pq.read_table(run_dir / "mode2.parquet").to_pylist()}
    hg = rows[PLANTED[0]["parcel"]]
    assert hg["layer"] == 1 and hg["n_features"] == 64 + 64 + 128 and hg["n_kept"] == 64
    assert hg["top_state"] == "per_head_q_rope" and hg["stage2_test"] > 0.25
    assert hg["selection"] == "pivot" and hg["mode"] == 2
    null = [r for r in rows.values() if r["parcel_id"] > 0 and r["parcel"] != hg["parcel"]]
    assert null and all(abs(r["stage2_test"]) < 0.05 for r in null)
    states = pq.read_table(run_dir / "mode2_states.parquet").to_pylist()
    for parcel in rows:
        shares = [s["kept_share"] for s in states if s["parcel"] == parcel]
        assert len(shares) == 3 and abs(sum(shares) - 1) < 1e-6
    # one layer: nothing to choose, the nested score of each parcel is that layer's fold-averaged score
    nested = {r["parcel"]: r for r in pq.read_table(run_dir / "mode2_nested.parquet").to_pylist()}
    assert list(nested) == list(rows)
    for parcel, row in rows.items():
        assert nested[parcel]["test"] == pytest.approx(row["stage2_test"], abs=1e-6), parcel
        assert (nested[parcel]["layer"], nested[parcel]["folds_agree"]) == (1, 1.0)
    brain = nested["whole brain"]
    assert f"whole brain r {brain['test']:.3f}, layer 1 chosen in 100% of the outer folds" in out.stdout
    folds = pq.read_table(run_dir / "mode2_folds.parquet").to_pandas()
    assert folds["fold"].nunique() >= 2 and len(folds) == len(rows) * folds["fold"].nunique()
    voxels = pq.read_table(run_dir / "mode2_voxels.parquet")
    assert voxels.num_rows == 2 * rows["whole brain"]["n_voxels"]  # whole-brain rows + own-parcel rows
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["settings"]["mode"] == 2 and manifest["settings"]["inputs"][0] == "per_head_q_rope"
    assert (run_dir / "maps" / "mode2_stage2_test_r.nii.gz").exists()
    from mtbench.schema import validate_run

    assert validate_run(run_dir).mode == "2"  # the result schema of Mode 2 (the leaderboard reads it)


@pytest.mark.parametrize("extra, message", [
    (("--mode", "2"), "--mode 2 needs --inputs"),
    (("--mode", "2", "--inputs", "per_head_q_rop"), "per_head_q_rope"),
    (("--mode", "2", "--inputs", "attn_output", "--states", "attn_output"), "--states is for mode 1"),
    (("--inputs", "attn_output"), "--inputs is for --mode 2"),
])
def test_cli_mode2_errors(tiny, extra, message):
    root, model = tiny
    out = _cli(root, model, *extra)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_cli_banded_end_to_end(tiny):
    root, model = tiny
    out = _cli(root, model, "--mode", "2", "--layers", "1", "--selection", "banded",
               "--inputs", "per_head_q_rope,ffn_activated_state", "--out", str(root / "banded"))
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next((root / "banded" / "runs").iterdir())
    rows = {r["parcel"]: r for r in pq.read_table(run_dir / "mode2.parquet").to_pylist()}
    assert rows[PLANTED[0]["parcel"]]["top_state"] == "per_head_q_rope"
    # the leaderboard and the report read banded runs too: the top state's share of the contributions
    from mtbench_plugins.commands.board import leaderboard, report

    cell = {r["parcel"]: r for r in leaderboard.build([root / "banded"]).rows}[PLANTED[0]["parcel"]]
    states = [s for s in pq.read_table(run_dir / "mode2_states.parquet").to_pylist()
              if s["parcel"] == PLANTED[0]["parcel"]]
    top = next(s["contribution"] for s in states if s["state"] == "per_head_q_rope")
    assert cell["top_state"] == "per_head_q_rope" and cell["selection"] == "banded"
    assert cell["top_state_share"] == pytest.approx(top / sum(s["contribution"] for s in states))
    assert cell["top_state_share"] > 0.5
    titles = {name: fig._suptitle.get_text() for name, _, fig in report.figures(run_dir)}
    assert titles["mode2_kept_states.png"] == "Mode 2: contribution per input state"
