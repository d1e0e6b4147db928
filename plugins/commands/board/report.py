"""``mtbench report RUN_DIR``: one run's figures as PNG files and one offline HTML page.

The figures are the run's analysis's (:meth:`mtbench.api.Analysis.figures`: Mode 1 draws layer x
state heatmaps, the best state per voxel and winning ratios; Mode 2 stage 1 against stage 2 and
the kept states), saved at their own size and DPI, without a timestamp.

A folder written by ``mtbench compare`` gets the same page: its map of significant differences
(``delta_r.png``) and its parcel table (:func:`write_comparison_report`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from mtbench_plugins.commands.compare.schema import COMPARE_SCHEMA, validate_comparison

from mtbench.paths import atomic_write_bytes, writable_folder
from mtbench.registry import get_registry
from mtbench.schema import RunFolder, validate_run

STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
         "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left}"
         "td.num{text-align:right}tr.sig td{font-weight:600}"
         "figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}")


def png_bytes(fig) -> bytes:
    """The figure as PNG at exactly ``figsize * dpi`` pixels (no timestamp in the file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buffer.getvalue()


def figures(run_dir: Path) -> list[tuple[str, str, object]]:
    """Every figure of a run: ``(file name, caption, Figure)``, in page order."""
    run = validate_run(run_dir)
    return get_registry().analysis(run.mode).load().figures(run)


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
    if is_comparison(run_dir):
        return write_comparison_report(run_dir, out)
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
    m = run.manifest
    facts = [("run", m["run_id"]), ("model", m["model"]["name"]), ("family", m["model"]["family"]),
             ("model revision", m["model"]["revision"]), ("dataset", m["dataset"]["name"]),
             ("dataset version", m["dataset"]["version"]), ("subject", m["settings"]["subject"]),
             ("mtbench version", m["mtbench_version"]), ("git commit", m.get("git_commit") or "—")]
    return _html(f"mtbench report {m['run_id']}", f"{m['model']['name']} on {m['dataset']['name']}", facts,
                 m.get("settings", {}), sections)


def _html(title: str, heading: str, facts: list[tuple], settings: dict, sections: list[str]) -> str:
    """The report page: a heading, a table of facts, the settings folded, then the sections (HTML)."""
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    settings_text = e(json.dumps(settings, indent=1, sort_keys=True, default=str))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{e(heading)}</h1>"
        f"<table>{rows}</table><details><summary>settings</summary><pre>{settings_text}</pre></details>"
        + "\n".join(sections) + "</body></html>\n"
    )


# --------------------------------------------------------------------------- comparisons
def is_comparison(folder: Path) -> bool:
    """Whether ``folder`` holds a ``mtbench compare`` result (its manifest's kind), not a run."""
    try:
        manifest = json.loads((Path(folder) / COMPARE_SCHEMA["manifest"]).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == COMPARE_SCHEMA["kind"]


def write_comparison_report(folder: Path, out: Path | None = None) -> Path:
    """``index.html`` and ``delta_r.png`` of a comparison folder (:data:`COMPARE_SCHEMA`) into ``out``.

    The page shows what was compared and how, the map of significant differences, and the
    parcel table of the primary result (the group's with several subjects; each subject's
    folded below it), the whole brain first, then by p-value.

    Parameters
    ----------
    folder : Path
        A folder written by ``mtbench compare``.
    out : Path, optional
        Default: ``folder/report``.

    Returns
    -------
    Path
        The HTML page.
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    manifest = validate_comparison(folder)  # before making anything
    out = writable_folder(Path(out) if out is not None else folder / "report")
    figure = (folder / "delta_r.png").read_bytes()
    atomic_write_bytes(out / "delta_r.png", figure)
    rows = pq.read_table(folder / "parcels.parquet").to_pylist()
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    primary = "group" if "group" in subjects else subjects[0]
    test = manifest["test"]
    caption = (f"Δr = r({manifest['a']['fit']}) − r({manifest['b']['fit']}) where Benjamini-Hochberg q <= "
               f"{test['fdr']} (subject {primary}); the title says when none is and all of Δr is shown")
    encoded = base64.b64encode(figure).decode()
    sections = [(f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
                 f'<figcaption>{html.escape(caption)} (<a href="delta_r.png">delta_r.png</a>)</figcaption></figure>'),
                f"<h2>Parcels, subject {html.escape(primary)}</h2>", _parcel_table(rows, primary, test)]
    for subject in subjects:
        if subject != primary:
            sections.append(f"<details><summary>Parcels, subject {html.escape(subject)}</summary>"
                            f"{_parcel_table(rows, subject, test)}</details>")
    whole = manifest.get("whole_brain") or {}
    facts = [("comparison", manifest["comparison_id"]),
             ("A", f"{manifest['a']['fit']} of {manifest['a'].get('model', '—')} ({', '.join(manifest['a']['runs'])})"),
             ("B", f"{manifest['b']['fit']} of {manifest['b'].get('model', '—')} ({', '.join(manifest['b']['runs'])})"),
             ("dataset", f"{manifest['dataset']['name']} {manifest['dataset']['version']}"),
             ("subjects", ", ".join(manifest["subjects"])),
             ("test", f"{test['method']}, {test['level']:.0%} intervals, BH FDR {test['fdr']}"
                      + (f", group {test['group']}" if test.get("group") else "")),
             ("mtbench version", manifest["mtbench_version"])]
    if whole:
        facts.append(("whole brain Δr", (f"{whole['delta']:+.4f} [{whole['ci_low']:+.4f}, {whole['ci_high']:+.4f}], "
                                         f"p = {whole['p_value']:.2g}, {whole['share_significant']:.1%} of voxels "
                                         f"q <= {test['fdr']}")))
    page = _html(f"mtbench comparison {manifest['comparison_id']}",
                 f"{manifest['a']['fit']} against {manifest['b']['fit']} on {manifest['dataset']['name']}", facts,
                 test, sections)
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    return out / "index.html"


def _parcel_table(rows: list[dict], subject: str, test: dict) -> str:
    """One subject's parcel rows as an HTML table; rows with Holm p < 1 - level in bold."""
    e = html.escape
    alpha = 1 - test["level"]
    mine = [r for r in rows if r["subject"] == subject]
    mine = mine[:1] + sorted(mine[1:], key=lambda r: (r["p_value"], r["parcel_id"]))
    head = ["parcel", "voxels", "Δr", f"{test['level']:.0%} interval", "p", "p Holm", "q BH",
            f"voxels q <= {test['fdr']}"]
    body = []
    for r in mine:
        cells = [f"{r['delta']:+.4f}", f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", f"{r['p_value']:.2g}",
                 f"{r['p_holm']:.2g}", f"{r['q_value']:.2g}", f"{r['share_significant']:.1%}"]
        css = ' class="sig"' if r["p_holm"] < alpha else ""
        body.append(f"<tr{css}><td>{e(r['parcel'])}</td><td class=\"num\">{r['n_voxels']}</td>"
                    + "".join(f'<td class="num">{e(c)}</td>' for c in cells) + "</tr>")
    return (f"<p>Bold: Holm-corrected p &lt; {alpha:.2g} across the parcels (family-wise).</p><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")
