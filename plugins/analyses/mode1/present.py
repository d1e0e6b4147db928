"""How a Mode 1 run is shown: the terminal summary, the report's figures, the leaderboard's cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.table import Table

from mtbench.display import print_truth_check
from mtbench.errors import MtbenchError
from mtbench.results import WHOLE_BRAIN
from mtbench.schema import read_map, read_map_index

from ..figures import figure, mni_template, score_map, state_colors, winning_ratio_bars
from .tables import read_parcel_labels, read_score_table, winner_stability


def read_rows(path: Path) -> list[dict]:
    """A Parquet table of a run as rows."""
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- terminal
def stability_of(run_dir, output=None) -> dict[int, dict]:
    """Winner stability per parcel id (:func:`.tables.winner_stability`) of a run with ``folds.parquet``;
    empty without one (``--no-folds``) or when it cannot be read. ``output``: the run's result, whose
    score table is still in memory (the same numbers as ``folds.parquet``, without reading it back)."""
    if run_dir is None or not (Path(run_dir) / "folds.parquet").is_file():
        return {}
    if getattr(output, "table", None) is not None:
        table, labels, names = output.table, output.labels, output.names
    else:
        try:
            table = read_score_table(run_dir)
            labels, names = read_parcel_labels(run_dir)
        except MtbenchError:
            return {}
    return {row["parcel_id"]: row for row in winner_stability(table, labels, names)}


def stability_text(row: dict | None) -> str:
    """``0.83 · q_rope 74% [61-85%]``: support of the winner, and the top voxel-winner's share with its interval."""
    if not row:
        return ""
    return (f"{row['p_best']:.2f} · L{row['top_layer']} {row['top_state']} {row['top_share']:.0%} "
            f"[{row['share_low']:.0%}-{row['share_high']:.0%}]")


def print_summary(output, console, top: int = 15) -> None:
    """Best layer x state per parcel (chosen on validation), its stability, and the planted-truth check."""
    rows = output.summary
    brain, parcels = rows[0], sorted(rows[1:], key=lambda r: -r["test"])
    has_ceiling = any(r["ceiling"] == r["ceiling"] for r in rows)  # not NaN
    table = Table(title=f"Best layer x state per parcel — top {top} by held-out r",
                  caption="winner chosen on validation folds; r test = held-out r of choosing the best fit "
                          "inside each outer fold (nested, unbiased); agree = share of folds picking the winner")
    for col in ("parcel", "voxels", "layer", "state", "r val", "r test", "agree"):
        table.add_column(col, justify="left" if col in ("parcel", "state") else "right")
    if has_ceiling:
        table.add_column("ceiling", justify="right")
    has_significance = any(r.get("share_significant", float("nan")) == r.get("share_significant") for r in rows)
    table.add_column("95% CI (runs)", justify="right")
    if has_significance:
        table.add_column("signif.", justify="right")
    stability = stability_of(getattr(output, "run_dir", None), output)
    if stability:  # next to the winner: how often a bootstrap of the folds keeps it, and the voxel shares
        table.add_column("P(best) · top voxel winner [95%]", justify="left")
    for row in [brain, *parcels[:top]]:
        cells = [row["parcel"], str(row["n_voxels"]), str(row["layer"]), row["state"],
                 f"{row['validation']:.3f}", f"{row['test']:.3f}", f"{row['folds_agree']:.0%}"]
        if has_ceiling:
            cells.append(f"{row['ceiling']:.3f}")
        cells.append(f"{row['test_ci_low']:.3f}..{row['test_ci_high']:.3f}" if "test_ci_low" in row else "")
        if has_significance:  # share of the parcel's voxels where the winner is significant (BH-FDR)
            cells.append(f"{row['share_significant']:.0%}")
        if stability:
            cells.append(stability_text(stability.get(row["parcel_id"])))
        table.add_row(*cells)
    console.print(table)
    print_truth_check(output, "Planted truth (simulated dataset): recovered?", "r test", out=console)



