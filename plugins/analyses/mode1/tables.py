"""What a Mode 1 run fits and writes: a score per (layer, state) and voxel, and its tables.

Layout of a Mode 1 run folder (``RESULTS/runs/<run_id>/``, next to ``manifest.json``)::

    scores.parquet     one row per (layer, state, parcel, split)
    summary.parquet    best (layer, state) per parcel, chosen on validation
    winners.parquet    share of each parcel's voxels each (layer, state) wins
    voxels.parquet     one row per (layer, state, voxel); p/q-values, normalized r
    folds.parquet      one row per (layer, state, outer fold, voxel): test, validation, alpha
    maps/*.nii.gz      mask, best-state maps, r per state (4-D over layers)
    truth.json         planted truth, for simulated datasets
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtbench.ceiling import normalize_by_ceiling
from mtbench.errors import MtbenchError
from mtbench.results import nested_best, parcel_groups, volume_image, write_parquet
from mtbench.significance import bh_fdr, run_confidence_interval

FOLDS_FILE = "folds.parquet"  # per-fold scores and alphas (optional: older runs and --no-folds runs lack it)


@dataclass
class ScoreTable:
    """Per-voxel scores of every fitted (layer, state).

    Attributes
    ----------
    keys : list of (layer, state), length n_fits
    test, validation, alpha : ndarray, shape (n_fits, n_voxels)
        Means over outer folds.
    test_per_run, validation_per_run : ndarray, shape (n_fits, n_runs, n_voxels)
        Per outer fold: held-out score, and inner validation score computed without that run.
    p_value : ndarray, shape (n_fits, n_voxels), optional
        Circular-shift permutation p-value of the run-averaged test r
        (:mod:`mtbench.significance`); None when significance was not computed.
    null_inflation : ndarray, shape (n_fits,), optional
        Variance inflation of each fit's null from cross-fitting
        (:func:`mtbench.significance.fold_dependence`), applied to its p-values.
    alpha_per_run : ndarray, shape (n_fits, n_runs, n_voxels), optional
        Alpha chosen in each outer fold: with it a finished fit can be rescored with
        another metric by refitting only (``mtbench rescore``), no alpha search.
    """

    keys: list[tuple[int, str]]
    test: np.ndarray
    validation: np.ndarray
    alpha: np.ndarray
    test_per_run: np.ndarray
    validation_per_run: np.ndarray
    p_value: np.ndarray | None = None
    null_inflation: np.ndarray | None = None
    alpha_per_run: np.ndarray | None = None

    def q_value(self) -> np.ndarray | None:
        """Benjamini-Hochberg adjusted p-values across the voxels of each fit, shape (n_fits, n_voxels)."""
        if self.p_value is None:
            return None
        return np.stack([bh_fdr(p) for p in self.p_value]).astype(np.float32)


def best_per_voxel(table: ScoreTable) -> tuple[np.ndarray, np.ndarray]:
    """Winning fit per voxel and the nested held-out score of choosing a winner.

    Returns
    -------
    index : ndarray of int, shape (n_voxels,)
        Row of ``table.keys`` with the highest fold-averaged validation score: the answer to
        "which state explains this voxel".
    test : ndarray, shape (n_voxels,)
        :func:`nested_best` score (the choice repeated inside each outer fold).
    """
    index = np.argmax(table.validation, axis=0)
    return index, nested_best(table.validation_per_run, table.test_per_run)


def summarize(table: ScoreTable, labels: np.ndarray, names: dict[int, str], ceiling: np.ndarray | None,
              fdr: float = 0.05) -> list[dict]:
    """Best (layer, state) per parcel, chosen on parcel-mean validation scores.

    Returns
    -------
    list of dict
        One per parcel (the whole brain first) with ``parcel_id, parcel, n_voxels``;
        ``layer, state``: the winner on fold-averaged validation; ``validation`` and
        ``winner_test``: its scores; ``folds_agree``: share of outer folds whose own choice
        is that winner; ``test``: nested held-out score of choosing the best fit for the
        parcel (choice inside each outer fold, unbiased); ``voxel_best_test``: the same with
        a choice per voxel, averaged; ``ceiling`` and ``test_normalized`` (test / ceiling)
        when the dataset knows its noise ceiling; ``test_ci_low``, ``test_ci_high``: 95% t
        interval of ``test`` over the test runs (the independent units,
        :func:`mtbench.significance.run_confidence_interval`); ``share_significant``: share
        of the parcel's voxels where the winner is significant at BH-FDR ``fdr`` (across
        all voxels), NaN without p-values.
    """
    _, voxel_best = best_per_voxel(table)
    q_value = table.q_value()
    rows = []
    for pid, name, idx in parcel_groups(labels, names):
        val = table.validation[:, idx].mean(1)  # (n_fits,)
        val_runs = table.validation_per_run[:, :, idx].mean(2)  # (n_fits, n_runs)
        test_runs = table.test_per_run[:, :, idx].mean(2)
        best = int(np.argmax(val))
        layer, state = table.keys[best]
        row = {
            "parcel_id": pid,
            "parcel": name,
            "n_voxels": int(idx.size),
            "layer": int(layer),
            "state": state,
            "validation": float(val[best]),
            "test": float(nested_best(val_runs, test_runs)),
            "winner_test": float(table.test[best, idx].mean()),
            "folds_agree": float(np.mean(np.argmax(val_runs, axis=0) == best)),
            "voxel_best_test": float(voxel_best[idx].mean()),
            "ceiling": float("nan"),
            "test_normalized": float("nan"),
        }
        pick = np.argmax(val_runs, axis=0)[None]  # the nested choice, per outer fold
        low, high = run_confidence_interval(np.take_along_axis(test_runs, pick, axis=0)[0])
        row["test_ci_low"], row["test_ci_high"] = float(low), float(high)
        row["share_significant"] = float("nan") if q_value is None else float(np.mean(q_value[best, idx] <= fdr))
        if ceiling is not None:
            c = float(np.mean(ceiling[idx]))
            row["ceiling"] = c
            row["test_normalized"] = row["test"] / c if c > 0 else float("nan")
        rows.append(row)
    return rows


def winning_ratios(table: ScoreTable, labels: np.ndarray, names: dict[int, str]) -> list[dict]:
    """Share of each parcel's voxels that each (layer, state) wins (on validation).

    Returns
    -------
    list of dict
        ``parcel_id, parcel, layer, state, n_won, share``, one row per (parcel, winning fit),
        most frequent winner first within a parcel; fits that win no voxel are left out.
    """
    winner, _ = best_per_voxel(table)
    rows = []
    for pid, name, idx in parcel_groups(labels, names):
        counts = np.bincount(winner[idx], minlength=len(table.keys))
        for f in np.argsort(-counts, kind="stable"):
            if counts[f] == 0:
                break
            layer, state = table.keys[f]
            rows.append({"parcel_id": pid, "parcel": name, "layer": int(layer), "state": state,
                         "n_won": int(counts[f]), "share": float(counts[f] / idx.size)})
    return rows


#: fits x voxels per product in :func:`winner_stability` (n_boot x this float32: 200 MB at 200 draws)
STABILITY_CHUNK = 1 << 18


def fold_draws(n_runs: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Bootstrap draws of outer folds: how often each fold is drawn, (n_boot, n_runs) float, rows summing to n_runs."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_runs, size=(n_boot, n_runs))
    return np.stack([np.bincount(d, minlength=n_runs) for d in draws]).astype(np.float64)


def fold_support(validation: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Share of bootstrap draws of the outer folds in which each unit's winner stays the winner.

    Parameters
    ----------
    validation : ndarray, shape (n_fits, n_runs, n_units)
        Validation score per fit, outer fold and unit (a voxel, or a parcel's mean).

    Returns
    -------
    ndarray, shape (n_units,)
        For each unit, the share of draws whose fold-resampled mean validation picks the fit that
        the mean over all folds picks: the bootstrap support of the choice (1: every draw agrees).
    """
    _, n_runs, n_units = validation.shape
    winner = np.argmax(validation.mean(1), axis=0)
    weights = fold_draws(n_runs, n_boot, seed) / n_runs
    support = np.zeros(n_units)
    for w in weights:  # one draw at a time: (n_fits, n_units) in memory
        support += np.argmax(np.tensordot(validation, w, axes=([1], [0])), axis=0) == winner
    return support / n_boot


