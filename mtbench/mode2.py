"""Mode 2: several states of one block predict the brain together.

``mtbench run --mode 2 --inputs S1,S2,... --pivot input_hidden_state [--selection pivot|banded]``
fits, per requested layer, one model on the input states of that layer concatenated
(layers are never mixed: each layer is its own Mode 2 fit, reported in its own rows).

``selection="pivot"``: MindTransformer's two-stage selection, as its ``mindtransformer.py``
does it (``llm-mode2``), inside every outer leave-one-run-out fold ``o``:

1. stage 1: ridge on all concatenated input features, alpha chosen by the inner
   validation on the training runs (all runs but ``o``), refit on the training runs;
   score on run ``o`` = stage-1 score;
2. rank the features by the mean over the parcel's voxels of ``|beta|`` of that refit;
   keep as many as the pivot state has dimensions (the pivot only sets this number; its
   features take part only when it is also an input);
3. stage 2: ridge on the kept features, fit on the training runs, score on run ``o``.

The selection is made per parcel (and once for the whole brain) and per outer fold,
from training runs only: the test run never influences alpha, ranking or refit.
Features are aligned to scans, trimmed and z-scored per run and per column as in Mode 1
(the reference standardizes each run's regressors the same way); the betas are the raw
coefficients of that standardized design, not standardized further (as the reference).

Choices where the reference leaves room (documented in README "Mode 2"):

- alpha: the reference uses one alpha for all voxels of the parcel, chosen on the first
  remaining run, and reuses it in stage 2. With a shared alpha (``--protocol
  mindtransformer``) mtbench does exactly that: stage 1 is fitted per parcel (the alpha
  is shared by the parcel's voxels) and stage 2 reuses the fold's stage-1 alpha. With
  per-voxel alphas (mtbench's default) stage 1 is fitted once for all voxels (a per-voxel
  alpha does not depend on the parcel) and stage 2 chooses its alphas again by the inner
  validation on the kept features (fewer features want another penalty); the kept
  features were chosen on those same training runs, so stage-2 *validation* scores are
  optimistic, its *test* scores are not.
- with per-voxel alphas, voxels with small alphas have larger betas and weigh more in
  the mean ``|beta|`` (the reference's mean over voxels, unchanged).
- ties in ``|beta|`` go to the feature listed first (stable sort).

``selection="banded"``: himalaya's multiple-kernel ridge (``MultipleKernelRidgeCV``, one
linear kernel per input state, random search over kernel weights and alphas) per outer
fold, validated by the same inner folds; stage 1 is the plain ridge on the
concatenation, stage 2 the banded model. Each state's contribution is himalaya's split
of the test correlation (``correlation_score_split``: the per-state parts sum to r).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import MtbenchError

__all__ = ["GroupFit", "LayerFit", "Mode2Result", "Mode2Tables", "SELECTIONS", "banded_ridge", "check_mode2_settings",
           "fit_mode2", "mode2_states", "nested_choices", "nested_layer_choice", "nested_table", "pivot_selection",
           "read_mode2_tables", "truth_checks"]

SELECTIONS = ("pivot", "banded")
# Kernel-weight candidates of the banded random search (himalaya's default is 100: ~5x the
# time for a small gain on this data size).
BANDED_ITERATIONS = 20


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
    """Everything a Mode 2 run writes (see :meth:`write_files`)."""

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

    def check_truth(self, truth: dict | None) -> list[dict]:
        """Planted (parcel, layer, state) whose state is an input: does it dominate that parcel?"""
        return truth_checks(self.summarize(np.zeros(0), {}, None), self.inputs, truth)

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

    def write_files(self, folder: Path, meta: dict, mask_img, labels, names, ceiling, truth) -> None:
        """Write the run's files (:meth:`Mode2Tables.write_files`); called by :func:`mtbench.results.write_run`."""
        self.tables(labels.size, ceiling).write_files(folder, meta, mask_img, labels, names, ceiling, truth)


