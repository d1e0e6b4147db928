"""Width-matched Mode 1 (``--mode widths``): does a state win by content or by width?

Every (layer, state) is fitted twice with Mode 1's nested leave-one-run-out ridge: as it is
(``unmatched``, Mode 1's numbers) and reduced to a common width (``matched``: ``--width``,
default the narrowest state's; ``--reduction pca`` fitted on the training runs of each outer
fold only, or ``random``: :mod:`.fit`). Per parcel the winner of each is chosen on validation
inside each outer fold, as Mode 1 chooses it; ``by`` says ``content`` when both choose the same
(layer, state) and ``width`` when matching changes the winner.
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

from mtbench.display import print_truth_check
from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry, load_dataset
from mtbench.results import WHOLE_BRAIN, parcel_groups, rows_with_identity, volume_image, write_parquet
from mtbench.runner import parse_states
from mtbench.schema import IDENTITY
from mtbench.settings import RunSettings

from ..figures import paired_bars, score_map
from ..mode1.tables import ScoreTable, summarize
from .fit import PER_RUN, fit_matched

KINDS = ("unmatched", "matched")


def score_table(keys: list, arrays: dict[str, np.ndarray]) -> ScoreTable:
    """Mode 1's :class:`ScoreTable` from per-run arrays ``test_per_run``... (n_fits, n_runs, n_voxels)."""
    test, val, alpha = (arrays[name] for name in PER_RUN)
    return ScoreTable(keys=list(keys), test=test.mean(1), validation=val.mean(1),
                      alpha=np.exp(np.log(alpha).mean(1)).astype(np.float32), test_per_run=test,
                      validation_per_run=val, alpha_per_run=alpha)


