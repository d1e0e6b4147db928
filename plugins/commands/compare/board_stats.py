"""Statistics of the leaderboard: are two models' scores different? From what runs store, nothing refitted.

A Mode 1 run's ``folds.parquet`` holds every fit's held-out and validation r per outer fold and
voxel. Per parcel, the board's score is the nested one: in outer fold ``o`` the fit with the best
parcel-mean validation r (computed without run ``o``) is scored on run ``o``, and the score is
the mean over folds. Its per-fold values ``s_o`` are scores on separate scans (one test run each;
the autocorrelation inside a run is inside ``s_o``), so two models on the same data are compared
by the paired t-test of ``s_o(A) - s_o(B)`` across the test runs (``n_runs - 1`` degrees of
freedom), with Nadeau & Bengio's correction of its variance because the folds' models share
training runs (``docs/compare.md``).

Ties: within a board group (dataset, subject, mode, protocol, metric), each model is tested
against the leader, Holm-corrected across the models; those not significantly worse share rank
``1=``. The pairwise table tests every pair on the whole brain and each parcel shown, Holm-corrected
across all pairs and parcels of the group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .stats import corrected_variance, holm_adjust

FOLDS = "folds.parquet"
ALPHA = 0.05


def fold_scores(run_dir: Path, support: dict | None = None) -> dict[int, np.ndarray] | None:
    """Nested per-fold score of every parcel (the whole brain as -1), from ``folds.parquet``.

    Read in record batches (never the whole table: 90 M rows for a full LPP run), summed per
    (fit, fold, parcel) with ``np.bincount``.

    Parameters
    ----------
    run_dir : Path
    support : dict, optional
        Filled with parcel id -> bootstrap support of its winner over the outer folds
        (:func:`mtbench_plugins.analyses.mode1.tables.fold_support`).

    Returns
    -------
    dict of int to ndarray of shape (n_runs,), or None
        None for a run without ``folds.parquet`` (Mode 2, ``--no-folds``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    if not (run_dir / FOLDS).is_file():
        return None
    first = pq.read_table(run_dir / "voxels.parquet", columns=["voxel", "parcel_id"], filters=[("voxel", "=", 0)])
    n_fits = first.num_rows
    if n_fits == 0:
        return None
    labels_table = pq.read_table(run_dir / "voxels.parquet", columns=["voxel", "parcel_id"])
    labels = labels_table["parcel_id"].to_numpy()[: labels_table.num_rows // n_fits].astype(np.int64)
    n_parcel_ids = sorted(int(p) for p in np.unique(labels))
    parcel_index = np.searchsorted(n_parcel_ids, labels)  # voxel -> column
    n_cols = len(n_parcel_ids)
    fits: dict[tuple, int] = {}
    test_sum, val_sum, count = (np.zeros(0) for _ in range(3))
    columns = ["layer", "state", "fold", "voxel", "test", "validation"]
    for batch in pq.ParquetFile(run_dir / FOLDS).iter_batches(columns=columns, batch_size=1 << 20):
        state = batch.column("state")
        if not pa.types.is_dictionary(state.type):
            state = state.dictionary_encode()
        names = state.dictionary.to_pylist()
        layer = batch.column("layer").to_numpy().astype(np.int64)
        code = state.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        pairs, inverse = np.unique(layer * 65536 + code, return_inverse=True)
        local = np.array([fits.setdefault((int(p // 65536), names[int(p % 65536)]), len(fits)) for p in pairs])
        fold = batch.column("fold").to_numpy().astype(np.int64)
        n_runs = max(int(fold.max()) + 1, 1)
        key = (local[inverse] * 64 + fold) * n_cols + parcel_index[batch.column("voxel").to_numpy()]
        size = (len(fits) * 64) * n_cols
        if test_sum.size < size:  # grow to the fits seen so far (64 folds at most per fit)
            test_sum, val_sum, count = (np.concatenate([a, np.zeros(size - a.size)]) for a in (test_sum, val_sum, count))
        test_sum += np.bincount(key, weights=batch.column("test").to_numpy(), minlength=size)[:size]
        val_sum += np.bincount(key, weights=batch.column("validation").to_numpy(), minlength=size)[:size]
        count += np.bincount(key, minlength=size)[:size]
    shape = (len(fits), 64, n_cols)
    test_sum, val_sum, count = (a.reshape(shape) for a in (test_sum, val_sum, count))
    n_runs = int(np.flatnonzero(count.sum((0, 2)) > 0).max()) + 1
    test_sum, val_sum, count = test_sum[:, :n_runs], val_sum[:, :n_runs], count[:, :n_runs]
    # the whole brain as the last column (sums over every parcel)
    test = np.concatenate([test_sum, test_sum.sum(2, keepdims=True)], axis=2) / \
        np.concatenate([count, count.sum(2, keepdims=True)], axis=2)
    val = np.concatenate([val_sum, val_sum.sum(2, keepdims=True)], axis=2) / \
        np.concatenate([count, count.sum(2, keepdims=True)], axis=2)
    parcels = n_parcel_ids
    pick = np.argmax(val, axis=0)[None]  # the nested choice per fold and parcel
    nested = np.take_along_axis(test, pick, axis=0)[0]  # (n_runs, n_parcels + 1)
    out = {int(p): nested[:, i] for i, p in enumerate(parcels)}
    out[-1] = nested[:, -1]
    if support is not None:
        from mtbench_plugins.analyses.mode1.tables import fold_support  # pyarrow

        values = fold_support(val, n_boot=1000)
        support |= {int(p): float(values[i]) for i, p in enumerate(parcels)} | {-1: float(values[-1])}
    return out


def paired_t(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict:
    """Corrected paired t-test across test runs of ``a - b`` (per-fold scores): mean, interval, two-sided p.

    The variance of the mean is Nadeau & Bengio's ``s² (1/R + 1/(R - 1))``
    (:func:`.stats.corrected_variance`): the folds' models share training runs, and a plain paired
    t-test of cross-validated scores rejects too often (``docs/compare.md``).
    """
    from scipy.stats import t as student

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    mean = float(d.mean())
    se = float(np.sqrt(corrected_variance(d[:, None])[0])) if n > 2 else float("nan")
    if n <= 2:  # no variance to test with: no evidence either way
        return {"delta": mean, "ci_low": float("nan"), "ci_high": float("nan"), "p_value": 1.0, "n_runs": n}
    if not se > 0:  # every run differs by the same amount: none (a run against its copy) or certainly that
        return {"delta": mean, "ci_low": mean, "ci_high": mean, "p_value": 1.0 if mean == 0 else 0.0, "n_runs": n}
    half = float(student.ppf(0.5 + level / 2, n - 1) * se)
    p = float(2 * student.sf(abs(mean) / se, n - 1))
    return {"delta": mean, "ci_low": mean - half, "ci_high": mean + half, "p_value": p, "n_runs": n}


def _group_key(row: dict) -> tuple:
    return row["dataset"], row["subject"], row["mode"], row["protocol"], row["metric"]


def annotate(rows: list[dict], run_dirs: dict[str, Path]) -> tuple[list[dict], list[str]]:
    """Add ``leader_p``, ``vs_leader`` (its text) and ``winner_p_best`` (the winner's support) to every row;
    return the pairwise table.

    Parameters
    ----------
    rows : list of dict
        Board rows (ranked): ``run_id``, ``parcel_id``, ``parcel``, ``model``, ``score``,
        ``dataset_version`` and the group keys.
    run_dirs : dict
        Run id -> run folder.

    Returns
    -------
    pairwise : list of dict
        Per group, pair of models and parcel: ``delta`` (A - B), its interval, ``p_value``,
        ``p_holm`` (across the group's pairs and parcels), ``n_runs``.
    notes : list of str
    """
    notes = []
    scores, support = {}, {}
    for run_id, folder in run_dirs.items():
        support[run_id] = {}
        try:
            scores[run_id] = fold_scores(folder, support[run_id])
        except (OSError, ValueError, KeyError) as exc:  # a damaged folds table: no test, said once
            scores[run_id] = None
            notes.append(f"{run_id}: per-fold scores unreadable ({exc}); its cells have no paired test")
    for row in rows:
        row["leader_p"], row["vs_leader"] = None, None
        row["winner_p_best"] = support.get(row["run_id"], {}).get(row["parcel_id"])
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(_group_key(row), []).append(row)
    pairwise = []
    for key, group in groups.items():
        brain = sorted((r for r in group if r["parcel_id"] == -1 and r["score"] is not None),
                       key=lambda r: (-r["score"], r["model"], r["run_id"]))
        usable = [r for r in brain if scores.get(r["run_id"]) is not None]
        if len(usable) < 2 or len({r["dataset_version"] for r in usable}) > 1:
            continue
        leader = usable[0]
        tests = [(r, paired_t(scores[leader["run_id"]][-1], scores[r["run_id"]][-1])) for r in usable[1:]
                 if scores[r["run_id"]][-1].size == scores[leader["run_id"]][-1].size]
        holm = holm_adjust(np.array([t["p_value"] for _, t in tests]))
        leader_p = {leader["run_id"]: 1.0} | {r["run_id"]: float(p) for (r, _), p in zip(tests, holm)}
        for row in group:
            row["leader_p"] = leader_p.get(row["run_id"])
            row["vs_leader"] = leader_text(row["leader_p"], row["run_id"] == leader["run_id"])
        pairwise += _pairs(key, group, usable, scores)
    return pairwise, notes


def _pairs(key: tuple, group: list[dict], usable: list[dict], scores: dict) -> list[dict]:
    """Every pair of models of a group on every parcel shown, Holm across them all."""
    parcels = sorted({(r["parcel_id"], r["parcel"]) for r in group})
    out = []
    for i, a in enumerate(usable):
        for b in usable[i + 1:]:
            for pid, name in parcels:
                sa, sb = scores[a["run_id"]].get(pid), scores[b["run_id"]].get(pid)
                if sa is None or sb is None or sa.size != sb.size:
                    continue
                out.append({"dataset": key[0], "subject": key[1], "mode": key[2], "protocol": key[3],
                            "metric": key[4], "parcel_id": pid, "parcel": name, "model_a": a["model"],
                            "model_b": b["model"], "run_a": a["run_id"], "run_b": b["run_id"], **paired_t(sa, sb)})
    holm = holm_adjust(np.array([r["p_value"] for r in out]))
    for row, p in zip(out, holm):
        row["p_holm"] = float(p)
    return out


def leader_text(leader_p, is_leader: bool) -> str | None:
    """``leader``, ``1= (p 0.41)`` (not significantly below the leader, Holm), ``below (p 0.003)``; None untested."""
    if leader_p is None:
        return None
    if is_leader:
        return "leader"
    return f"1= (p {leader_p:.2g})" if tied_with_leader(leader_p) else f"below (p {leader_p:.2g})"


def tied_with_leader(leader_p) -> bool:
    """A model whose paired test against the leader is not significant (Holm) shares rank 1."""
    return leader_p is not None and leader_p >= ALPHA
