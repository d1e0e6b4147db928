"""Scaling on the board: score against parameter count (log scale) by family, the fitted slope per
ln(parameters) per parcel (as the LBL pipeline reports it), and score against training step for
the checkpoints of one model (``NAME@stepN`` runs, ``mtbench run --model pythia-160m:step1000``).

:func:`write_scaling` writes ``scaling.png``, ``training.png`` (when checkpoints were run) and
``scaling.md`` next to the leaderboard and returns the HTML section the page embeds.
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from mtbench.paths import atomic_write_bytes
from mtbench.results import WHOLE_BRAIN

from .report import png_bytes

_STEP = re.compile(r"^(?P<base>.+)@step(?P<step>\d+)$")


def training_step(model: str) -> tuple[str, int] | None:
    """``"pythia-160m@step1000"`` -> ``("pythia-160m", 1000)``; None for a model that is not a checkpoint."""
    match = _STEP.match(model)
    return (match["base"], int(match["step"])) if match else None


def _experiments(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Board rows per experiment (dataset, subject, mode, protocol, metric): models are compared within one."""
    groups = defaultdict(list)
    for row in rows:
        if row.get("score") is not None and np.isfinite(row["score"]):
            groups[(row["dataset"], row["subject"], str(row["mode"]), row["protocol"], row["metric"])].append(row)
    return dict(groups)


def slope_rows(rows: list[dict]) -> list[dict]:
    """Least-squares slope of score on ln(parameters) per experiment, parcel and family (and all families).

    Only trained models with a parameter count enter (not checkpoints, baselines or untrained
    controls); a fit needs at least two distinct sizes.

    Returns
    -------
    list of dict
        ``dataset, mode, parcel_id, parcel, family, n_models, slope, intercept``.
    """
    out = []
    for (dataset, _subject, mode, _protocol, _metric), members in _experiments(rows).items():
        by_parcel = defaultdict(list)
        for row in members:
            if row.get("n_params") and training_step(row["model"]) is None and "+untrained" not in row["model"]:
                by_parcel[(row["parcel_id"], row["parcel"])].append(row)
        for (parcel_id, parcel), points in sorted(by_parcel.items()):
            families = sorted({p["family"] for p in points})
            for family in ["all", *families] if len(families) > 1 else families:
                chosen = [p for p in points if family in ("all", p["family"])]
                x = np.log([float(p["n_params"]) for p in chosen])
                if len(set(x.round(9))) < 2:
                    continue
                y = np.array([p["score"] for p in chosen], dtype=float)
                slope, intercept = np.polyfit(x, y, 1)
                out.append({"dataset": dataset, "mode": mode, "parcel_id": parcel_id, "parcel": parcel,
                            "family": family, "n_models": len(chosen), "slope": float(slope),
                            "intercept": float(intercept)})
    return out


