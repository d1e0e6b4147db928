"""What a partition run writes and reads back: per (fit, test run, voxel) scores, parcel tables, maps.

A *fit* is one (layer, state) partitioned against its reference (``reference_layer``,
``reference``). ``partition_folds.parquet`` holds every score of every test run (what
``combine`` reads); ``partition.parquet`` the parcel means with a confidence interval over
test runs; ``partition_voxels.parquet`` the voxel means over test runs; the maps one volume
per fit (``maps/index.json`` names them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq

from mtbench.results import identity_of, nested_best, parcel_groups, volume_image, write_parquet
from mtbench.schema import IDENTITY
from mtbench.significance import run_confidence_interval

from .fit import MODELS

#: Per-run scores of a fit: the three models' signed squared r and held-out R^2.
SCORES = tuple(f"{kind}_{model}" for kind in ("ev", "r2") for model in MODELS)
PARTS = ("unique_state", "unique_reference", "shared")
#: What the manifest says about the estimates (``partition`` key).
ESTIMATE = {"estimate": "signed squared held-out r (r|r|) per test run, mean over test runs",
            "joint": "banded ridge, one penalty per state: penalty ratios (0.03, 0.2, 0.5, 0.8, 0.97) x alphas, chosen per "
                     "voxel on the inner folds",
            "biased_for_comparison": "r2_* columns: held-out R^2 = 1 - SSE/SST"}
MAPS = {part: f"partition_{part}.nii.gz" for part in PARTS}


@dataclass
class PartitionTable:
    """Scores of every fit.

    Attributes
    ----------
    keys : list of (layer, state, reference_layer, reference)
    scores : dict of str to ndarray, each shape (n_fits, n_runs, n_voxels)
        :data:`SCORES`: ``ev_*`` the signed squared held-out r, ``r2_*`` the held-out R^2, of
        the ``reference`` alone, the ``state`` alone and the ``joint`` (banded) model.
    """

    keys: list[tuple]
    scores: dict[str, np.ndarray]

    def parts(self, kind: str = "ev") -> dict[str, np.ndarray]:
        """:data:`PARTS` per fit, run and voxel, from the ``kind`` scores."""
        j, s, r = (self.scores[f"{kind}_{m}"] for m in ("joint", "state", "reference"))
        return {"unique_state": j - r, "unique_reference": j - s, "shared": s + r - j}


@dataclass
class PartitionResult:
    """A partition run to write (:class:`mtbench.api.AnalysisResult`)."""

    table: PartitionTable
    labels: np.ndarray
    names: dict
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = summarize(self.table, self.labels, self.names)

    def truth_check(self, truth: dict | None) -> list[dict]:
        """Each planted (parcel, layer, state) against the fit with the largest unique part there."""
        by_parcel = {row["parcel"]: row for row in self.summary}
        checks = []
        for plant in (truth or {}).get("planted", []):
            row = by_parcel.get(plant["parcel"])
            if row is not None:
                checks.append({"parcel": plant["parcel"], "planted": f"L{plant['layer']} {plant['state']}",
                               "found": f"L{row['layer']} {row['state']}", "test": row["unique_state"],
                               "recovered": (row["layer"], row["state"]) == (plant["layer"], plant["state"])})
        return checks

    def write_files(self, folder: Path, meta: dict, mask_img, truth: dict | None) -> None:
        write_files(folder, meta, self.table, mask_img, self.labels, self.names, truth)


def fit_columns(keys: list[tuple], repeat: int) -> dict[str, list]:
    """The columns naming each fit, each row repeated ``repeat`` times."""
    return {"layer": [k[0] for k in keys for _ in range(repeat)], "state": [k[1] for k in keys for _ in range(repeat)],
            "reference_layer": [k[2] for k in keys for _ in range(repeat)],
            "reference": [k[3] for k in keys for _ in range(repeat)]}


def parcel_rows(table: PartitionTable, labels, names) -> list[dict]:
    """One row per (fit, parcel): means over voxels and test runs, and a t interval of unique(S) over runs."""
    ev, r2 = table.parts("ev"), table.parts("r2")
    rows = []
    for f, (layer, state, ref_layer, ref) in enumerate(table.keys):
        for pid, name, idx in parcel_groups(labels, names):
            row = {"layer": layer, "state": state, "reference_layer": ref_layer, "reference": ref,
                   "parcel_id": pid, "parcel": name, "n_voxels": int(idx.size)}
            row |= {f"ev_{m}": float(table.scores[f"ev_{m}"][f][:, idx].mean()) for m in MODELS}
            row |= {part: float(ev[part][f][:, idx].mean()) for part in PARTS}
            low, high = run_confidence_interval(ev["unique_state"][f][:, idx].mean(1))
            row |= {"unique_state_ci_low": float(low), "unique_state_ci_high": float(high)}
            row |= {f"r2_{part}": float(r2[part][f][:, idx].mean()) for part in PARTS}
            rows.append(row)
    return rows


def summarize(table: PartitionTable, labels, names) -> list[dict]:
    """Per parcel (the whole brain first) the fit whose state adds most beyond its reference.

    The fit is chosen inside each outer fold on the other test runs' unique(S) and scored on
    the held-out one (``unique_state``, as :func:`mtbench.results.nested_best`), so choosing the
    largest of many parts does not inflate it; ``folds_agree``: the share of folds choosing the
    fit named (the one with the largest unique(S) over all runs).
    """
    unique = table.parts("ev")["unique_state"]  # (n_fits, n_runs, n_voxels)
    n_runs = unique.shape[1]
    out = []
    for pid, name, idx in parcel_groups(labels, names):
        per_run = unique[:, :, idx].mean(2)  # (n_fits, n_runs)
        others = (per_run.sum(1, keepdims=True) - per_run) / max(n_runs - 1, 1)
        best = int(np.argmax(per_run.mean(1)))
        layer, state, ref_layer, ref = table.keys[best]
        mean = {m: float(table.scores[f"ev_{m}"][best][:, idx].mean()) for m in MODELS}
        out.append({"parcel_id": pid, "parcel": name, "n_voxels": int(idx.size), "layer": layer, "state": state,
                    "reference_layer": ref_layer, "reference": ref,
                    "unique_state": float(nested_best(others, per_run)),
                    "unique_state_all": float(per_run[best].mean()),
                    "unique_reference": mean["joint"] - mean["state"],
                    "shared": mean["state"] + mean["reference"] - mean["joint"],
                    "ev_state": mean["state"], "ev_reference": mean["reference"], "ev_joint": mean["joint"],
                    "folds_agree": float(np.mean(np.argmax(others, axis=0) == best))})
    return out


def write_files(folder: Path, meta: dict, table: PartitionTable, mask_img, labels, names, truth) -> None:
    """Every file of a partition run."""
    ident = identity_of(meta)
    n_fits, n_runs, n_vox = table.scores["ev_joint"].shape

    def with_ident(columns: dict, n: int) -> dict:
        return {k: [v] * n for k, v in ident.items()} | columns

    rows = parcel_rows(table, labels, names)
    write_parquet(folder / "partition.parquet", with_ident({k: [r[k] for r in rows] for k in rows[0]}, len(rows)),
                  meta)
    summary = summarize(table, labels, names)
    write_parquet(folder / "partition_summary.parquet",
                  with_ident({k: [r[k] for r in summary] for k in summary[0]}, len(summary)), meta)
    parts = table.parts("ev")
    voxels = fit_columns(table.keys, n_vox) | {
        "voxel": np.tile(np.arange(n_vox, dtype=np.int32), n_fits), "parcel_id": np.tile(labels.astype(np.int16), n_fits)}
    voxels |= {name: values.mean(1).ravel() for name, values in (table.scores | parts).items()}
    write_parquet(folder / "partition_voxels.parquet", voxels, meta)
    folds = fit_columns(table.keys, n_runs * n_vox) | {
        "fold": np.tile(np.repeat(np.arange(n_runs, dtype=np.int16), n_vox), n_fits),
        "voxel": np.tile(np.arange(n_vox, dtype=np.int32), n_fits * n_runs)}
    folds |= {name: values.ravel() for name, values in table.scores.items()}
    write_parquet(folder / "partition_folds.parquet", folds, meta)

    mask = np.asarray(mask_img.dataobj) > 0
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), folder / "maps" / "mask.nii.gz")
    for part, name in MAPS.items():  # one volume per fit
        nib.save(volume_image(parts[part].mean(1).T.astype(np.float32), mask, mask_img.affine), folder / "maps" / name)
    index = {"partition_<part>.nii.gz": {"volumes": [f"L{k[0]} {k[1]} vs L{k[2]} {k[3]}" for k in table.keys]}}
    (folder / "maps" / "index.json").write_text(json.dumps(index, indent=2))
    if truth is not None:
        (folder / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
    (folder / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_table(run_dir: Path) -> PartitionTable:
    """The :class:`PartitionTable` of a written run (from ``partition_folds.parquet``)."""
    data = pq.read_table(Path(run_dir) / "partition_folds.parquet")
    data = data.drop_columns([c for c in IDENTITY if c in data.column_names])
    layer, state = data["layer"].to_numpy(), data["state"].to_pylist()
    ref_layer, ref = data["reference_layer"].to_numpy(), data["reference"].to_pylist()
    n_runs, n_vox = int(data["fold"].to_numpy().max()) + 1, int(data["voxel"].to_numpy().max()) + 1
    step = n_runs * n_vox
    keys = [(int(layer[i]), state[i], int(ref_layer[i]), ref[i]) for i in range(0, len(state), step)]
    scores = {name: data[name].to_numpy().astype(np.float32).reshape(len(keys), n_runs, n_vox) for name in SCORES}
    return PartitionTable(keys, scores)


def read_rows(path: Path) -> list[dict]:
    """A table of a run as rows."""
    return pq.read_table(path).to_pylist()