@dataclass
class Mode2Tables:
    """The tables and maps of a Mode 2 run, as written.

    Built from the fits (:meth:`Mode2Result.tables`), or read back from finished runs
    (:func:`read_mode2_tables`) and concatenated (:meth:`concat`): runs that fitted different
    layers with the same settings are then the run that fitted them all
    (:func:`mtbench.combine.combine_runs`), the nested layer choice made across all of them.

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

    def check_truth(self, truth: dict | None) -> list[dict]:
        """Planted (parcel, layer, state) whose state is an input: does it dominate that parcel?"""
        return truth_checks(self.summary, self.inputs, truth)

    def write_files(self, folder: Path, meta: dict, mask_img, labels=None, names=None, ceiling=None,
                    truth=None) -> None:
        """Write ``mode2.parquet``, ``mode2_nested.parquet``, ``mode2_folds.parquet``, ``mode2_states.parquet``,
        ``mode2_voxels.parquet``, maps, manifest into ``folder`` (columns in ``docs/mode2.md``).

        ``labels, names, ceiling`` are already in the tables (the signature of
        :func:`mtbench.results.write_run`'s writers).
        """
        import nibabel as nib

        from .results import _volume, _write_parquet

        meta = meta | {"mode2_seconds": self.seconds}
        ident = {"run_id": meta["run_id"], "model": meta["model"]["name"], "dataset": meta["dataset"]["name"],
                 "subject": meta["settings"]["subject"], "metric": meta["settings"]["metric"]}

        def write(name: str, rows: list[dict]) -> None:
            columns = {k: [v] * len(rows) for k, v in ident.items()} | {k: [r[k] for r in rows] for k in rows[0]}
            _write_parquet(folder / name, columns, meta)

        write("mode2.parquet", self.summary)
        write("mode2_nested.parquet", self.nested())
        write("mode2_folds.parquet", self.folds)
        write("mode2_states.parquet", self.states)
        _write_parquet(folder / "mode2_voxels.parquet", self.voxels, meta)

        mask = np.asarray(mask_img.get_fdata()) > 0
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), folder / "maps" / "mask.nii.gz")
        for stage, values in self.maps.items():
            nib.save(_volume(values, mask, mask_img.affine), folder / "maps" / f"mode2_stage{stage}_test_r.nii.gz")
        index = {"mode2_stage<k>_test_r.nii.gz": {"volume_layers": list(self.layers),
                                                   "stage2_selection": "the voxel's own parcel (whole brain "
                                                                       "where it has none)"}}
        (folder / "maps" / "index.json").write_text(json.dumps(index, indent=2))
        if truth is not None:
            (folder / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
        (folder / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_mode2_tables(run) -> Mode2Tables:
    """The tables and maps of a finished Mode 2 run (:class:`mtbench.schema.RunFolder`)."""
    import pyarrow.parquet as pq

    from .schema import _IDENTITY, read_map, read_map_index

    def rows(name: str) -> list[dict]:  # without the identity columns, which the writer adds from the manifest
        table = pq.read_table(run.path / name)
        return table.drop_columns([c for c in _IDENTITY if c in table.column_names]).to_pylist()

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


# --------------------------------------------------------------------------- nested layer choice
#: Per-fold parcel scores of ``mode2_folds.parquet`` (GroupFit attributes of the same names).
FOLD_SCORES = ("stage1_test", "stage2_test", "stage1_validation", "stage2_validation")


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
    from .results import nested_best

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
    from .significance import run_confidence_interval

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


# --------------------------------------------------------------------------- settings
def mode2_states(settings) -> list[str]:
    """States to extract for a Mode 2 run: the inputs, then the pivot when it is not one."""
    return list(dict.fromkeys([*settings.inputs, settings.pivot]))


def check_mode2_settings(settings) -> None:
    """One-line errors for a malformed Mode 2 request (before any heavy work)."""
    from .registry import get_registry

    if settings.mode not in (1, 2):
        raise MtbenchError(f"unknown mode {settings.mode!r}: use --mode 1 (one state at a time) or --mode 2 "
                           "(several states of a block together)")
    if settings.mode == 1:
        # a Mode 2 option in mode 1 is a forgotten --mode 2, not something to ignore
        defaults = {f.name: f.default for f in fields(settings) if f.name in ("pivot", "selection")}
        given = [f"--{name} {getattr(settings, name)}" for name in defaults if getattr(settings, name) != defaults[name]]
        if settings.inputs or given:
            flag = "--inputs" if settings.inputs else given[0]
            raise MtbenchError(f"{flag} is for --mode 2; add --mode 2, or in mode 1 choose states with --states")
        return
    if settings.selection not in SELECTIONS:
        raise MtbenchError(f"unknown Mode 2 selection {settings.selection!r}: choose one of {', '.join(SELECTIONS)}")
    if not settings.inputs:
        raise MtbenchError("--mode 2 needs --inputs STATE[,STATE...] (the states to combine), e.g. "
                           "--inputs per_head_q_rope,attn_output,ffn_activated_state")
    if list(settings.states) != ["all"]:
        raise MtbenchError("--states is for mode 1; in --mode 2 name the combined states with --inputs")
    registry = get_registry()
    for name in [*settings.inputs, settings.pivot]:
        registry.state(name)  # unknown name -> error with the closest ones
    if len(set(settings.inputs)) != len(settings.inputs):
        raise MtbenchError(f"--inputs {','.join(settings.inputs)} names a state twice; list each state once")


# --------------------------------------------------------------------------- fitting
def fit_mode2(
    prepare: Callable[[tuple[int, str]], list[np.ndarray]],
    y_runs: Sequence[np.ndarray],
    layers: Sequence[int],
    settings,
    parcels,
    metric,
    progress=None,
) -> Mode2Result:
    """Mode 2 fits of every requested layer.

    Parameters
    ----------
    prepare : callable
        ``prepare((layer, state)) -> [array (n_scans_r, dim) per run]``: scan-level
        features, trimmed and z-scored per run (the runner's Mode 1 preparation).
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    layers : sequence of int
    settings : RunSettings
        ``inputs``, ``pivot``, ``selection`` and the ridge settings.
    parcels : Parcellation
    metric : MetricEntry
        Its ``score`` gives the test scores.
    progress : rich.progress.Progress, optional
    """
    from .results import parcel_groups

    groups = parcel_groups(parcels.labels, parcels.names)
    options = dict(backend=settings.backend, score=metric.score, shared_alpha=settings.shared_alpha,
                   precision=settings.precision, inner=settings.inner)
    result = Mode2Result(selection=settings.selection, inputs=list(settings.inputs), pivot=settings.pivot)
    task = progress.add_task("mode 2", total=len(layers)) if progress is not None else None
    for layer in layers:
        blocks = [prepare((layer, state)) for state in settings.inputs]
        dims = [b[0].shape[1] for b in blocks]
        n_keep = dims[settings.inputs.index(settings.pivot)] if settings.pivot in settings.inputs \
            else prepare((layer, settings.pivot))[0].shape[1]
        x_runs = [np.concatenate([b[r] for b in blocks], axis=1) for r in range(len(y_runs))]
        del blocks
        seconds: dict = {}
        if settings.selection == "pivot":
            fits = pivot_selection(x_runs, y_runs, dims, n_keep, groups, settings.alphas, seconds=seconds, **options)
        else:
            fits = banded_ridge(x_runs, y_runs, dims, groups, settings.alphas, seed=settings.seed, seconds=seconds,
                                **options)
        result.layers.append(LayerFit(layer=layer, dims=dims, n_kept=min(n_keep, sum(dims)), groups=fits,
                                      seconds=seconds))
        if task is not None:
            progress.update(task, advance=1, description=f"mode 2 ({settings.selection}) L{layer}")
    return result


def _stage1(x_runs, y_runs, groups, alphas, options, on_coef=None):
    """Nested ridge on all features, per group: (test, validation, alpha) each (n_runs, n_group).

    One fit for all voxels with per-voxel alphas (the parcel does not change them); one fit
    per group with a shared alpha (shared by that group's voxels, as the reference does per
    parcel). ``on_coef(group_index, o, abs_coef_mean)`` receives, per outer fold, the mean
    over the group's voxels of ``|beta|`` (n_features,).
    """
    from .encoding import fit_nested_loro

    n_runs, n_features, n_voxels = len(x_runs), x_runs[0].shape[1], y_runs[0].shape[1]
    out = []
    if options["shared_alpha"]:
        for g, (_, _, idx) in enumerate(groups):
            sums = np.zeros((n_runs, n_features))

            def collect(o, c0, c1, coef, sums=sums, n=idx.size):
                sums[o] += np.abs(coef).sum(1) / n

            res = fit_nested_loro(x_runs, [y[:, idx] for y in y_runs], alphas, **options,
                                  on_refit=collect if on_coef else None)
            if on_coef:
                for o in range(n_runs):
                    on_coef(g, o, sums[o])
            out.append((res.test_per_run, res.validation_per_run, res.alpha_per_run))
        return out
    # voxel -> group weights (1 / group size): |coef| @ member = each group's mean |beta|
    member = np.zeros((n_voxels, len(groups)), dtype=np.float32)
    for g, (_, _, idx) in enumerate(groups):
        member[idx, g] = 1.0 / idx.size
    sums = np.zeros((n_runs, n_features, len(groups)))

    def collect(o, c0, c1, coef):
        sums[o] += np.abs(coef) @ member[c0:c1]

    res = fit_nested_loro(x_runs, y_runs, alphas, **options, on_refit=collect if on_coef else None)
    if on_coef:
        for g in range(len(groups)):
            for o in range(n_runs):
                on_coef(g, o, sums[o, :, g])
    return [(res.test_per_run[:, idx], res.validation_per_run[:, idx], res.alpha_per_run[:, idx])
            for _, _, idx in groups]


def pivot_selection(
    x_runs: Sequence[np.ndarray],
    y_runs: Sequence[np.ndarray],
    dims: Sequence[int],
    n_keep: int,
    groups: Sequence[tuple[int, str, np.ndarray]],
    alphas: Sequence[float],
    seconds: dict | None = None,
    **options,
) -> list[GroupFit]:
    """MindTransformer's two-stage pivot selection, nested in leave-one-run-out.

    Parameters
    ----------
    x_runs : list of ndarray, each shape (n_scans_r, n_features)
        Input states concatenated (columns in ``dims`` order), z-scored per run.
    y_runs : list of ndarray, each shape (n_scans_r, n_voxels)
    dims : sequence of int, shape (n_states,)
        Width of each input state; ``sum(dims) == n_features``.
    n_keep : int
        Features kept in stage 2 (the pivot state's dimension; all when larger).
    groups : list of (parcel_id, name, voxel indices)
        Selection groups (:func:`mtbench.results.parcel_groups`).
    alphas : sequence of float
    seconds : dict, optional
        Receives the wall time of ``stage1`` and ``stage2``.
    **options
        Passed to :func:`mtbench.encoding.fit_nested_loro` (``backend``, ``score``,
        ``shared_alpha``, ``precision``, ``inner``).

    Returns
    -------
    list of GroupFit
        One per group, in ``groups`` order.
    """
    from .encoding import fit_nested_loro

    n_runs, n_features = len(x_runs), x_runs[0].shape[1]
    if sum(dims) != n_features:
        raise MtbenchError(f"input state widths {list(dims)} add up to {sum(dims)}, but the features have "
                           f"{n_features} columns")
    band_of = np.repeat(np.arange(len(dims)), dims)
    n_keep = min(int(n_keep), n_features)
    options = {"shared_alpha": False, **options}
    importance = np.zeros((len(groups), n_runs, n_features))

    def on_coef(g, o, mean_abs):
        importance[g, o] = mean_abs

    start = time.perf_counter()
    stage1 = _stage1(x_runs, y_runs, groups, alphas, options, on_coef)
    seconds = {} if seconds is None else seconds
    seconds["stage1"] = round(time.perf_counter() - start, 2)
    fits = []
    for g, (pid, name, idx) in enumerate(groups):
        test1, val1, alpha1 = stage1[g]
        test2, val2 = np.zeros((n_runs, idx.size), np.float32), np.zeros((n_runs, idx.size), np.float32)
        kept = np.zeros((n_runs, len(dims)))
        shares = np.zeros((n_runs, len(dims)))
        for o in range(n_runs):
            # rank on the training runs' refit only (computed without run o); ties: first listed
            keep = np.sort(np.argsort(-importance[g, o], kind="stable")[:n_keep])
            kept[o] = np.bincount(band_of[keep], minlength=len(dims))
            total = importance[g, o].sum()
            shares[o] = np.bincount(band_of, weights=importance[g, o], minlength=len(dims)) / (total if total > 0 else 1)
            # shared alpha: reuse the fold's stage-1 alpha, as the reference does
            fold_alphas = [float(alpha1[o, 0])] if options["shared_alpha"] else alphas
            res = fit_nested_loro([x[:, keep] for x in x_runs], [y[:, idx] for y in y_runs], fold_alphas,
                                  outer_runs=[o], **options)
            test2[o], val2[o] = res.test_per_run[o], res.validation_per_run[o]
        nan = np.full((n_runs, len(dims)), np.nan)
        fits.append(GroupFit(pid, name, idx, test1, val1, test2, val2, kept, shares, nan))
    seconds["stage2"] = round(time.perf_counter() - start - seconds["stage1"], 2)
    return fits


def banded_ridge(
    x_runs: Sequence[np.ndarray],
    y_runs: Sequence[np.ndarray],
    dims: Sequence[int],
    groups: Sequence[tuple[int, str, np.ndarray]],
    alphas: Sequence[float],
    *,
    seed: int = 0,
    n_iter: int = BANDED_ITERATIONS,
    seconds: dict | None = None,
    **options,
) -> list[GroupFit]:
    """Banded ridge (himalaya ``MultipleKernelRidgeCV``, one linear kernel per state), nested LORO.

    Per outer fold ``o``: himalaya's random search over kernel weights (``n_iter``
    Dirichlet draws) and ``alphas``, per voxel (one alpha for all voxels with
    ``shared_alpha``), validated by correlation on the same inner folds as Mode 1
    (``inner``), refit on all runs but ``o``, scored on run ``o``; the per-state split of
    the test r (``himalaya.scoring.correlation_score_split``) gives each state's
    contribution. Stage 1 is the plain nested ridge on the concatenation.

    Parameters
    ----------
    x_runs, y_runs, dims, groups, alphas
        As in :func:`pivot_selection`.
    seed : int
        Random state of the search.
    n_iter : int
        Kernel-weight candidates.
    seconds : dict, optional
        Receives the wall time of ``stage1`` and ``stage2`` (the banded fits).
    **options
        ``backend``, ``score``, ``shared_alpha``, ``precision``, ``inner`` as in
        :func:`mtbench.encoding.fit_nested_loro` (the banded fit itself always runs on
        himalaya's torch backend; ``score`` gives its test scores too).
    """
    import torch
    from himalaya.backend import get_backend, set_backend
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from himalaya.scoring import correlation_score, correlation_score_split

    from .encoding import on_gpu, pearson_r
    from .encoding.folds import inner_splits
    from .encoding.limits import FLOAT64_EIGH_MAX
    from .encoding.nested import check_runs
    from .encoding.scores import score_per_voxel

    xs, ys, alpha_grid = check_runs(x_runs, y_runs, alphas)
    n_runs, n_voxels = len(xs), ys[0].shape[1]
    if sum(dims) != xs[0].shape[1]:
        raise MtbenchError(f"input state widths {list(dims)} add up to {sum(dims)}, but the features have "
                           f"{xs[0].shape[1]} columns")
    options = {"shared_alpha": False, "inner": "loro", "score": None, **options}
    start = time.perf_counter()
    stage1 = _stage1(xs, ys, groups, alphas, options)
    seconds = {} if seconds is None else seconds
    seconds["stage1"] = round(time.perf_counter() - start, 2)
    score = options["score"] or pearson_r
    bounds = np.concatenate([[0], np.cumsum(dims)])
    test = np.zeros((n_runs, n_voxels), np.float32)
    validation = np.zeros((n_runs, n_voxels), np.float32)
    contribution = np.zeros((n_runs, len(dims), n_voxels), np.float32)
    previous = get_backend()
    device = "torch_cuda" if on_gpu(options.get("backend") or "torch") else "torch"
    backend = set_backend(device, on_error="raise")
    threads = torch.get_num_threads()
    # Small kernels on one thread, as fit_nested_loro does for small fits: the search runs
    # hundreds of small eigendecompositions and reductions, which split over threads wait for
    # descheduled ones on a busy machine (measured 0.15 s for an 80 x 80 eigh, 0.5 ms alone).
    if sum(x.shape[0] for x in xs) <= FLOAT64_EIGH_MAX:
        torch.set_num_threads(1)
    try:
        batch = max(1, int(2**27 // (4 * alpha_grid.size * max(x.shape[0] for x in xs))))
        for o in range(n_runs):
            train = [r for r in range(n_runs) if r != o]
            splits = inner_splits([x.shape[0] for x in xs], o, options["inner"])
            x_train = np.concatenate([xs[r] for r in train])
            y_train = np.concatenate([ys[r] for r in train])
            bands = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
            kernels = np.stack([x_train[:, b] @ x_train[:, b].T for b in bands])  # (n_states, n_train, n_train)
            test_kernels = np.stack([xs[o][:, b] @ x_train[:, b].T for b in bands])  # (n_states, n_test, n_train)
            model = MultipleKernelRidgeCV(
                kernels="precomputed", solver="random_search", fit_intercept=False, cv=splits, random_state=seed,
                solver_params=dict(n_iter=n_iter, alphas=alpha_grid, score_func=correlation_score,
                                   local_alpha=not options["shared_alpha"], progress_bar=False,
                                   n_targets_batch=batch, n_targets_batch_refit=batch))
            model.fit(kernels, y_train)
            split = backend.to_numpy(model.predict(test_kernels, split=True))  # (n_states, n_test, n_voxels)
            test[o] = score_per_voxel(score, ys[o], split.sum(0))
            contribution[o] = backend.to_numpy(correlation_score_split(ys[o], split))
            validation[o] = backend.to_numpy(model.cv_scores_).max(0)
            del model, kernels, test_kernels
    finally:
        torch.set_num_threads(threads)
        set_backend(previous)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    seconds["stage2"] = round(time.perf_counter() - start - seconds["stage1"], 2)
    fits = []
    kept = np.tile(np.asarray(dims, dtype=float), (n_runs, 1))
    for g, (pid, name, idx) in enumerate(groups):
        test1, val1, _ = stage1[g]
        fits.append(GroupFit(pid, name, idx, test1, val1, test[:, idx], validation[:, idx], kept,
                             np.full((n_runs, len(dims)), np.nan), contribution[:, :, idx].mean(2)))
    return fits


# --------------------------------------------------------------------------- terminal
def print_summary(output, console, top: int = 15) -> None:
    """Stage 1 vs stage 2 per (layer, parcel), best parcels first, the nested whole-brain score, and the
    planted-truth check."""
    from rich.table import Table

    rows = output.summary
    selection = rows[0]["selection"]
    brains = [r for r in rows if r["parcel_id"] == -1]
    parcels = sorted((r for r in rows if r["parcel_id"] != -1), key=lambda r: -r["stage2_test"])
    what = "kept fraction (kept / dim)" if selection == "pivot" else "contribution"
    table = Table(title=f"Mode 2 ({selection}, pivot {rows[0]['pivot']}): held-out r per layer and parcel — "
                        f"top {top} by stage 2",
                  caption=f"stage 1: ridge on all {rows[0]['n_features']} concatenated features; stage 2: "
                          + ("ridge on the kept features (selected per parcel and outer fold on training runs)"
                             if selection == "pivot" else "banded ridge, one band per input state")
                          + f"; top state: largest {what}")
    for col in ("layer", "parcel", "voxels", "kept", "r stage 1", "r stage 2", "gain", "top state"):
        table.add_column(col, justify="left" if col in ("parcel", "top state") else "right")
    for row in [*brains, *parcels[:top]]:
        table.add_row(str(row["layer"]), row["parcel"], str(row["n_voxels"]), str(row["n_kept"]),
                      f"{row['stage1_test']:.3f}", f"{row['stage2_test']:.3f}", f"{row['gain']:+.3f}",
                      row["top_state"])
    console.print(table)
    nested = Path(output.run_dir) / "mode2_nested.parquet"
    if nested.is_file():  # what the leaderboard shows: the layer chosen inside each outer fold
        import pyarrow.parquet as pq

        brain = pq.read_table(nested).to_pylist()[0]
        console.print(f"Nested layer choice (the leaderboard's score, mode2_nested.parquet): whole brain r "
                      f"{brain['test']:.3f}, layer {brain['layer']} chosen in {brain['folds_agree']:.0%} of the "
                      f"outer folds ({brain['fold_layers']})")
    from .cli import print_truth_check

    print_truth_check(output, "Planted truth (simulated dataset): planted state on top in its parcel?", "r stage 2",
                      out=console)