@dataclass
class WidthsResult:
    """A widths run: per fit and kind (unmatched, matched) Mode 1's per-run arrays."""

    keys: list[tuple[int, str]]
    arrays: dict[str, dict[str, np.ndarray]]  # kind -> PER_RUN name -> (n_fits, n_runs, n_voxels)
    dims: dict[str, int]
    labels: np.ndarray
    names: dict
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tables = {kind: score_table(self.keys, self.arrays[kind]) for kind in KINDS}
        self.summary = summarize_widths(self.tables, self.labels, self.names)

    def truth_check(self, truth: dict | None) -> list[dict]:
        """Each planted (parcel, layer, state) against the width-matched winner there."""
        by_parcel = {row["parcel"]: row for row in self.summary}
        return [{"parcel": p["parcel"], "planted": f"L{p['layer']} {p['state']}",
                 "found": f"L{row['matched_layer']} {row['matched_state']}", "test": row["matched_test"],
                 "recovered": (row["matched_layer"], row["matched_state"]) == (p["layer"], p["state"])}
                for p in (truth or {}).get("planted", []) if (row := by_parcel.get(p["parcel"]))]

    def write_files(self, folder: Path, meta: dict, mask_img, truth: dict | None) -> None:
        write_parquet(folder / "widths_summary.parquet", rows_with_identity(meta, self.summary), meta)
        write_parquet(folder / "widths.parquet", rows_with_identity(meta, self.parcel_rows()), meta)
        n_fits, n_runs, n_vox = self.arrays["matched"]["test_per_run"].shape
        folds = {"layer": np.repeat([k[0] for k in self.keys], n_runs * n_vox).astype(np.int16),
                 "state": np.repeat([k[1] for k in self.keys], n_runs * n_vox),
                 "fold": np.tile(np.repeat(np.arange(n_runs, dtype=np.int16), n_vox), n_fits),
                 "voxel": np.tile(np.arange(n_vox, dtype=np.int32), n_fits * n_runs)}
        for kind in KINDS:
            for name in PER_RUN:
                folds[f"{name.split('_')[0]}_{kind}"] = self.arrays[kind][name].ravel()
        write_parquet(folder / "widths_folds.parquet", folds, meta)
        mask = np.asarray(mask_img.dataobj) > 0
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), folder / "maps" / "mask.nii.gz")
        for kind in KINDS:  # one volume per fit
            nib.save(volume_image(self.tables[kind].test.T.astype(np.float32), mask, mask_img.affine),
                     folder / "maps" / f"widths_{kind}_test_r.nii.gz")
        (folder / "maps" / "index.json").write_text(json.dumps(
            {"widths_<kind>_test_r.nii.gz": {"volumes": [f"L{k[0]} {k[1]}" for k in self.keys]}}, indent=2))
        if truth is not None:
            (folder / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
        (folder / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    def parcel_rows(self) -> list[dict]:
        """Per (layer, state, parcel): its width and both kinds' mean test and validation scores."""
        rows = []
        for f, (layer, state) in enumerate(self.keys):
            for pid, name, idx in parcel_groups(self.labels, self.names):
                row = {"layer": layer, "state": state, "dim": self.dims[state], "width": self.manifest["widths"]
                       ["width"], "parcel_id": pid, "parcel": name, "n_voxels": int(idx.size)}
                for kind in KINDS:
                    row[f"test_{kind}"] = float(self.tables[kind].test[f, idx].mean())
                    row[f"validation_{kind}"] = float(self.tables[kind].validation[f, idx].mean())
                rows.append(row)
        return rows


def summarize_widths(tables: dict[str, ScoreTable], labels, names) -> list[dict]:
    """Per parcel, Mode 1's winner unmatched and width-matched (chosen on validation, scored nested)."""
    rows = []
    for plain, matched in zip(*(summarize(tables[kind], labels, names, None) for kind in KINDS)):
        same = (plain["layer"], plain["state"]) == (matched["layer"], matched["state"])
        rows.append({key: plain[key] for key in ("parcel_id", "parcel", "n_voxels", "layer", "state", "test",
                                                  "validation", "folds_agree")}
                    | {"matched_layer": matched["layer"], "matched_state": matched["state"],
                       "matched_test": matched["test"], "matched_validation": matched["validation"],
                       "matched_folds_agree": matched["folds_agree"], "by": "content" if same else "width"})
    return rows


class Widths:
    """Mode 1 next to Mode 1 at one common width: see the module docstring."""

    tag = "widths"
    takes_states = True
    folds_optional = False
    rescore = None
    board_legend = ("widths rows: Mode 1's winner with every state reduced to one width (matched, nested r); the "
                    "note names the unmatched winner and whether matching changed it.")
    board_columns: dict = {}

    def check(self, settings: RunSettings) -> None:
        """Nothing beyond the settings' own checks (width >= 0, a known reduction)."""

    def states(self, settings: RunSettings, available=None) -> list[str]:
        return list(settings.states) if available is None else parse_states(settings.states, list(available))

    def fit(self, inputs, settings: RunSettings, metric, *, progress=None, checkpoint=None, folds: bool = True):
        """Every (layer, state) as it is and at the common width; one read of its features serves both."""
        keys = [(layer, state) for layer in inputs.layers for state in inputs.states]
        dims = {state: int(inputs.scans[(inputs.layers[0], state)][0].shape[1]) for state in inputs.states}
        width = settings.width or min(dims.values())
        options = dict(backend=settings.backend, score=metric.score, precision=settings.precision,
                       shared_alpha=settings.shared_alpha, inner=settings.inner)
        n_runs, n_vox = len(inputs.y_runs), inputs.y_runs[0].shape[1]
        arrays = {kind: {name: np.zeros((len(keys), n_runs, n_vox), np.float32) for name in PER_RUN} for kind in KINDS}
        task = progress.add_task("fit ridge, unmatched and matched", total=len(keys)) if progress is not None else None
        for f, key in enumerate(keys):
            x_runs = inputs.scans.pop(key)
            plain = fit_nested_loro(x_runs, inputs.y_runs, settings.alphas, **options)
            matched = fit_matched(x_runs, inputs.y_runs, settings.alphas, width, reduction=settings.reduction,
                                  seed=settings.seed, **options)
            for name in PER_RUN:
                arrays["unmatched"][name][f], arrays["matched"][name][f] = getattr(plain, name), matched[name]
            if task is not None:
                progress.update(task, advance=1, description=f"fit ridge L{key[0]} {key[1]} (width {width})")
        parcels = inputs.dataset.parcels
        manifest = {"widths": {"width": int(width), "reduction": settings.reduction, "dims": dims}}
        return WidthsResult(keys, arrays, dims, parcels.labels, parcels.names, manifest)

    def print_summary(self, output, console) -> None:
        table = Table(title="Best layer x state per parcel, as it is and at one width",
                      caption="chosen on validation inside each outer fold; by: content when matching keeps the "
                              "winner, width when it changes it")
        for column in ("parcel", "winner", "r test", "matched winner", "r test (matched)", "by"):
            table.add_column(column, justify="right" if column.startswith("r ") else "left")
        for row in [output.summary[0], *sorted(output.summary[1:], key=lambda r: -r["test"])[:15]]:
            table.add_row(row["parcel"], f"L{row['layer']} {row['state']}", f"{row['test']:.3f}",
                          f"L{row['matched_layer']} {row['matched_state']}", f"{row['matched_test']:.3f}", row["by"])
        console.print(table)
        print_truth_check(output, "Planted truth: recovered at one width?", "r test (matched)", out=console)

    def combine(self, runs, meta: dict) -> WidthsResult:
        """Runs of different layers (one common width) as one run, from ``widths_folds.parquet``."""
        recorded = [run.manifest["widths"] for run in runs]
        if len({(w["width"], w["reduction"]) for w in recorded}) > 1:
            raise MtbenchError("the runs were matched at different widths or reductions; combine runs made with the "
                               "same --width and --reduction")
        parts = [_read_folds(run.path) for run in runs]
        keys = [key for part_keys, _ in parts for key in part_keys]
        if twice := [key for key, n in Counter(keys).items() if n > 1]:
            raise MtbenchError(f"layer {twice[0][0]} {twice[0][1]} is fitted by more than one of the runs; combine "
                               "runs that fit different (layer, state)s")
        order = get_registry().names("state")
        rank = sorted(range(len(keys)), key=lambda i: (keys[i][0], order.index(keys[i][1]) if keys[i][1] in order
                                                       else len(order), keys[i][1]))
        arrays = {kind: {name: np.concatenate([a[kind][name] for _, a in parts])[rank] for name in PER_RUN}
                  for kind in KINDS}
        keys = [keys[i] for i in rank]
        meta["settings"]["layers"] = sorted({k[0] for k in keys})
        meta["settings"]["states"] = list(dict.fromkeys(k[1] for k in keys))
        dims = {s: d for w in recorded for s, d in w["dims"].items()}
        settings = RunSettings.from_record(meta["settings"])
        dataset = load_dataset(settings.dataset, **settings.dataset_options)
        return WidthsResult(keys, arrays, dims, dataset.parcels.labels, dataset.parcels.names,
                            {"widths": recorded[0] | {"dims": dims}})

    def board_cells(self, run) -> list[dict]:
        return [{"parcel_id": r["parcel_id"], "parcel": r["parcel"], "n_voxels": r["n_voxels"],
                 "layer": r["matched_layer"], "state": r["matched_state"], "test": r["matched_test"],
                 "test_normalized": None, "ceiling": None, "validation": r["matched_validation"],
                 "folds_agree": r["matched_folds_agree"], "voxel_best_test": None, "top_state": r["matched_state"],
                 "top_state_share": None, "tied_states": "",
                 "note": f"unmatched winner L{r['layer']} {r['state']} (r {r['test']:.3f}): wins by {r['by']}"}
                for r in _rows(run.path / "widths_summary.parquet")]

    def figures(self, run):
        rows = [r for r in _rows(run.path / "widths.parquet") if r["parcel"] == WHOLE_BRAIN]
        labels = [f"L{r['layer']} {r['state']} ({r['dim']})" for r in rows]
        width = run.manifest["widths"]["width"]
        bars = paired_bars(labels, {"as it is": [r["test_unmatched"] for r in rows],
                                    f"width {width}": [r["test_matched"] for r in rows]},
                           title=f"Whole brain: held-out r of each (layer, state), as it is and at width {width}",
                           xlabel="held-out r (mean over voxels and test runs)")
        summary = _rows(run.path / "widths_summary.parquet")[0]
        keys = [(r["layer"], r["state"]) for r in rows]
        volume = keys.index((summary["matched_layer"], summary["matched_state"]))
        return [("widths_bars.png", "Held-out r as it is and width-matched (whole brain)", bars),
                ("widths_matched_map.png", "Held-out r of the width-matched whole-brain winner, MNI152",
                 score_map(run.path, "widths_matched_test_r.nii.gz", volume=volume,
                           title=f"L{keys[volume][0]} {keys[volume][1]} at width {width}"))]

    def sweep_cells(self, base: RunSettings, states, layers, options: dict) -> list[RunSettings]:
        """One cell per layer: the common width is the narrowest of the states fitted together."""
        return [replace(base, states=list(states), layers=[layer], **options) for layer in layers]

    def cell_label(self, settings: RunSettings) -> str:
        return "widths"

    def cost(self, settings: RunSettings) -> tuple[int, int]:
        return 1, 2 * max(len(settings.states), 1)


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _read_folds(run_dir: Path) -> tuple[list, dict]:
    """The keys and per-run arrays of a widths run (``widths_folds.parquet``)."""
    data = pq.read_table(Path(run_dir) / "widths_folds.parquet").drop_columns(
        [c for c in IDENTITY if c in ("run_id", "model", "dataset", "subject", "metric")
         and c in pq.read_schema(Path(run_dir) / "widths_folds.parquet").names])
    n_runs, n_vox = int(data["fold"].to_numpy().max()) + 1, int(data["voxel"].to_numpy().max()) + 1
    layer, state = data["layer"].to_numpy(), data["state"].to_pylist()
    keys = [(int(layer[i]), state[i]) for i in range(0, len(state), n_runs * n_vox)]
    arrays = {kind: {name: data[f"{name.split('_')[0]}_{kind}"].to_numpy().astype(np.float32)
                     .reshape(len(keys), n_runs, n_vox) for name in PER_RUN} for kind in KINDS}
    return keys, arrays
