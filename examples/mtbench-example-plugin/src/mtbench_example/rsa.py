"""An analysis mtbench does not have: representational similarity per parcel (``--mode rsa``).

For every (layer, state), every parcel and every run, it compares the geometry of the state's
TR-level features X (n_scans, d) with that of the parcel's BOLD Y (n_scans, n_voxels), with
nothing fitted:

- ``cka``: linear centered kernel alignment (Kornblith et al. 2019) of the two scan-by-scan Gram
  matrices, *debiased* (the unbiased HSIC estimator of Song et al. 2012: the plain estimate grows
  with d and n_voxels against n_scans), *minus its mean under circular shifts* of the features
  (:data:`SHIFTS` shifts of at least :data:`MIN_LAG` scans). Scans close in time are alike in
  both signals (the HRF, slow drifts, autocorrelated noise), so unrelated data still align;
  a shift keeps that structure and breaks the stimulus-locked part, which is what remains;
- ``rsa``: the same for the Spearman correlation between the two representational
  dissimilarity matrices (1 - Pearson r between every pair of scans).

The best (layer, state) of a parcel is chosen as mtbench chooses everywhere: inside each
outer fold, on the other runs' mean CKA, and scored on the held-out run (``nested_cka``), so the
score of the winner is not inflated by its choice. Written next to the manifest: ``rsa.parquet``
(one row per layer, state, parcel and run) and ``rsa_summary.parquet`` (one row per parcel).

It uses only mtbench's public API: the run's inputs (:class:`mtbench.runner.RunInputs`), the
parcels (:func:`mtbench.results.parcel_groups`), the nested choice
(:func:`mtbench.results.nested_best`) and the Parquet writer (:func:`mtbench.results.write_parquet`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
from rich.table import Table
from scipy.stats import rankdata

from mtbench.display import print_truth_check
from mtbench.errors import MtbenchError
from mtbench.results import nested_best, parcel_groups, write_parquet
from mtbench.runner import parse_states
from mtbench.schema import IDENTITY

#: Circular shifts of the features (at least MIN_LAG scans) whose mean similarity is subtracted.
SHIFTS = 16
MIN_LAG = 10


def _unbiased_hsic(k: np.ndarray, m: np.ndarray) -> float:
    """Unbiased HSIC estimate of two Gram matrices (n, n), n > 3 (Song et al. 2012)."""
    n = k.shape[0]
    k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    ones_k, ones_m = k.sum(0), m.sum(0)
    value = (k * m).sum() + ones_k.sum() * ones_m.sum() / ((n - 1) * (n - 2)) - 2 * ones_k @ ones_m / (n - 2)
    return float(value / (n * (n - 3)))


def _cka_of_grams(k: np.ndarray, m: np.ndarray) -> float:
    scale = _unbiased_hsic(k, k) * _unbiased_hsic(m, m)
    return _unbiased_hsic(k, m) / np.sqrt(scale) if scale > 0 else 0.0


def _spearman_of(a: np.ndarray, b: np.ndarray) -> float:
    a, b = rankdata(a), rankdata(b)
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / scale) if scale > 0 else 0.0


def _shifts(n: int) -> list[int]:
    """Evenly spaced circular shifts of at least MIN_LAG scans (none for a run too short to have them)."""
    if n <= 2 * MIN_LAG:
        return []
    return sorted({int(s) for s in np.linspace(MIN_LAG, n - MIN_LAG, SHIFTS)})


def _roll(matrix: np.ndarray, shift: int) -> np.ndarray:
    """A scan-by-scan matrix of features shifted circularly by ``shift`` scans."""
    return np.roll(np.roll(matrix, shift, axis=0), shift, axis=1)


def linear_cka(x: np.ndarray, y: np.ndarray, null: bool = True) -> float:
    """Debiased linear CKA of the scans of ``x`` (n, d) and ``y`` (n, v), minus its circular-shift mean (``null``)."""
    x, y = x - x.mean(0), y - y.mean(0)
    k, m = x @ x.T, y @ y.T
    shifted = [_cka_of_grams(_roll(k, s), m) for s in _shifts(len(k))] if null else []
    return _cka_of_grams(k, m) - (float(np.mean(shifted)) if shifted else 0.0)


def rdm_similarity(x: np.ndarray, y: np.ndarray, null: bool = True) -> float:
    """Spearman r of the scans' dissimilarity matrices of ``x`` and ``y``, minus its circular-shift mean (``null``)."""
    rx, ry = (1 - np.nan_to_num(np.corrcoef(m)) for m in (x, y))
    upper = np.triu_indices(len(rx), k=1)
    shifted = [_spearman_of(_roll(rx, s)[upper], ry[upper]) for s in _shifts(len(rx))] if null else []
    return _spearman_of(rx[upper], ry[upper]) - (float(np.mean(shifted)) if shifted else 0.0)


