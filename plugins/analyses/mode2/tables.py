"""What a Mode 2 run writes, built from its fits or read back from finished runs, and its nested layer choice.

A Mode 2 run folder holds ``mode2.parquet`` (one row per layer and parcel),
``mode2_folds.parquet`` (per outer fold), ``mode2_nested.parquet`` (the layer chosen per fold on
validation: what the leaderboard shows), ``mode2_states.parquet``, ``mode2_voxels.parquet`` and
``maps/mode2_stage{1,2}_test_r.nii.gz``; columns in ``docs/mode2.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq

from mtbench.errors import MtbenchError
from mtbench.results import nested_best, rows_with_identity, volume_image, write_parquet
from mtbench.schema import IDENTITY, read_map, read_map_index
from mtbench.significance import run_confidence_interval

#: Per-fold parcel scores of ``mode2_folds.parquet`` (GroupFit attributes of the same names).
FOLD_SCORES = ("stage1_test", "stage2_test", "stage1_validation", "stage2_validation")



@dataclass
class GroupFit:
    """Mode 2 scores of one voxel group (the whole brain or a parcel) at one layer.

    Attributes
    ----------
    parcel_id : int
        -1 for the whole brain.
    parcel : str
    voxels : ndarray of int, shape (n_group,)
        Mask indices of the group's voxels.
    stage1_test, stage1_validation : ndarray, shape (n_runs, n_group)
        Ridge on all concatenated features: held-out score of each outer fold, and its
        inner validation score (computed without that fold's test run).
    stage2_test, stage2_validation : ndarray, shape (n_runs, n_group)
        Pivot: ridge on the kept features; banded: the multiple-kernel ridge.
    kept : ndarray, shape (n_runs, n_states)
        Features kept from each input state per outer fold (banded: every feature).
    importance : ndarray, shape (n_runs, n_states)
        Pivot: share of the summed mean ``|beta|`` (stage 1) carried by each state; NaN for banded.
    contribution : ndarray, shape (n_runs, n_states)
        Banded: group mean of each state's part of the test r; NaN for pivot.
    """

    parcel_id: int
    parcel: str
    voxels: np.ndarray
    stage1_test: np.ndarray
    stage1_validation: np.ndarray
    stage2_test: np.ndarray
    stage2_validation: np.ndarray
    kept: np.ndarray
    importance: np.ndarray
    contribution: np.ndarray


@dataclass
class LayerFit:
    """Mode 2 fits of one layer: one :class:`GroupFit` per voxel group (whole brain first)."""

    layer: int
    dims: list[int]
    n_kept: int
    groups: list[GroupFit]
    seconds: dict = field(default_factory=dict)


@dataclass
class Mode2Result:
    """The fits of a Mode 2 run, layer by layer (:meth:`tables`: what the run writes)."""

    selection: str
    inputs: list[str]
    pivot: str
    layers: list[LayerFit] = field(default_factory=list)

    # ----------------------------------------------------------------- tables
    def summarize(self, labels: np.ndarray, names: dict[int, str], ceiling: np.ndarray | None) -> list[dict]:
        """One row per (layer, parcel), the whole brain first in each layer.

        ``stage1_test`` / ``stage2_test``: group mean of the fold-averaged held-out score;
        ``gain`` = stage 2 - stage 1; ``top_state``: pivot, the input state whose features
        are kept at the highest rate (kept / dim: a wide state does not win by its size;
        on pure noise every state is kept at about n_kept / n_features); banded, the state
        with the largest contribution.
        """
        rows = []
        for fit in self.layers:
            for g in fit.groups:
                s1, s2 = float(np.mean(g.stage1_test)), float(np.mean(g.stage2_test))
                score = g.kept.mean(0) / fit.dims if self.selection == "pivot" else g.contribution.mean(0)
                row = {
                    "mode": 2, "selection": self.selection, "pivot": self.pivot, "inputs": ",".join(self.inputs),
                    "layer": fit.layer, "parcel_id": g.parcel_id, "parcel": g.parcel, "n_voxels": int(g.voxels.size),
                    "n_features": int(sum(fit.dims)), "n_kept": int(fit.n_kept),
                    "stage1_test": s1, "stage2_test": s2, "gain": s2 - s1,
                    "stage1_validation": float(np.mean(g.stage1_validation)),
                    "stage2_validation": float(np.mean(g.stage2_validation)),
                    "top_state": self.inputs[int(np.argmax(score))],
                    "ceiling": float("nan"), "stage2_test_normalized": float("nan"),
                }
                if ceiling is not None:
                    c = float(np.mean(ceiling[g.voxels]))
                    row["ceiling"] = c
                    row["stage2_test_normalized"] = s2 / c if c > 0 else float("nan")
                rows.append(row)
        return rows

    def state_rows(self) -> list[dict]:
        """One row per (layer, parcel, input state): what each state brings."""
        rows = []
        for fit in self.layers:
            for g in fit.groups:
                kept = g.kept.mean(0)
                for s, state in enumerate(self.inputs):
                    rows.append({
                        "layer": fit.layer, "parcel_id": g.parcel_id, "parcel": g.parcel, "state": state,
                        "dim": int(fit.dims[s]), "kept": float(kept[s]),
                        "kept_share": float(kept[s] / max(fit.n_kept, 1)),
                        "kept_fraction": float(kept[s] / fit.dims[s]),
                        "importance_share": float(np.mean(g.importance[:, s])),
                        "contribution": float(np.mean(g.contribution[:, s])),
                    })
        return rows

    def fold_rows(self) -> list[dict]:
        """One row per (layer, parcel, outer fold): the parcel-mean scores of that fold.

        ``fold`` ``k`` held out run ``k`` (0-based, in the dataset's run order); its
        validation scores were computed on the other runs only. These are the scores
        :func:`nested_choices` chooses from (``mode2_folds.parquet``).
        """
        rows = []
        for fit in self.layers:
            for g in fit.groups:
                means = {name: getattr(g, name).mean(1) for name in FOLD_SCORES}  # (n_runs,) each
                for fold in range(g.stage2_test.shape[0]):
                    rows.append({"layer": fit.layer, "parcel_id": g.parcel_id, "parcel": g.parcel,
                                 "n_voxels": int(g.voxels.size), "fold": fold,
                                 **{name: float(means[name][fold]) for name in FOLD_SCORES}})
        return rows

    def nested_rows(self, ceiling: np.ndarray | None, summary: list[dict] | None = None) -> list[dict]:
        """One row per parcel: the nested layer choice (:func:`nested_table`) with the run's settings.

        ``summary`` (:meth:`summarize` with this ``ceiling``) is computed when not given.
        """
        summary = summary if summary is not None else self.summarize(np.zeros(0), {}, ceiling)
        return nested_table(self.fold_rows(), summary, self.selection, self.pivot, self.inputs)

    # ----------------------------------------------------------------- files
    def tables(self, n_voxels: int, ceiling: np.ndarray | None) -> Mode2Tables:
        """What the run writes (:class:`Mode2Tables`), for a mask of ``n_voxels`` voxels."""
        cols: dict[str, list] = {k: [] for k in ("layer", "parcel_id", "voxel", *FOLD_SCORES)}
        maps = {stage: np.zeros((n_voxels, len(self.layers)), dtype=np.float32) for stage in (1, 2)}
        for k, fit in enumerate(self.layers):
            for g in fit.groups:
                n = g.voxels.size
                cols["layer"].append(np.full(n, fit.layer, dtype=np.int16))
                cols["parcel_id"].append(np.full(n, g.parcel_id, dtype=np.int16))
                cols["voxel"].append(g.voxels.astype(np.int32))
                for name in FOLD_SCORES:  # fold means per voxel
                    cols[name].append(getattr(g, name).mean(0).astype(np.float32))
                # maps: the whole brain's selection first, overwritten by each voxel's own parcel's
                maps[1][g.voxels, k] = g.stage1_test.mean(0)
                maps[2][g.voxels, k] = g.stage2_test.mean(0)
        return Mode2Tables(selection=self.selection, inputs=list(self.inputs), pivot=self.pivot,
                           layers=[fit.layer for fit in self.layers], summary=self.summarize(np.zeros(0), {}, ceiling),
                           folds=self.fold_rows(), states=self.state_rows(),
                           voxels={k: np.concatenate(v) for k, v in cols.items()}, maps=maps,
                           seconds={str(fit.layer): fit.seconds for fit in self.layers})



@dataclass
class Mode2Tables:
    """The tables and maps of a Mode 2 run, as written.

    Built from the fits (:meth:`Mode2Result.tables`), or read back from finished runs
    (:func:`read_mode2_tables`) and concatenated (:meth:`concat`): runs that fitted different
    layers with the same settings are then the run that fitted them all
    (``mtbench combine``, a sweep's combined runs), the nested layer choice made across all of them.

    Attributes
    ----------
    layers : list of int
        Fitted layers, in row order.
    summary, folds, states : list of dict
        Rows of ``mode2.parquet`` (one per layer and parcel, ceilings included),
        ``mode2_folds.parquet`` and ``mode2_states.parquet``, without the identity columns.
    voxels : dict of str to ndarray, each of shape (n_rows,)
        Columns of ``mode2_voxels.parquet`` (``layer, parcel_id, voxel`` and the fold means of
        :data:`FOLD_SCORES`).
    maps : dict of int to ndarray, shape (n_mask_voxels, n_layers)
        Stage (1, 2) -> held-out r per mask voxel and layer (each voxel scored with its own
        parcel's selection, the whole brain's where it has none).
    seconds : dict
        Layer (str) -> seconds per step of its fit (manifest ``mode2_seconds``).
    """

    selection: str
    inputs: list[str]
    pivot: str
    layers: list[int]
    summary: list[dict]
    folds: list[dict]
    states: list[dict]
    voxels: dict[str, np.ndarray]
    maps: dict[int, np.ndarray]
    seconds: dict

    @classmethod
    def concat(cls, parts: Sequence[Mode2Tables]) -> Mode2Tables:
        """Tables of runs that fitted different layers, as one run's: rows and map volumes by layer."""
        first = parts[0]
        layers = sorted(layer for part in parts for layer in part.layers)

        def rows(name: str) -> list[dict]:  # stable: within a layer, the rows keep their order
            return sorted((row for part in parts for row in getattr(part, name)), key=lambda row: row["layer"])

        voxel_layer = np.concatenate([part.voxels["layer"] for part in parts])
        order = np.argsort(voxel_layer, kind="stable")
        column_of = {layer: (part, part.layers.index(layer)) for part in parts for layer in part.layers}
        return cls(selection=first.selection, inputs=list(first.inputs), pivot=first.pivot, layers=layers,
                   summary=rows("summary"), folds=rows("folds"), states=rows("states"),
                   voxels={name: np.concatenate([part.voxels[name] for part in parts])[order] for name in first.voxels},
                   maps={stage: np.stack([column_of[layer][0].maps[stage][:, column_of[layer][1]] for layer in layers],
                                         axis=1) for stage in first.maps},
                   seconds={str(layer): column_of[layer][0].seconds.get(str(layer), {}) for layer in layers})

    def nested(self) -> list[dict]:
        """Rows of ``mode2_nested.parquet`` (:func:`nested_table`)."""
        return nested_table(self.folds, self.summary, self.selection, self.pivot, self.inputs)

    @property
    def manifest(self) -> dict:
        """What a Mode 2 run adds to its manifest: the seconds of each layer's steps."""
        return {"mode2_seconds": self.seconds}

    def truth_check(self, truth: dict | None) -> list[dict]:
        """Planted (parcel, layer, state) whose state is an input: does it dominate that parcel?"""
        return truth_checks(self.summary, self.inputs, truth)

    def write_files(self, folder: Path, meta: dict, mask_img, truth: dict | None) -> None:
        """Write ``mode2.parquet``, ``mode2_nested.parquet``, ``mode2_folds.parquet``, ``mode2_states.parquet``,
        ``mode2_voxels.parquet``, maps, ``truth.json`` and the manifest into ``folder`` (columns in ``docs/mode2.md``)."""
        def write(name: str, rows: list[dict]) -> None:
            write_parquet(folder / name, rows_with_identity(meta, rows), meta)

        write("mode2.parquet", self.summary)
        write("mode2_nested.parquet", self.nested())
        write("mode2_folds.parquet", self.folds)
        write("mode2_states.parquet", self.states)
        write_parquet(folder / "mode2_voxels.parquet", self.voxels, meta)

        mask = np.asarray(mask_img.get_fdata()) > 0
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), folder / "maps" / "mask.nii.gz")
        for stage, values in self.maps.items():
            nib.save(volume_image(values, mask, mask_img.affine), folder / "maps" / f"mode2_stage{stage}_test_r.nii.gz")
        index = {"mode2_stage<k>_test_r.nii.gz": {"volume_layers": list(self.layers),
                                                   "stage2_selection": "the voxel's own parcel (whole brain "
                                                                       "where it has none)"}}
        (folder / "maps" / "index.json").write_text(json.dumps(index, indent=2))
        if truth is not None:
            (folder / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
        (folder / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_mode2_tables(run) -> Mode2Tables:
    """The tables and maps of a finished Mode 2 run (:class:`mtbench.schema.RunFolder`)."""
    def rows(name: str) -> list[dict]:  # without the identity columns, which the writer adds from the manifest
        table = pq.read_table(run.path / name)
        return table.drop_columns([c for c in IDENTITY if c in table.column_names]).to_pylist()

    settings = run.manifest["settings"]
    voxels = pq.read_table(run.path / "mode2_voxels.parquet")
    mask = np.asarray(read_map(run.path, "mask.nii.gz").dataobj) > 0
    maps = {}
    for stage in (1, 2):
        volume = np.asarray(read_map(run.path, f"mode2_stage{stage}_test_r.nii.gz").dataobj)
        maps[stage] = volume[mask] if volume.ndim == 4 else volume[mask][:, None]
    return Mode2Tables(selection=settings["selection"], inputs=list(settings["inputs"]), pivot=settings["pivot"],
                       layers=[int(v) for v in read_map_index(run.path)["mode2_stage<k>_test_r.nii.gz"]["volume_layers"]],
                       summary=rows("mode2.parquet"), folds=rows("mode2_folds.parquet"),
                       states=rows("mode2_states.parquet"),
                       voxels={name: voxels[name].to_numpy() for name in voxels.column_names},
                       maps=maps, seconds=dict(run.manifest.get("mode2_seconds") or {}))


def nested_table(fold_rows: list[dict], summary: list[dict], selection: str, pivot: str,
                 inputs: Sequence[str]) -> list[dict]:
    """Rows of ``mode2_nested.parquet``: per parcel, the nested layer choice (:func:`nested_choices`).

    Adds to :func:`nested_choices`' columns ``mode, selection, pivot, inputs``, and from the
    ``summary`` row (``mode2.parquet``) of the chosen ``layer``: ``top_state``, ``ceiling`` and
    ``test_normalized`` (``test / ceiling``; NaN without a positive ceiling).
    """
    at = {(row["layer"], row["parcel_id"]): row for row in summary}
    rows = []
    for row in nested_choices(fold_rows):
        chosen = at[(row["layer"], row["parcel_id"])]
        ceiling = chosen["ceiling"]
        rows.append({"mode": 2, "selection": selection, "pivot": pivot, "inputs": ",".join(inputs), **row,
                     "top_state": chosen["top_state"], "ceiling": ceiling,
                     "test_normalized": row["test"] / ceiling if ceiling > 0 else float("nan")})
    return rows


def truth_checks(summary: list[dict], inputs: Sequence[str], truth: dict | None) -> list[dict]:
    """Planted (parcel, layer, state) whose state is an input: is it the ``top_state`` of that parcel and layer?"""
    if not truth:
        return []
    by_key = {(row["parcel"], row["layer"]): row for row in summary}
    checks = []
    for plant in truth.get("planted", []):
        row = by_key.get((plant["parcel"], plant["layer"]))
        if row is None or plant["state"] not in inputs:
            continue
        checks.append({"parcel": plant["parcel"], "planted": f"L{plant['layer']} {plant['state']}",
                       "found": f"L{row['layer']} {row['top_state']}", "test": row["stage2_test"],
                       "recovered": row["top_state"] == plant["state"]})
    return checks


def nested_layer_choice(validation: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float, int, float]:
    """The Mode 2 layer chosen inside each outer fold, and the held-out score of that choice.

    In outer fold ``o`` the layer with the highest stage-2 validation score of fold ``o``
    (computed without run ``o``) is chosen and scored on run ``o``; the score is the mean
    over folds (:func:`mtbench.results.nested_best`, as Mode 1). Choosing once on
    fold-averaged validation would let run ``o`` help choose the layer scored on run ``o``.
    NaN validation scores never win; ties, and folds where every layer is NaN, go to the
    first layer.

    The layer reported for the parcel is the one chosen in the most folds; when several
    are chosen equally often, the one with the highest fold-averaged validation (then the
    first). It labels the choice; the score is that of the per-fold choices.

    Parameters
    ----------
    validation, test : ndarray, shape (n_layers, n_folds)
        Stage-2 validation and test scores (e.g. parcel means) of each layer in each fold.

    Returns
    -------
    picks : ndarray of int, shape (n_folds,)
        Index of the layer chosen in each fold.
    score : float
        Mean over folds of the chosen layer's test score.
    modal : int
        The layer index chosen in the most folds (ties: highest fold-averaged validation, then first).
    agree : float
        Share of the folds that chose ``modal``.
    """
    validation, test = np.asarray(validation, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if validation.ndim != 2 or validation.shape != test.shape:
        raise MtbenchError(f"Mode 2 layer choice needs validation and test scores of shape (n_layers, n_folds), got "
                           f"{validation.shape} and {test.shape}; pass one row per layer and one column per fold")
    finite = np.where(np.isfinite(validation), validation, -np.inf)
    picks = np.argmax(finite, axis=0)
    counts = np.bincount(picks, minlength=validation.shape[0])
    tied = np.flatnonzero(counts == counts.max())
    finite_count = np.isfinite(validation).sum(1)
    averaged = np.where(finite_count > 0, np.where(np.isfinite(validation), validation, 0.0).sum(1)
                        / np.maximum(finite_count, 1), -np.inf)  # NaN-free mean over folds, -inf when none
    modal = int(tied[np.argmax(averaged[tied])])
    return picks, float(nested_best(finite, test)), modal, float(counts[modal] / picks.size)


def nested_choices(fold_rows: list[dict]) -> list[dict]:
    """Per parcel, the nested Mode 2 layer choice from per-fold rows (``mode2_folds.parquet``).

    Parameters
    ----------
    fold_rows : list of dict
        ``layer, parcel_id, parcel, n_voxels, fold`` and the :data:`FOLD_SCORES`, one per
        (layer, parcel, fold), every parcel with the same layers and folds.

    Returns
    -------
    list of dict
        One per parcel in parcel-id order (the whole brain, -1, first): ``parcel_id,
        parcel, n_voxels``; ``test``: stage-2 test r of the layer chosen inside each fold
        (:func:`nested_layer_choice`), mean over folds; ``stage1_test`` and ``validation``
        (stage-2): the same folds' scores of the same choices; ``layer``: the layer chosen
        in the most folds (ties: the highest fold-averaged stage-2 validation, then the
        lowest layer); ``folds_agree``: share of folds that chose it; ``fold_layers``:
        the layer chosen in each fold, comma list in fold order; ``test_ci_low``,
        ``test_ci_high``: 95% t interval of ``test`` over folds.
    """
    cells: dict[int, dict] = {}
    for row in fold_rows:
        cell = cells.setdefault(row["parcel_id"], {"row": row, "scores": {}})
        cell["scores"][(row["layer"], row["fold"])] = row
    out = []
    for pid in sorted(cells):
        scores = cells[pid]["scores"]
        layers, folds = sorted({k[0] for k in scores}), sorted({k[1] for k in scores})
        if len(scores) != len(layers) * len(folds):
            raise MtbenchError(f"Mode 2 parcel {cells[pid]['row']['parcel']!r} has {len(scores)} per-fold rows, not "
                               f"{len(layers)} layers x {len(folds)} folds; re-run it with this mtbench")
        grid = {name: np.array([[scores[(layer, fold)][name] for fold in folds] for layer in layers], dtype=float)
                for name in FOLD_SCORES}  # (n_layers, n_folds) each
        picks, test, modal, agree = nested_layer_choice(grid["stage2_validation"], grid["stage2_test"])
        chosen = {name: grid[name][picks, np.arange(len(folds))] for name in FOLD_SCORES}  # (n_folds,) each
        low, high = run_confidence_interval(chosen["stage2_test"])
        first = cells[pid]["row"]
        out.append({"parcel_id": pid, "parcel": first["parcel"], "n_voxels": first["n_voxels"],
                    "layer": int(layers[modal]), "folds_agree": agree,
                    "fold_layers": ",".join(str(layers[p]) for p in picks),
                    "test": test, "stage1_test": float(chosen["stage1_test"].mean()),
                    "validation": float(chosen["stage2_validation"].mean()),
                    "test_ci_low": float(low), "test_ci_high": float(high)})
    return out