def winner_stability(table: ScoreTable, labels: np.ndarray, names: dict[int, str], n_boot: int = 200,
                     seed: int = 0, level: float = 0.95) -> list[dict]:
    """How stable each parcel's winners are under a bootstrap of the outer folds (stored per-fold scores).

    Returns
    -------
    list of dict
        Per parcel (the whole brain first): ``parcel_id, parcel``; ``p_best``: share of draws in
        which the parcel's winner (best parcel-mean validation) stays the winner; ``top_layer,
        top_state, top_share``: the fit that wins the most voxels and its share; ``share_low,
        share_high``: the percentile interval at ``level`` of that share over the draws (each
        voxel's winner chosen again on the fold-resampled validation).

    Notes
    -----
    Folds share training runs, so their validation scores are not independent draws: the
    support is a measure of stability, not a calibrated probability (``docs/compare.md``).
    """
    n_fits, n_runs, n_vox = table.validation_per_run.shape
    groups = parcel_groups(labels, names)
    parcel_val = np.stack([table.validation_per_run[:, :, idx].mean(2) for _, _, idx in groups], axis=2)
    p_best = fold_support(parcel_val, n_boot, seed)
    winner = np.argmax(table.validation, axis=0)
    top = [int(np.argmax(np.bincount(winner[idx], minlength=n_fits))) for _, _, idx in groups]
    # draws with the same fold counts pick the same winners: each distinct draw is computed once
    # (4 runs: at most 35 distinct draws of 200)
    weights, which = np.unique((fold_draws(n_runs, n_boot, seed) / n_runs).astype(np.float32), axis=0,
                               return_inverse=True)
    distinct = np.empty((len(weights), n_vox), dtype=np.int32)  # each voxel's winner in each distinct draw
    step = max(1, STABILITY_CHUNK // max(n_fits, 1))
    for start in range(0, n_vox, step):  # one product per chunk of voxels: (n_draws, n_runs) @ (n_runs, fits x voxels)
        part = table.validation_per_run[:, :, start:start + step]
        flat = np.ascontiguousarray(part.transpose(1, 0, 2)).reshape(n_runs, -1).astype(np.float32)
        distinct[:, start:start + step] = np.argmax((weights @ flat).reshape(len(weights), n_fits, -1), axis=1)
    drawn = distinct[which.reshape(-1)]  # (n_boot, n_vox)
    shares = np.stack([np.mean(drawn[:, idx] == top[g], axis=1) for g, (_, _, idx) in enumerate(groups)], axis=1)
    low, high = np.quantile(shares, [(1 - level) / 2, (1 + level) / 2], axis=0)
    rows = []
    for g, (pid, name, idx) in enumerate(groups):
        layer, state = table.keys[top[g]]
        rows.append({"parcel_id": pid, "parcel": name, "p_best": float(p_best[g]), "top_layer": int(layer),
                     "top_state": state, "top_share": float(np.mean(winner[idx] == top[g])),
                     "share_low": float(low[g]), "share_high": float(high[g])})
    return rows


def write_folds(path: Path, table: ScoreTable, meta: dict) -> None:
    """``folds.parquet``: per (layer, state, fold, voxel) the held-out score, the validation
    score and the alpha of that outer fold, one row group per fit (never all in memory).

    ``fold`` is the held-out run (0-based). It is what :func:`read_score_table` rebuilds the
    table from, so a run can be re-summarized on other parcels, or refitted with its own
    alphas for another metric (``mtbench rescore``), without an alpha search.
    """
    n_fits, n_runs, n_vox = table.test_per_run.shape
    states = sorted({k[1] for k in table.keys}, key=[k[1] for k in table.keys].index)
    state_type = pa.dictionary(pa.int16(), pa.string())
    schema = pa.schema([("layer", pa.int16()), ("state", state_type), ("fold", pa.int16()), ("voxel", pa.int32()),
                        ("test", pa.float32()), ("validation", pa.float32()), ("alpha", pa.float32())],
                       metadata={b"mtbench": json.dumps(meta, sort_keys=True).encode()})
    fold = np.repeat(np.arange(n_runs, dtype=np.int16), n_vox)
    voxel = np.tile(np.arange(n_vox, dtype=np.int32), n_runs)
    state_names = pa.array(states, pa.string())
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for f, (layer, state) in enumerate(table.keys):
            code = pa.array(np.full(n_runs * n_vox, states.index(state), dtype=np.int16))
            writer.write_table(pa.table({
                "layer": np.full(n_runs * n_vox, layer, dtype=np.int16),
                "state": pa.DictionaryArray.from_arrays(code, state_names),
                "fold": fold, "voxel": voxel,
                "test": table.test_per_run[f].ravel(), "validation": table.validation_per_run[f].ravel(),
                "alpha": table.alpha_per_run[f].astype(np.float32).ravel(),
            }, schema=schema))


def read_score_table(run_dir: Path) -> ScoreTable:
    """The :class:`ScoreTable` of a finished Mode 1 run, from its ``voxels.parquet`` and ``folds.parquet``.

    Raises
    ------
    MtbenchError
        The run has no ``folds.parquet`` (written before mtbench kept per-fold scores, or
        a Mode 2 run), or its files disagree.
    """
    import pyarrow.compute as pc

    run_dir = Path(run_dir)
    folds_path = run_dir / FOLDS_FILE
    if not folds_path.is_file():
        raise MtbenchError(f"{run_dir}: no {FOLDS_FILE} (a Mode 2 run, a run made with --no-folds, or one written by "
                           "an mtbench that did not keep per-fold scores); re-run it with `mtbench run` (with folds) "
                           "to rescore or combine it")
    voxels = pq.read_table(run_dir / "voxels.parquet",
                           columns=["layer", "state", "voxel", "test", "validation", "alpha", "p_value"])
    voxel = voxels["voxel"].to_numpy()
    n_fits = int(np.count_nonzero(voxel == 0))
    n_vox = len(voxel) // max(n_fits, 1)
    if n_fits == 0 or n_fits * n_vox != len(voxel) or not np.array_equal(voxel.reshape(n_fits, n_vox)[0],
                                                                          np.arange(n_vox)):
        raise MtbenchError(f"{run_dir / 'voxels.parquet'}: not one row per (fit, voxel) in order; the run is "
                           "corrupt, re-run it with `mtbench run`")
    first = np.arange(n_fits) * n_vox  # the first row of each fit
    keys = list(zip(voxels["layer"].take(first).to_pylist(),
                    voxels["state"].take(first).cast(pa.string()).to_pylist()))

    def per_fit(column: str) -> np.ndarray:
        return np.array(voxels[column].to_numpy(), dtype=np.float32).reshape(n_fits, n_vox)  # writable

    p_value = per_fit("p_value")
    fold = pq.read_table(folds_path, columns=["fold"])["fold"]
    n_runs = int(pc.max(fold).as_py()) + 1
    if len(fold) != n_fits * n_runs * n_vox:
        raise MtbenchError(f"{folds_path}: {len(fold)} rows, expected {n_fits} fits x {n_runs} folds x {n_vox} "
                           "voxels; the run is corrupt (or was cut while writing), re-run it with `mtbench run`")

    def per_fold(column: str) -> np.ndarray:  # one column at a time: 364 MB each for a full LPP run
        values = pq.read_table(folds_path, columns=[column])[column].to_numpy()
        return np.array(values, dtype=np.float32).reshape(n_fits, n_runs, n_vox)  # writable (rescore refills)

    return ScoreTable(keys=keys, test=per_fit("test"), validation=per_fit("validation"), alpha=per_fit("alpha"),
                      test_per_run=per_fold("test"), validation_per_run=per_fold("validation"),
                      p_value=None if np.isnan(p_value).all() else p_value, alpha_per_run=per_fold("alpha"))


def read_parcel_labels(run_dir: Path) -> tuple[np.ndarray, dict[int, str]]:
    """The parcel of every voxel (``voxels.parquet``, first fit) and the parcel names (``summary.parquet``)."""
    first = pq.read_table(Path(run_dir) / "voxels.parquet", columns=["parcel_id"])["parcel_id"].to_numpy()
    summary = pq.read_table(Path(run_dir) / "summary.parquet", columns=["parcel_id", "parcel"]).to_pylist()
    names = {row["parcel_id"]: row["parcel"] for row in summary if row["parcel_id"] != -1}
    n_fits = max(1, pq.read_table(Path(run_dir) / "voxels.parquet", columns=["voxel"],
                                  filters=[("voxel", "=", 0)]).num_rows)
    return first[: first.size // n_fits].astype(np.int64), names


def write_files(partial: Path, meta: dict, table: ScoreTable, mask_img, labels, names, ceiling, truth) -> None:
    """Write every file of a Mode 1 run into ``partial`` (``meta["folds_file"] = False``: no ``folds.parquet``)."""
    run_id = meta["run_id"]
    ident = {
        "run_id": run_id,
        "model": meta["model"]["name"],
        "dataset": meta["dataset"]["name"],
        "subject": meta["settings"]["subject"],
    }
    metric = meta["settings"]["metric"]
    fdr = meta["settings"].get("fdr", 0.05)
    q_value = table.q_value()

    # scores.parquet: parcel means of every fit, test and validation; for test rows the 95% t
    # interval over test runs and the share of voxels significant at BH-FDR `fdr` (NaN otherwise).
    groups = parcel_groups(labels, names)
    extra: dict[str, list] = {"ci_low": [], "ci_high": [], "share_significant": []}
    rows: dict[str, list] = {k: [] for k in ("layer", "state", "parcel_id", "parcel", "n_voxels", "split", "value")}
    for f, (layer, state) in enumerate(table.keys):
        for pid, name, idx in groups:
            for split, values in (("test", table.test), ("validation", table.validation)):
                rows["layer"].append(layer)
                rows["state"].append(state)
                rows["parcel_id"].append(pid)
                rows["parcel"].append(name)
                rows["n_voxels"].append(int(idx.size))
                rows["split"].append(split)
                rows["value"].append(float(values[f, idx].mean()))
                low = high = share = float("nan")
                if split == "test":
                    low, high = map(float, run_confidence_interval(table.test_per_run[f][:, idx].mean(1)))
                    share = float("nan") if q_value is None else float(np.mean(q_value[f, idx] <= fdr))
                extra["ci_low"].append(low)
                extra["ci_high"].append(high)
                extra["share_significant"].append(share)
    n = len(rows["layer"])
    columns = {k: [v] * n for k, v in ident.items()} | {"metric": [metric] * n} | rows | extra
    write_parquet(partial / "scores.parquet", columns, meta)

    summary = summarize(table, labels, names, ceiling, fdr=fdr)
    columns = {k: [v] * len(summary) for k, v in ident.items()} | {"metric": [metric] * len(summary)}
    columns |= {key: [row[key] for row in summary] for key in summary[0]}
    write_parquet(partial / "summary.parquet", columns, meta)

    shares = winning_ratios(table, labels, names)
    columns = {k: [v] * len(shares) for k, v in ident.items()} | {key: [row[key] for row in shares] for key in shares[0]}
    write_parquet(partial / "winners.parquet", columns, meta)

    n_fits, n_vox = table.test.shape
    voxel_cols = {
        "layer": np.repeat([k[0] for k in table.keys], n_vox).astype(np.int16),
        "state": pa.array(np.repeat([k[1] for k in table.keys], n_vox)).dictionary_encode(),
        "voxel": np.tile(np.arange(n_vox, dtype=np.int32), n_fits),
        "parcel_id": np.tile(labels.astype(np.int16), n_fits),
        "test": table.test.astype(np.float32).ravel(),
        "validation": table.validation.astype(np.float32).ravel(),
        "alpha": table.alpha.astype(np.float32).ravel(),
        # NaN where unknown: no ceiling / no significance computed
        "test_normalized": (np.full(n_fits * n_vox, np.nan, np.float32) if ceiling is None
                            else normalize_by_ceiling(table.test, ceiling).ravel()),
        "p_value": (np.full(n_fits * n_vox, np.nan, np.float32) if table.p_value is None
                    else table.p_value.astype(np.float32).ravel()),
        "q_value": np.full(n_fits * n_vox, np.nan, np.float32) if q_value is None else q_value.ravel(),
    }
    write_parquet(partial / "voxels.parquet", voxel_cols, meta)
    if table.alpha_per_run is not None and meta.get("folds_file", True):
        write_folds(partial / FOLDS_FILE, table, meta)

    # NIfTI maps on the dataset's grid.
    mask = np.asarray(mask_img.get_fdata()) > 0
    affine = mask_img.affine
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), partial / "maps" / "mask.nii.gz")
    best, best_test = best_per_voxel(table)
    states = sorted({k[1] for k in table.keys}, key=[k[1] for k in table.keys].index)
    nib.save(volume_image(best_test.astype(np.float32), mask, affine), partial / "maps" / "best_test_r.nii.gz")
    layer_of = np.array([k[0] for k in table.keys], dtype=np.int16)
    state_code = np.array([states.index(k[1]) + 1 for k in table.keys], dtype=np.int16)
    nib.save(volume_image(layer_of[best], mask, affine), partial / "maps" / "best_layer.nii.gz")
    nib.save(volume_image(state_code[best], mask, affine), partial / "maps" / "best_state.nii.gz")
    layers = sorted({k[0] for k in table.keys})
    for state in states:
        stack = np.zeros((n_vox, len(layers)), dtype=np.float32)
        for f, (layer, s) in enumerate(table.keys):
            if s == state:
                stack[:, layers.index(layer)] = table.test[f]
        nib.save(volume_image(stack, mask, affine), partial / "maps" / f"test_r_{state}.nii.gz")
    map_index = {
        "best_state.nii.gz": {str(i + 1): s for i, s in enumerate(states)},
        "test_r_<state>.nii.gz": {"volume_layers": layers},
    }
    (partial / "maps" / "index.json").write_text(json.dumps(map_index, indent=2))

    if truth is not None:
        (partial / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
    (partial / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
