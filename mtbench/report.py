"""``mtbench report RUN_DIR``: one run's figures as PNG files and one offline HTML page.

Figures (each function returns a :class:`matplotlib.figure.Figure` with a suptitle, and
a colorbar or legend, so tests can inspect them):

- :func:`layer_state_heatmap`: held-out r of every (layer, state) in one parcel, with the
  winner chosen on validation framed;
- :func:`best_state_map` and :func:`score_map`: the per-voxel winning state and its nested
  held-out r on the MNI152 template that nilearn ships (no download);
- :func:`winning_ratio_bars`: share of each parcel's voxels that each state wins;
- Mode 2 runs (``mode2_nested.parquet``): :func:`stage_bars`, stage 1 vs stage 2 per parcel
  at the layer chosen on stage-2 validation inside each outer fold; :func:`kept_state_bars`
  (which input states the kept features come from); :func:`score_map` of the stage 1 and
  stage 2 maps.

Figures are drawn on ``Figure`` objects with the Agg canvas (no pyplot state, no display)
and saved at a fixed size: :data:`DPI` times the figure size in inches, no tight bbox.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from .paths import atomic_write_bytes, writable_folder
from .results import WHOLE_BRAIN
from .schema import RunFolder, read_map, read_map_index, validate_run

DPI = 100


def _figure(width: float, height: float):
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


def png_bytes(fig) -> bytes:
    """The figure as PNG at exactly ``figsize * DPI`` pixels (no timestamp in the file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


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
    fig = _figure(max(6.0, 0.45 * len(states) + 3.0), max(3.5, 0.3 * len(layers) + 2.6))
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


def _template():
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=2)  # ships with nilearn: nothing is downloaded


def best_state_map(run_dir: Path, states_by_code: dict[str, str], colors: dict[str, tuple]):
    """The state that wins each voxel (on validation), on the MNI152 template.

    Returns
    -------
    matplotlib.figure.Figure
        Ortho slices, and a colorbar whose ticks name the states.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.cm import ScalarMappable
    from nilearn import plotting

    codes = sorted(int(c) for c in states_by_code)
    names = [states_by_code[str(c)] for c in codes]
    cmap = ListedColormap([colors[n] for n in names])
    norm = BoundaryNorm(np.arange(0.5, len(codes) + 1.5), cmap.N)
    img = read_map(run_dir, "best_state.nii.gz")
    fig = _figure(10, 4.2)
    plotting.plot_roi(img, bg_img=_template(), figure=fig, axes=fig.add_axes([0.0, 0.05, 0.74, 0.82]),
                      cmap=cmap, vmin=0.5, vmax=len(codes) + 0.5, colorbar=False, draw_cross=False,
                      resampling_interpolation="nearest", black_bg=False)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=fig.add_axes([0.77, 0.08, 0.02, 0.78], label="colorbar"),
                        ticks=range(1, len(codes) + 1))
    cbar.ax.set_yticklabels(names, fontsize=7)
    fig.suptitle("Best state per voxel (chosen on validation)", fontsize=11)
    return fig


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
    fig = _figure(10, 4.2)
    plotting.plot_stat_map(img, bg_img=_template(), figure=fig, axes=fig.add_axes([0.0, 0.05, 0.8, 0.82]),
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
    fig = _figure(10, height)
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
    fig = _figure(9, height)
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


# --------------------------------------------------------------------------- the report
def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def figures(run_dir: Path) -> list[tuple[str, str, object]]:
    """Every figure of a run: ``(file name, caption, Figure)``, in page order."""
    run = validate_run(run_dir)
    if run.mode == "2":
        return mode2_figures(run)
    states = list(run.manifest["settings"].get("states") or [])
    summary = _read(run.path / "summary.parquet")
    scores = _read(run.path / "scores.parquet")
    winners = _read(run.path / "winners.parquet")
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


def mode2_figures(run: RunFolder) -> list[tuple[str, str, object]]:
    """Figures of a Mode 2 run: stages per parcel, kept states per parcel, stage 1 and stage 2 maps.

    Each parcel is shown with its nested layer choice (``mode2_nested.parquet``, as on the
    leaderboard: the stage-1 and stage-2 r of the layer chosen inside each outer fold,
    labelled with the layer most folds chose, whose kept states are drawn); the maps show
    the layer most folds chose for the whole brain.
    """
    settings = run.manifest["settings"]
    chosen = _read(run.path / "mode2_nested.parquet")
    labels = [f"{r['parcel']} (L{r['layer']})" for r in chosen]
    stage_rows = [{"parcel": label, "stage": stage, "test": row["stage1_test" if stage == 1 else "test"]}
                  for label, row in zip(labels, chosen) for stage in (1, 2)]
    at = {(r["layer"], r["parcel_id"]): label for r, label in zip(chosen, labels)}
    kept_key = "kept_share" if settings["selection"] == "pivot" else "contribution"
    kept = [{"parcel": at[(r["layer"], r["parcel_id"])], "state": r["state"], "share": r[kept_key]}
            for r in _read(run.path / "mode2_states.parquet") if (r["layer"], r["parcel_id"]) in at]
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


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write every figure as PNG and ``index.html`` (figures embedded) into ``out``.

    Parameters
    ----------
    run_dir : Path
        A run folder (``RESULTS/runs/<run_id>``).
    out : Path, optional
        Default: ``run_dir/report``.

    Returns
    -------
    Path
        The HTML page.
    """
    run_dir = Path(run_dir)
    run = validate_run(run_dir)  # before making anything: a wrong path leaves no empty report/ behind
    out = writable_folder(Path(out) if out is not None else run_dir / "report")
    sections = []
    for name, caption, fig in figures(run_dir):
        data = png_bytes(fig)
        atomic_write_bytes(out / name, data)
        encoded = base64.b64encode(data).decode()
        sections.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)} (<a href=\"{name}\">{name}</a>)</figcaption></figure>")
    page = _page(run, sections)
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    return out / "index.html"


def _page(run: RunFolder, sections: list[str]) -> str:
    e = html.escape
    m = run.manifest
    facts = [("run", m["run_id"]), ("model", m["model"]["name"]), ("family", m["model"]["family"]),
             ("model revision", m["model"]["revision"]), ("dataset", m["dataset"]["name"]),
             ("dataset version", m["dataset"]["version"]), ("subject", m["settings"]["subject"]),
             ("mtbench version", m["mtbench_version"]), ("git commit", m.get("git_commit") or "—")]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    settings = e(json.dumps(m.get("settings", {}), indent=1, sort_keys=True))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>mtbench report {e(m['run_id'])}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
        "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left}"
        "figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}"
        "</style></head><body>"
        f"<h1>{e(m['model']['name'])} on {e(m['dataset']['name'])}</h1>"
        f"<table>{rows}</table><details><summary>settings</summary><pre>{settings}</pre></details>"
        + "\n".join(sections) + "</body></html>\n"
    )