# --------------------------------------------------------------------------- figures
def layer_state_heatmap(scores: list[dict], summary_row: dict, states: list[str], layers: list[int]):
    """Held-out r per (layer, state) in one parcel; the validation winner is framed.

    Parameters
    ----------
    scores : list of dict
        Rows of ``scores.parquet`` for this parcel (both splits; ``test`` is shown).
    summary_row : dict
        The parcel's row of ``summary.parquet`` (its winner ``layer, state``).
    states, layers : list
        Axis order (the run's states and layers).

    Returns
    -------
    matplotlib.figure.Figure
        Image of shape (n_layers, n_states), a colorbar, suptitle naming the parcel.
    """
    from matplotlib.patches import Rectangle

    grid = np.full((len(layers), len(states)), np.nan)
    for row in scores:
        if row["split"] == "test" and row["state"] in states and row["layer"] in layers:
            grid[layers.index(row["layer"]), states.index(row["state"])] = row["value"]
    fig = figure(max(6.0, 0.45 * len(states) + 3.0), max(3.5, 0.3 * len(layers) + 2.6))
    ax = fig.add_axes([0.16, 0.36, 0.66, 0.52])
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(states)), states, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_ylabel("layer (block)")
    if summary_row["state"] in states and summary_row["layer"] in layers:
        x, y = states.index(summary_row["state"]), layers.index(summary_row["layer"])
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    cbar = fig.colorbar(image, cax=fig.add_axes([0.85, 0.36, 0.025, 0.52], label="colorbar"))
    cbar.set_label("held-out r (mean over folds)")
    fig.suptitle(f"{summary_row['parcel']}: held-out r per layer x state", fontsize=10)
    fig.text(0.01, 0.01, f"framed: winner chosen on validation, L{summary_row['layer']} {summary_row['state']} "
                         f"(nested r {summary_row['test']:.3f})", fontsize=7)
    return fig