@dataclass
class RsaResult:
    """An ``rsa`` run: per (layer, state, parcel, fold) its CKA and RSA, and the best per parcel."""

    rows: list[dict]
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = summarize(self.rows)

    def truth_check(self, truth: dict | None) -> list[dict]:
        by_parcel = {row["parcel"]: row for row in self.summary}
        return [{"parcel": p["parcel"], "planted": f"L{p['layer']} {p['state']}",
                 "found": f"L{by_parcel[p['parcel']]['layer']} {by_parcel[p['parcel']]['state']}",
                 "test": by_parcel[p["parcel"]]["nested_cka"],
                 "recovered": (by_parcel[p["parcel"]]["layer"], by_parcel[p["parcel"]]["state"]) == (p["layer"],
                                                                                                     p["state"])}
                for p in (truth or {}).get("planted", []) if p["parcel"] in by_parcel]

    def write_files(self, folder: Path, meta: dict, mask_img, truth: dict | None) -> None:
        ident = {key: value for key, value in (("run_id", meta["run_id"]), ("model", meta["model"]["name"]),
                                               ("dataset", meta["dataset"]["name"]),
                                               ("subject", meta["settings"]["subject"]),
                                               ("metric", meta["settings"]["metric"]))}
        for name, rows in (("rsa.parquet", self.rows), ("rsa_summary.parquet", self.summary)):
            write_parquet(folder / name, {k: [v] * len(rows) for k, v in ident.items()}
                          | {k: [r[k] for r in rows] for k in rows[0]}, meta)
        mask = (np.asarray(mask_img.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, mask_img.affine), folder / "maps" / "mask.nii.gz")
        if truth is not None:
            (folder / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
        (folder / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def summarize(rows: list[dict]) -> list[dict]:
    """Per parcel, the (layer, state) of the best mean CKA, and the nested CKA of choosing it inside each fold."""
    by_parcel: dict[int, dict[tuple, dict[int, dict]]] = {}
    for row in rows:
        by_parcel.setdefault(row["parcel_id"], {}).setdefault((row["layer"], row["state"]), {})[row["fold"]] = row
    out = []
    for pid in sorted(by_parcel):
        fits = list(by_parcel[pid])
        folds = sorted(by_parcel[pid][fits[0]])
        cka = np.array([[by_parcel[pid][key][f]["cka"] for f in folds] for key in fits])  # (n_fits, n_folds)
        rsa = np.array([[by_parcel[pid][key][f]["rsa"] for f in folds] for key in fits])
        others = (cka.sum(1, keepdims=True) - cka) / max(len(folds) - 1, 1)  # choice without the held-out fold
        best = int(np.argmax(cka.mean(1)))
        first = by_parcel[pid][fits[best]][folds[0]]
        out.append({"parcel_id": pid, "parcel": first["parcel"], "n_voxels": first["n_voxels"],
                    "layer": fits[best][0], "state": fits[best][1], "cka": float(cka[best].mean()),
                    "nested_cka": float(nested_best(others, cka)), "rsa": float(rsa[best].mean()),
                    "folds_agree": float(np.mean(np.argmax(others, axis=0) == best))})
    return out


class Rsa:
    """Representational similarity per parcel (``--mode rsa``): see the module docstring."""

    tag = "rsa"
    takes_states = True
    folds_optional = False
    rescore = None
    board_legend = "rsa rows: nested linear CKA of the (layer, state) chosen on the other runs' CKA."
    board_columns: dict = {}

    def check(self, settings) -> None:
        """Nothing to refuse: any states, layers and alignment can be compared."""

    def states(self, settings, available=None) -> list[str]:
        return list(settings.states) if available is None else parse_states(settings.states, list(available))

    def fit(self, inputs, settings, metric, *, progress=None, checkpoint=None, folds=True) -> RsaResult:
        groups = parcel_groups(inputs.dataset.parcels.labels, inputs.dataset.parcels.names)
        rows = []
        for layer in inputs.layers:
            for state in inputs.states:
                x_runs = inputs.scans.pop((layer, state))
                for pid, name, idx in groups:
                    for fold, (x, y) in enumerate(zip(x_runs, inputs.y_runs)):
                        rows.append({"layer": layer, "state": state, "parcel_id": pid, "parcel": name,
                                     "n_voxels": int(idx.size), "fold": fold, "cka": linear_cka(x, y[:, idx]),
                                     "rsa": rdm_similarity(x, y[:, idx])})
        return RsaResult(rows)

    def print_summary(self, output, console) -> None:
        table = Table(title="Representational similarity: best layer x state per parcel (CKA)")
        for column in ("parcel", "layer", "state", "CKA", "nested CKA", "RSA"):
            table.add_column(column)
        for row in output.summary:
            table.add_row(row["parcel"], str(row["layer"]), row["state"], f"{row['cka']:.3f}",
                          f"{row['nested_cka']:.3f}", f"{row['rsa']:.3f}")
        console.print(table)
        print_truth_check(output, "Planted truth: recovered by CKA?", "nested CKA", out=console)

    def combine(self, runs, meta: dict) -> RsaResult:
        rows = [row for run in runs for row in read_rows(run.path / "rsa.parquet")]
        twice = [key for key, n in Counter((r["layer"], r["state"], r["parcel_id"], r["fold"]) for r in rows).items()
                 if n > 1]
        if twice:
            raise MtbenchError(f"layer {twice[0][0]} {twice[0][1]} is in more than one of the rsa runs; combine runs "
                               "of different (layer, state)s")
        meta["settings"]["layers"] = sorted({r["layer"] for r in rows})
        meta["settings"]["states"] = list(dict.fromkeys(r["state"] for r in rows))
        return RsaResult(sorted(rows, key=lambda r: (r["layer"], r["state"], r["parcel_id"], r["fold"])))

    def board_cells(self, run) -> list[dict]:
        return [{"parcel_id": r["parcel_id"], "parcel": r["parcel"], "n_voxels": r["n_voxels"], "layer": r["layer"],
                 "state": r["state"], "test": r["nested_cka"], "test_normalized": None, "ceiling": None,
                 "validation": r["cka"], "folds_agree": r["folds_agree"], "voxel_best_test": None,
                 "top_state": r["state"], "top_state_share": None, "tied_states": "",
                 "note": f"RSA {r['rsa']:.3f}"}
                for r in read_rows(run.path / "rsa_summary.parquet")]

    def figures(self, run):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        brain = [r for r in read_rows(run.path / "rsa.parquet") if r["parcel_id"] == -1]
        layers = sorted({r["layer"] for r in brain})
        states = list(dict.fromkeys(r["state"] for r in brain))
        n_folds = 1 + max(r["fold"] for r in brain)
        grid = np.zeros((len(layers), len(states)))
        for r in brain:
            grid[layers.index(r["layer"]), states.index(r["state"])] += r["cka"] / n_folds
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_axes([0.3, 0.3, 0.55, 0.6])
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(states)), states, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        fig.colorbar(image, ax=ax, label="linear CKA (mean over runs)")
        fig.suptitle("Whole brain: linear CKA per layer x state")
        return [("rsa_cka.png", "Linear CKA of each (layer, state) with the whole brain", fig)]

    def sweep_cells(self, base, states, layers, options: dict):
        return [replace(base, states=[state], layers=[layer], **options) for layer in layers for state in states]

    def cell_label(self, settings) -> str:
        return f"rsa-{settings.states[0]}"

    def cost(self, settings) -> tuple[int, int]:
        return 1, 1


def read_rows(path: Path) -> list[dict]:
    """A table of a run as rows, without the columns that say which run it is."""
    table = pq.read_table(path)
    return table.drop_columns([c for c in IDENTITY if c in table.column_names]).to_pylist()
