"""Figures the analyses' reports share, drawn on ``Figure`` objects with the Agg canvas (no pyplot
state, no display), at :data:`DPI` times the figure size in inches, no tight bbox.

Each function returns a :class:`matplotlib.figure.Figure` with a suptitle and a colorbar or
legend, so tests can inspect them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtbench.schema import read_map

DPI = 100


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def state_colors(states: list[str]) -> dict[str, tuple]:
    """One fixed color per state, in the run's state order (tab20: up to 20 distinct colors)."""
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    return {state: palette(i % 20) for i, state in enumerate(states)}


def mni_template():
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=2)  # ships with nilearn: nothing is downloaded


def score_map(run_dir: Path, name: str = "best_test_r.nii.gz", volume: int | None = None,
              title: str = "Held-out r of the best layer x state per voxel", label: str = "nested held-out r"):
    """Held-out r per voxel (by default of each voxel's best (layer, state)), on the MNI152 template.

    Parameters
    ----------
    run_dir : Path
    name : str
        Map of ``run_dir/maps``.
    volume : int, optional
        Volume of a 4-D map (e.g. the layer of a Mode 2 map).
    title, label : str
        Suptitle and colorbar label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from nilearn import image, plotting

    img = read_map(run_dir, name)
    if volume is not None:
        img = image.index_img(img, volume)
    data = np.asarray(img.dataobj)
    limit = float(np.abs(data).max()) or 1.0
    cmap = colormaps["RdBu_r"]
    fig = figure(10, 4.2)
    plotting.plot_stat_map(img, bg_img=mni_template(), figure=fig, axes=fig.add_axes([0.0, 0.05, 0.8, 0.82]),
                           cmap=cmap, vmax=limit, colorbar=False, draw_cross=False, black_bg=False,
                           symmetric_cbar=True)
    cbar = fig.colorbar(ScalarMappable(norm=Normalize(-limit, limit), cmap=cmap),
                        cax=fig.add_axes([0.84, 0.08, 0.02, 0.78], label="colorbar"))
    cbar.set_label(label)
    fig.suptitle(title, fontsize=11)
    return fig


def winning_ratio_bars(winners: list[dict], parcels: list[str], colors: dict[str, tuple],
                       title: str = "Winning ratios per parcel",
                       xlabel: str = "share of the parcel's voxels won (on validation)"):
    """Stacked bars: share of each parcel's voxels that each state wins (layers summed).

    Returns
    -------
    matplotlib.figure.Figure
        One bar per parcel (the whole brain on top) and a legend of the states.
    """
    shares = {p: {} for p in parcels}
    for row in winners:
        if row["parcel"] in shares:
            per = shares[row["parcel"]]
            per[row["state"]] = per.get(row["state"], 0.0) + row["share"]
    height = 0.32 * len(parcels) + 1.8
    fig = figure(10, height)
    ax = fig.add_axes([0.32, 0.8 / height, 0.45, 1 - 1.4 / height])  # margins fixed in inches
    y = np.arange(len(parcels))[::-1]
    left = np.zeros(len(parcels))
    for state, color in colors.items():
        width = np.array([shares[p].get(state, 0.0) for p in parcels])
        if width.any():
            ax.barh(y, width, left=left, color=color, label=state, height=0.8)
            left += width
    ax.set_yticks(y, parcels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="state")
    fig.suptitle(title, fontsize=11)
    return fig


def stage_bars(stage_rows: list[dict], parcels: list[str], title: str = "Mode 2: stage 1 vs stage 2"):
    """Mode 2: held-out r after stage 1 (all concatenated states) and stage 2 (selected features).

    Parameters
    ----------
    stage_rows : list of dict
        ``parcel, stage, test`` rows (``stage`` 1 or 2).
    parcels : list of str
        Bar order, top to bottom.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        One group of bars per parcel (one bar per stage) and a legend of the stages.
    """
    value = {(r["parcel"], str(r["stage"])): r["test"] for r in stage_rows}
    stages = sorted({str(r["stage"]) for r in stage_rows})
    height = 0.32 * len(parcels) + 1.8
    fig = figure(9, height)
    ax = fig.add_axes([0.35, 0.8 / height, 0.45, 1 - 1.4 / height])
    y = np.arange(len(parcels))[::-1]
    height = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        ax.barh(y + (i - (len(stages) - 1) / 2) * height, [value.get((p, stage), np.nan) for p in parcels],
                height=height, label=f"stage {stage}")
    ax.set_yticks(y, parcels, fontsize=7)
    ax.set_xlabel("held-out r")
    ax.axvline(0, color="black", linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def partition_bars(rows: list[dict], parcels: list[str], title: str = "Variance partitioning per parcel"):
    """Per parcel, the variance of the reference alone, shared with the state, and the state's own.

    Parameters
    ----------
    rows : list of dict
        ``parcel, unique_reference, shared, unique_state`` (signed squared held-out r, means).
    parcels : list of str
        Bar order, top to bottom.

    Returns
    -------
    matplotlib.figure.Figure
        Stacked horizontal bars (negative parts drawn left of 0) and a legend of the parts.
    """
    by_parcel = {r["parcel"]: r for r in rows}
    height = 0.32 * len(parcels) + 1.8
    fig = figure(10, height)
    ax = fig.add_axes([0.32, 0.8 / height, 0.45, 1 - 1.4 / height])
    y = np.arange(len(parcels))[::-1]
    right, left = np.zeros(len(parcels)), np.zeros(len(parcels))
    for part, color, label in (("unique_reference", "#9ecae1", "unique to the reference"),
                               ("shared", "#bdbdbd", "shared"), ("unique_state", "#e6550d", "unique to the state")):
        value = np.array([by_parcel[p][part] if p in by_parcel else np.nan for p in parcels])
        value = np.nan_to_num(value)
        start = np.where(value >= 0, right, left)
        ax.barh(y, value, left=start, color=color, label=label, height=0.8)
        right, left = right + np.maximum(value, 0), left + np.minimum(value, 0)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_yticks(y, parcels, fontsize=7)
    ax.set_xlabel("held-out variance explained (signed r², mean over voxels and test runs)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def paired_bars(labels: list[str], series: dict[str, list[float]], title: str, xlabel: str):
    """Grouped horizontal bars: one group per label, one bar per series (e.g. as it is / width-matched).

    Returns
    -------
    matplotlib.figure.Figure
        Labels top to bottom in the order given, and a legend of the series.
    """
    height = 0.32 * len(labels) * max(len(series), 1) / 2 + 1.8
    fig = figure(9, height)
    ax = fig.add_axes([0.35, 0.8 / height, 0.45, 1 - 1.4 / height])
    y = np.arange(len(labels))[::-1]
    bar = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.barh(y + ((len(series) - 1) / 2 - i) * bar, values, height=bar, label=name)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def head_layer_heatmap(rows: list[dict], winner: dict):
    """Held-out r of every (layer, head) of one per-head state in one parcel; the winner is framed.

    Parameters
    ----------
    rows : list of dict
        ``layer, head, test`` rows of the parcel and state (``heads.parquet``).
    winner : dict
        The parcel's row of ``heads_summary.parquet`` (``parcel, layer, state, head, test``).

    Returns
    -------
    matplotlib.figure.Figure
        Image of shape (n_layers, n_heads), a colorbar, suptitle naming the parcel and state.
    """
    from matplotlib.patches import Rectangle

    layers = sorted({r["layer"] for r in rows}) or [winner["layer"]]
    n_heads = max([r["head"] for r in rows], default=winner["head"]) + 1
    grid = np.full((len(layers), n_heads), np.nan)
    for r in rows:
        grid[layers.index(r["layer"]), r["head"]] = r["test"]
    fig = figure(max(5.0, 0.35 * n_heads + 3.0), max(3.2, 0.3 * len(layers) + 2.2))
    ax = fig.add_axes([0.14, 0.2, 0.68, 0.66])
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=7)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer (block)")
    if winner["layer"] in layers:
        ax.add_patch(Rectangle((winner["head"] - 0.5, layers.index(winner["layer"]) - 0.5), 1, 1, fill=False,
                               edgecolor="black", linewidth=2))
    cbar = fig.colorbar(image, cax=fig.add_axes([0.85, 0.2, 0.025, 0.66], label="colorbar"))
    cbar.set_label("held-out r (mean over folds)")
    fig.suptitle(f"{winner['parcel']}: {winner['state']}, held-out r per layer x head", fontsize=10)
    return fig