def best_state_map(run_dir: Path, states_by_code: dict[str, str], colors: dict[str, tuple]):
    """The state that wins each voxel (on validation), on the MNI152 template.

    Returns
    -------
    matplotlib.figure.Figure
        Ortho slices, and a colorbar whose ticks name the states.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from nilearn import plotting

    codes = sorted(int(c) for c in states_by_code)
    names = [states_by_code[str(c)] for c in codes]
    cmap = ListedColormap([colors[n] for n in names])
    norm = BoundaryNorm(np.arange(0.5, len(codes) + 1.5), cmap.N)
    img = read_map(run_dir, "best_state.nii.gz")
    fig = figure(10, 4.2)
    plotting.plot_roi(img, bg_img=mni_template(), figure=fig, axes=fig.add_axes([0.0, 0.05, 0.74, 0.82]),
                      cmap=cmap, vmin=0.5, vmax=len(codes) + 0.5, colorbar=False, draw_cross=False,
                      resampling_interpolation="nearest", black_bg=False)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=fig.add_axes([0.77, 0.08, 0.02, 0.78], label="colorbar"),
                        ticks=range(1, len(codes) + 1))
    cbar.ax.set_yticklabels(names, fontsize=7)
    fig.suptitle("Best state per voxel (chosen on validation)", fontsize=11)
    return fig


def figures(run) -> list[tuple[str, str, object]]:
    """Every figure of a Mode 1 run (:class:`mtbench.schema.RunFolder`): ``(file name, caption, Figure)``, in page order."""
    states = list(run.manifest["settings"].get("states") or [])
    summary = read_rows(run.path / "summary.parquet")
    scores = read_rows(run.path / "scores.parquet")
    winners = read_rows(run.path / "winners.parquet")
    if not states:
        states = list(dict.fromkeys(r["state"] for r in scores))
    layers = sorted({r["layer"] for r in scores})
    states_by_code = read_map_index(run.path)["best_state.nii.gz"]
    colors = state_colors(list(dict.fromkeys([*states, *states_by_code.values()])))
    parcels = list(dict.fromkeys(r["parcel"] for r in summary))
    out = [
        ("best_state_map.png", "Best state per voxel (on validation), MNI152", best_state_map(run.path, states_by_code,
                                                                                           colors)),
        ("score_map.png", "Nested held-out r of each voxel's best fit, MNI152", score_map(run.path)),
        ("winning_ratios.png", "Winning ratios per parcel", winning_ratio_bars(winners, parcels, colors)),
    ]
    by_parcel: dict[int, list[dict]] = {}
    for row in scores:
        by_parcel.setdefault(row["parcel_id"], []).append(row)
    for row in summary:
        name = "whole_brain" if row["parcel"] == WHOLE_BRAIN else f"parcel_{row['parcel_id']:03d}"
        out.append((f"heatmap_{name}.png", f"{row['parcel']}: layer x state",
                    layer_state_heatmap(by_parcel.get(row["parcel_id"], []), row, states, layers)))
    return out



# --------------------------------------------------------------------------- leaderboard
def top_states(winners: list[dict]) -> dict[int, tuple[str, float, str]]:
    """Per parcel id: the state winning the most voxels (summed over layers), its share, and ties.

    Returns
    -------
    dict
        ``parcel_id -> (state, share, tied)`` where ``tied`` is ``"a|b"`` when several
        states win exactly as many voxels (``state`` is then the first of them by name).
    """
    counts: dict[int, dict[str, int]] = {}
    sizes: dict[int, int] = {}
    for row in winners:
        per = counts.setdefault(row["parcel_id"], {})
        per[row["state"]] = per.get(row["state"], 0) + row["n_won"]
        sizes[row["parcel_id"]] = sizes.get(row["parcel_id"], 0) + row["n_won"]
    out = {}
    for pid, per in counts.items():
        best = max(per.values())
        tied = sorted(s for s, n in per.items() if n == best)
        out[pid] = (tied[0], best / sizes[pid], "|".join(tied) if len(tied) > 1 else "")
    return out


def board_cells(run) -> list[dict]:
    """Leaderboard cells of a Mode 1 run: per parcel, the best (layer, state) chosen on validation
    (``summary.parquet``: ``test`` is the nested held-out r of that choice), and the state that
    wins the most voxels (``winners.parquet``)."""
    winners = top_states(read_rows(run.path / "winners.parquet"))
    cells = []
    for row in read_rows(run.path / "summary.parquet"):
        state, share, tied = winners.get(row["parcel_id"], (None, None, ""))
        cells.append({key: row[key] for key in ("parcel_id", "parcel", "n_voxels", "layer", "state")} | {
            key: finite(row[key]) for key in ("test", "test_normalized", "ceiling", "validation",
                                              "folds_agree", "voxel_best_test")} | {
            "test_ci_low": finite(row.get("test_ci_low")), "test_ci_high": finite(row.get("test_ci_high")),
            "top_state": state, "top_state_share": share, "tied_states": tied,
            "note": f"voxel winners tied: {tied}" if tied else "",
            "damaged": damaged(row, "summary.parquet", MEASURED)})
    return cells


#: Columns of summary.parquet that every written run has a number in (ceiling and test_normalized
#: are NaN for a dataset without a noise ceiling: missing, not damaged).
MEASURED = ("validation", "test", "winner_test", "folds_agree", "voxel_best_test")


def damaged(row: dict, file: str, columns) -> str:
    """What is damaged in a row of ``file`` read back (e.g. ``"summary.parquet: test is NaN in parcel 'X'"``),
    "" when nothing: a value every run writes, missing or not finite, is damage, never "not measured"."""
    bad = [column for column in columns if finite(row.get(column)) is None]
    if not bad:
        return ""
    value = row.get(bad[0])
    what = "missing" if value is None else "NaN" if value != value else "infinite"
    more = f" (and {', '.join(bad[1:])})" if len(bad) > 1 else ""
    return f"{file}: {bad[0]} is {what} in parcel {row['parcel']!r}{more}"


def finite(value) -> float | None:
    """NaN (e.g. no noise ceiling) becomes a missing cell, never a number."""
    return None if value is None or not math.isfinite(value) else float(value)
