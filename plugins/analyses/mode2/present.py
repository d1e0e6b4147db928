"""How a Mode 2 run is shown: the terminal summary, the report's figures, the leaderboard's cells."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
from rich.table import Table

from mtbench.display import print_truth_check
from mtbench.schema import read_map_index

from ..figures import score_map, stage_bars, state_colors, winning_ratio_bars
from ..mode1.present import damaged, finite, read_rows

#: What the leaderboard's Mode 2 cells mean (added to the board's legend).
BOARD_LEGEND = ("Mode 2 rows: stage-2 held-out r of the layer chosen on stage-2 validation inside each outer fold "
                "(nested), the layer most folds chose, and the input state most kept features came from.")
#: The leaderboard columns only Mode 2 cells fill: name -> (Arrow type, value in other rows).
BOARD_COLUMNS = {"selection": ("string", ""), "inputs": ("string", ""), "stage1_test": ("float64", None)}


def print_summary(output, console, top: int = 15) -> None:
    """Stage 1 vs stage 2 per (layer, parcel), best parcels first, the nested whole-brain score, and the
    planted-truth check."""
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
        brain = pq.read_table(nested).to_pylist()[0]
        console.print(f"Nested layer choice (the leaderboard's score, mode2_nested.parquet): whole brain r "
                      f"{brain['test']:.3f}, layer {brain['layer']} chosen in {brain['folds_agree']:.0%} of the "
                      f"outer folds ({brain['fold_layers']})")
    print_truth_check(output, "Planted truth (simulated dataset): planted state on top in its parcel?", "r stage 2",
                      out=console)



def figures(run) -> list[tuple[str, str, object]]:
    """Figures of a Mode 2 run: stages per parcel, kept states per parcel, stage 1 and stage 2 maps.

    Each parcel is shown with its nested layer choice (``mode2_nested.parquet``, as on the
    leaderboard: the stage-1 and stage-2 r of the layer chosen inside each outer fold,
    labelled with the layer most folds chose, whose kept states are drawn); the maps show
    the layer most folds chose for the whole brain.
    """
    settings = run.manifest["settings"]
    chosen = read_rows(run.path / "mode2_nested.parquet")
    labels = [f"{r['parcel']} (L{r['layer']})" for r in chosen]
    stage_rows = [{"parcel": label, "stage": stage, "test": row["stage1_test" if stage == 1 else "test"]}
                  for label, row in zip(labels, chosen) for stage in (1, 2)]
    at = {(r["layer"], r["parcel_id"]): label for r, label in zip(chosen, labels)}
    kept_key = "kept_share" if settings["selection"] == "pivot" else "contribution"
    kept = [{"parcel": at[(r["layer"], r["parcel_id"])], "state": r["state"], "share": r[kept_key]}
            for r in read_rows(run.path / "mode2_states.parquet") if (r["layer"], r["parcel_id"]) in at]
    what = ("share of the kept features from each input state" if settings["selection"] == "pivot"
            else "contribution of each input state to the stage-2 r")
    layers = read_map_index(run.path)["mode2_stage<k>_test_r.nii.gz"][
        "volume_layers"]
    brain_layer = chosen[0]["layer"]
    method = f"{settings['selection']}, pivot {settings['pivot']}"
    return [
        ("mode2_stages.png", "Mode 2: held-out r of stage 1 (all inputs) and stage 2 (selected), per parcel at the "
                             "layer chosen on stage-2 validation inside each outer fold",
         stage_bars(stage_rows, labels, title=f"Mode 2 ({method}): stage 1 vs stage 2")),
        ("mode2_kept_states.png", f"Mode 2: {what}",
         winning_ratio_bars(kept, labels, state_colors(list(settings["inputs"])),
                            title="Mode 2: kept features per input state" if settings["selection"] == "pivot"
                            else "Mode 2: contribution per input state", xlabel=what)),
        *((f"mode2_stage{k}_map.png", f"Mode 2 stage {k} held-out r per voxel, layer {brain_layer}, MNI152",
           score_map(run.path, f"mode2_stage{k}_test_r.nii.gz", layers.index(brain_layer),
                     title=f"Mode 2 stage {k}: held-out r per voxel (layer {brain_layer})", label="held-out r"))
          for k in (1, 2)),
    ]



def board_cells(run) -> list[dict]:
    """Board cells of a Mode 2 run: per parcel, its nested layer choice (``mode2_nested.parquet``).

    ``test`` is the nested stage-2 test r (:func:`.tables.nested_choices`), ``layer`` the layer most
    folds chose and ``folds_agree`` their share. ``state`` and ``top_state`` name the input
    state the kept features came from most at that layer (``top_state``); ``top_state_share``
    is its share of the kept features (pivot) or of the summed contributions (banded;
    missing when that sum is not positive).
    """
    states: dict[tuple, dict[str, dict]] = {}
    for row in read_rows(run.path / "mode2_states.parquet"):
        states.setdefault((row["layer"], row["parcel_id"]), {})[row["state"]] = row
    cells = []
    for row in read_rows(run.path / "mode2_nested.parquet"):
        per_state = states.get((row["layer"], row["parcel_id"]), {})
        top = per_state.get(row["top_state"])
        if top is None:
            share = None
        elif row["selection"] == "pivot":
            share = finite(top["kept_share"])
        else:
            total = sum(s["contribution"] for s in per_state.values())
            share = finite(top["contribution"] / total) if total > 0 else None
        cells.append({
            "parcel_id": row["parcel_id"], "parcel": row["parcel"], "n_voxels": row["n_voxels"],
            "layer": row["layer"], "state": row["top_state"], "test": finite(row["test"]),
            "test_normalized": finite(row["test_normalized"]), "ceiling": finite(row["ceiling"]),
            "validation": finite(row["validation"]), "folds_agree": finite(row["folds_agree"]),
            "voxel_best_test": None,
            "top_state": row["top_state"], "top_state_share": share, "tied_states": "",
            "selection": row["selection"], "inputs": row["inputs"], "stage1_test": finite(row["stage1_test"]),
            "note": ("" if row["stage1_test"] is None or not math.isfinite(row["stage1_test"])
                     else f"Mode 2 {row['selection']}: stage 1 r {row['stage1_test']:.3f}"),
            "damaged": damaged(row, "mode2_nested.parquet", ("test", "validation", "folds_agree")),
        })
    return cells
