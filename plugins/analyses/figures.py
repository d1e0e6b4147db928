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
