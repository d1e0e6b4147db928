"""``mtbench report RUN_DIR``: one run's figures as PNG files and one offline HTML page.

The figures are the run's analysis's (:meth:`mtbench.api.Analysis.figures`: Mode 1 draws layer x
state heatmaps, the best state per voxel and winning ratios; Mode 2 stage 1 against stage 2 and
the kept states), saved at their own size and DPI, without a timestamp.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from mtbench.paths import atomic_write_bytes, writable_folder
from mtbench.registry import get_registry
from mtbench.schema import RunFolder, validate_run


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