def scaling_figure(rows: list[dict], slopes: list[dict]):
    """Whole-brain score against parameters (log axis) per family, the all-family fit, baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    experiments = _experiments([r for r in rows if r["parcel"] == WHOLE_BRAIN])
    fig = Figure(figsize=(6.4, 4.2 * max(len(experiments), 1)), dpi=100)
    for index, (key, members) in enumerate(sorted(experiments.items())):
        ax = fig.add_subplot(len(experiments), 1, index + 1)
        sized = [r for r in members if r.get("n_params") and training_step(r["model"]) is None]
        for family in sorted({r["family"] for r in sized}):
            mine = sorted((r for r in sized if r["family"] == family), key=lambda r: r["n_params"])
            ax.plot([r["n_params"] for r in mine], [r["score"] for r in mine], "o-", label=family)
            for r in mine:
                ax.annotate(r["model"], (r["n_params"], r["score"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        fit = next((s for s in slopes if (s["dataset"], s["mode"]) == (key[0], key[2])
                    and s["parcel"] == WHOLE_BRAIN and s["family"] == "all"), None)
        fit = fit or next((s for s in slopes if (s["dataset"], s["mode"]) == (key[0], key[2])
                           and s["parcel"] == WHOLE_BRAIN), None)
        if fit is not None and sized:
            grid = np.geomspace(min(r["n_params"] for r in sized), max(r["n_params"] for r in sized), 50)
            ax.plot(grid, fit["intercept"] + fit["slope"] * np.log(grid), "k--", lw=1,
                    label=f"fit: {fit['slope']:+.4f} per ln(params)")
        for r in members:
            if not r.get("n_params"):  # baselines: a reference level
                ax.axhline(r["score"], color="grey", lw=0.8, ls=":")
                ax.annotate(r["model"], (0.01, r["score"]), xycoords=("axes fraction", "data"), fontsize=7,
                            color="grey")
        if sized:
            ax.set_xscale("log")
        ax.set_xlabel("parameters (log scale)")
        ax.set_ylabel(f"whole-brain {key[4]} score")
        ax.set_title(f"{key[0]}, mode {key[2]}, {key[3]}: score against model size")
        if sized:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_figure(rows: list[dict]):
    """Whole-brain score against training step (symlog axis: step 0 is the initialisation), per model;
    None when the board has no checkpoint runs."""
    points = defaultdict(list)
    for row in rows:
        step = training_step(row["model"])
        if step is not None and row["parcel"] == WHOLE_BRAIN and row.get("score") is not None:
            points[(row["dataset"], str(row["mode"]), step[0])].append((step[1], row["score"]))
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for (dataset, mode, base), values in sorted(points.items()):
        values.sort()
        ax.plot([s for s, _ in values], [v for _, v in values], "o-", label=f"{base} ({dataset}, mode {mode})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (symlog)")
    ax.set_ylabel("whole-brain score")
    ax.set_title("score along training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def slope_table(slopes: list[dict]) -> str:
    """The slopes as a Markdown table."""
    lines = ["| dataset | mode | parcel | family | models | slope per ln(params) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s['dataset']} | {s['mode']} | {s['parcel']} | {s['family']} | {s['n_models']} | {s['slope']:+.4f} |"
              for s in slopes]
    return "\n".join(lines) + "\n"


def write_scaling(rows: list[dict], out: Path) -> str:
    """Write ``scaling.png``, ``training.png`` and ``scaling.md`` into ``out``; the HTML section (""
    when no two model sizes can be compared and no checkpoints were run)."""
    slopes = slope_rows(rows)
    figures = []
    if slopes:
        caption = ("Whole-brain score against parameters (log scale) by family; dashed: least-squares fit on "
                   "ln(params); dotted: baselines")
        figures.append(("scaling.png", caption, scaling_figure(rows, slopes)))
    training = training_figure(rows)
    if training is not None:
        figures.append(("training.png", "Whole-brain score along training (checkpoints)", training))
    if not figures:
        return ""
    e = html.escape
    parts = ["<h2>Scaling</h2>"]
    for name, caption, fig in figures:
        data = png_bytes(fig)
        atomic_write_bytes(out / name, data)
        parts.append(f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" '
                     f'alt="{e(caption)}" style="max-width:100%"><figcaption>{e(caption)} '
                     f'(<a href="{name}">{name}</a>)</figcaption></figure>')
    if slopes:
        atomic_write_bytes(out / "scaling.md", slope_table(slopes).encode("utf-8"))
        head = "".join(f"<th>{e(h)}</th>" for h in ("dataset", "mode", "parcel", "family", "models",
                                                        "slope per ln(params)"))
        body = "".join(
            f"<tr><td>{e(s['dataset'])}</td><td>{e(s['mode'])}</td><td>{e(s['parcel'])}</td><td>{e(s['family'])}"
            f"</td><td>{s['n_models']}</td><td data-value=\"{s['slope']!r}\">{s['slope']:+.4f}</td></tr>"
            for s in slopes)
        parts.append(f'<table class="scaling"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    return "\n".join(parts)


def embed(page: str, section: str) -> str:
    """The leaderboard page with the scaling section in place of its ``<!-- scaling -->`` marker."""
    return page.replace("<!-- scaling -->", section, 1)

