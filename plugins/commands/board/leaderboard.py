"""``mtbench leaderboard``: many runs -> one table (Parquet, Markdown, HTML, terminal).

Every run folder found under the given paths is checked against the result schema
(:mod:`mtbench.schema`); a folder that fails is reported in one line and left out. Each
row of the board is one model (baselines included) on one dataset, subject, mode and
metric; its cells are the per-parcel scores of the best (layer, state) *chosen on
validation: each run's analysis says what its cells hold (:meth:`mtbench.api.Analysis.board_cells`;
Mode 1: the nested held-out r of the best (layer, state); Mode 2: the nested stage-2 r of the
layer chosen inside each outer fold).

Same inputs give byte-identical files: rows and columns are sorted with stable keys,
nothing records the time of the build, and the Parquet writer adds no timestamp.
"""

from __future__ import annotations

import difflib
import html
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from mtbench_plugins.commands.compare import board_stats
from mtbench_plugins.commands.compare.stats import holm_adjust
from rich.table import Table

from mtbench.errors import MtbenchError
from mtbench.paths import atomic_write_bytes, writable_folder
from mtbench.registry import get_registry
from mtbench.results import WHOLE_BRAIN, partial_writer
from mtbench.schema import RunFolder, run_mode, validate_run

#: --metric choice -> column of summary.parquet.
METRICS = {"raw": "test", "normalized": "test_normalized"}
MISSING = "—"
STATS_LEGEND = ("[a, b]: 95% t interval of the score over the test runs. P(best): share of bootstrap draws of the "
                "outer folds that keep the winner. Rank: '1=' for the leader and every model it is not "
                "significantly better than (paired t-test of the per-run whole-brain scores, Holm across models, "
                "p >= 0.05); the best model left opens the next tier the same way ('3=': rank 3 and those tied "
                "with it); without per-fold scores, 'n=' means equal scores. vs leader: the test against the "
                "leader, 'below' when the leader is significantly better.")

#: Columns of leaderboard.parquet every board has, in order, with their Arrow types (documented in
#: leaderboard/README.md); the installed analyses add theirs after them (:func:`columns`).
BASE_COLUMNS = {
    "rank": "int32", "rank_label": "string", "model": "string", "family": "string", "n_params": "int64", "n_layers": "int32",
    "dataset": "string", "dataset_version": "string", "atlas": "string", "subject": "string", "mode": "string",
    "protocol": "string", "metric": "string", "parcel_id": "int32", "parcel": "string", "n_voxels": "int32", "layer": "int32",
    "state": "string", "score": "float64", "ci_low": "float64", "ci_high": "float64", "leader_p": "float64",
    "vs_leader": "string", "winner_p_best": "float64",
    "test": "float64", "test_normalized": "float64", "ceiling": "float64",
    "validation": "float64", "folds_agree": "float64", "voxel_best_test": "float64", "top_state": "string",
    "top_state_share": "float64", "tied_states": "string", "run_id": "string", "model_revision": "string",
    "mtbench_version": "string", "report": "string",
}


def _analyses() -> list:
    """The installed analyses, loaded, in name order."""
    registry = get_registry()
    return [registry.analysis(name).load() for name in registry.names("analysis")]


def columns() -> dict[str, str]:
    """Columns of leaderboard.parquet: :data:`BASE_COLUMNS`, then each analysis's own (name -> Arrow type)."""
    out = dict(BASE_COLUMNS)
    for analysis in _analyses():
        out |= {name: kind for name, (kind, _) in analysis.board_columns.items() if name not in out}
    return out


def legend() -> str:
    """What each analysis's cells mean, beyond the common legend (one sentence per analysis that says more)."""
    return " ".join(analysis.board_legend for analysis in _analyses() if analysis.board_legend)


@dataclass
class Board:
    """A built leaderboard.

    Attributes
    ----------
    rows : list of dict
        One per (run, parcel), keys :func:`columns`, sorted by rank then parcel.
    runs : list of RunFolder
        The runs shown, in row order.
    notes : list of str
        One line each: folders left out and why, superseded runs, mixed dataset versions.
    options : dict
        The options the board was built with (stored in the outputs).
    cell_notes : dict
        (run id, parcel id) -> what a cell's analysis says about it (the HTML page shows it on hover).
    pairwise : list of dict
        Every pair of models of a group on each parcel shown: paired t-test across test runs
        (:func:`mtbench_plugins.commands.compare.board_stats.annotate`), Holm-corrected.
    """

    rows: list[dict]
    runs: list[RunFolder]
    notes: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    cell_notes: dict = field(default_factory=dict)
    pairwise: list = field(default_factory=list)


# --------------------------------------------------------------------------- collecting
def find_run_folders(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Candidate run folders under ``paths`` (a results folder, its ``runs/``, or one run).

    Returns
    -------
    folders : list of Path
        Sorted, without duplicates.
    notes : list of str
        Paths that hold no run, and interrupted runs (``*.partial``), one line each.
    """
    folders: set[Path] = set()
    notes = []
    for path in map(Path, paths):
        if not path.exists():
            notes.append(f"{path}: does not exist; pass a results folder (mtbench run --out) or a run folder")
        elif path.is_file():
            notes.append(f"{path}: is a file, not a results folder; pass the folder that holds runs/ "
                         f"(mtbench run --out) or a run folder")
        elif any((path / name).exists() for name in ("manifest.json", "summary.parquet", "maps")):
            folders.add(path.resolve())  # a run folder (validation says what is wrong with it, if anything)
        else:
            parent = path / "runs" if (path / "runs").is_dir() else path
            children = sorted(p for p in parent.iterdir() if p.is_dir())
            for child in children:
                if child.name.endswith(".partial") and (writer := partial_writer(child)):
                    notes.append(f"{child}: still being written ({writer}), skipped; build the board again later")
                elif child.name.endswith(".partial"):
                    notes.append(f"{child}: interrupted run (.partial), skipped; re-run it")
                else:
                    folders.add(child.resolve())
            if not children:
                notes.append(f"{path}: no runs found; pass a results folder written by `mtbench run --out`")
    return sorted(folders), notes


def load_runs(paths: list[Path], strict: bool = False) -> tuple[list[RunFolder], list[str]]:
    """Validate every run folder under ``paths``.

    Parameters
    ----------
    paths : list of Path
    strict : bool
        Raise on the first folder that fails, instead of leaving it out with a note.

    Returns
    -------
    runs : list of RunFolder
    notes : list of str
    """
    folders, notes = find_run_folders(paths)
    runs = []
    for folder in folders:
        try:
            runs.append(validate_run(folder))
        except MtbenchError as exc:
            if strict:
                raise
            notes.append(f"skipped {exc}")
    return runs, notes


def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()




def _protocol(manifest: dict) -> str:
    """The protocol a run followed (``mtbench`` for runs that predate the setting)."""
    return manifest["settings"].get("protocol") or "mtbench"


def _matches(value: str, wanted: str | None) -> bool:
    return wanted is None or value == wanted


def _items(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split(",")]


class _ParcelFilter:
    """Keep the whole brain and the parcels named in a ``--parcels`` list ("a,b,12": names in any case, or ids).

    Parcel names may contain commas ("Superior Temporal Gyrus, posterior division"): a name
    is kept when it appears as consecutive items of the list. The filter remembers which items
    matched some parcel, so that a misspelt name is reported rather than silently dropped.
    """

    def __init__(self, spec: str):
        self.spec = spec
        self.items = _items(spec)
        self.matched = [not item for item in self.items]  # "a,,b" or a trailing comma: nothing to match
        self.seen: set[str] = set()

    def __call__(self, row: dict) -> bool:
        self.seen.add(row["parcel"])
        if row["parcel_id"] == -1:
            return True
        name, n = _items(row["parcel"]), len(_items(row["parcel"]))
        spans = [range(i, i + n) for i in range(len(self.items) - n + 1) if self.items[i:i + n] == name]
        spans += [range(i, i + 1) for i, item in enumerate(self.items) if item == str(row["parcel_id"])]
        for span in spans:
            for i in span:
                self.matched[i] = True
        return bool(spans)

    def check(self) -> None:
        """Raise when an item of the list named no parcel of the runs on the board."""
        unknown = [item for item, hit in zip(self.items, self.matched) if not hit]
        if not unknown:
            return
        known = sorted(self.seen - {WHOLE_BRAIN})
        lowered = {k.lower(): k for k in known}
        # a part of a name ("heschl") is the usual slip; difflib alone scores it too low against a long name
        close = [k for k in known if unknown[0] in k.lower()]
        close += [lowered[c] for c in difflib.get_close_matches(unknown[0], list(lowered), n=3, cutoff=0.4)]
        close = list(dict.fromkeys(close))[:3]
        hint = (f"closest to {unknown[0]!r}: {'; '.join(repr(c) for c in close)}" if close
                else f"none is close to {unknown[0]!r}")
        raise MtbenchError(
            f"--parcels {self.spec!r}: no parcel is named or numbered {', '.join(repr(u) for u in unknown)} in these "
            f"runs ({hint}); a name is matched whole, in any case, and `mtbench leaderboard` without --parcels "
            f"lists all {len(known)}")


def _parcel_filter(spec: str | None) -> _ParcelFilter | None:
    """``None``/"all" -> keep all; otherwise a :class:`_ParcelFilter`."""
    if spec is None or spec.strip().lower() == "all":
        return None
    return _ParcelFilter(spec)


def build(
    paths: list[Path],
    dataset: str | None = None,
    subject: str = "average",
    parcels: str | None = None,
    metric: str = "raw",
    mode: str | None = None,
    strict: bool = False,
    report_link=None,
) -> Board:
    """Collect, validate, filter and rank runs.

    Parameters
    ----------
    paths : list of Path
        Results folders (``mtbench run --out``), ``runs/`` folders or run folders.
    dataset : str, optional
        Keep runs on this dataset (default: all).
    subject : str
        ``"average"`` (the group-average subject), ``"each"`` (one row per model and
        subject) or a subject name.
    parcels : str, optional
        ``"all"`` or a comma list of parcel names or ids (the whole brain is always kept).
    metric : {"raw", "normalized"}
        Raw held-out r, or r divided by the parcel's noise ceiling (missing without one).
    mode : str, optional
        Keep runs of this encoding mode ("1", "2"); default: all.
    strict : bool
        Fail on the first invalid run instead of leaving it out.
    report_link : callable, optional
        ``report_link(run_id) -> str``: relative link to the run's report page ("" for none).
    """
    if metric not in METRICS:
        raise MtbenchError(f"unknown leaderboard metric {metric!r}: use one of {', '.join(METRICS)}")
    runs, notes = load_runs(paths, strict=strict)
    if not runs:
        raise MtbenchError(f"no valid run found in {', '.join(map(str, paths))}; "
                           f"{notes[0] if notes else 'run `mtbench run` first'}")
    keep_parcel = _parcel_filter(parcels)
    runs, sweep_notes = _without_sweep_cells(runs)
    notes += sweep_notes
    if not runs:
        raise MtbenchError(f"nothing to rank in {', '.join(map(str, paths))}: {sweep_notes[-1]}")
    # newest run per (model, dataset, subject, mode, metric): by creation time, then run id (which
    # starts with the UTC time for `mtbench run`)
    latest: dict[tuple, RunFolder] = {}
    for run in sorted(runs, key=lambda r: (r.manifest.get("created") or "", r.manifest["run_id"], str(r.path))):
        m = run.manifest
        if not (_matches(m["dataset"]["name"], dataset) and _matches(run_mode(m), mode)):
            continue
        if subject not in ("each",) and m["settings"]["subject"] != subject:
            continue
        if (m.get("rescored_from") or {}).get("parcels"):  # models are compared on the dataset's own atlas
            notes.append(f"{m['run_id']}: rescored on other parcels ({m['rescored_from']['parcels']}), left out "
                         "(the leaderboard compares runs on their dataset's atlas)")
            continue
        key = (m["model"]["name"], m["dataset"]["name"], m["settings"]["subject"], run_mode(m), _protocol(m),
               m["settings"]["metric"])
        if key in latest:
            notes.append(f"{latest[key].manifest['run_id']}: superseded by the newer run {m['run_id']} of the "
                         f"same model, dataset, subject, mode and protocol (left out)")
        latest[key] = run
    if not latest:
        raise MtbenchError(f"no run matches --dataset {dataset or 'any'} --subject {subject} --mode {mode or 'any'} "
                           f"among {len(runs)} valid runs; check `mtbench leaderboard` without filters")
    rows = []
    for key, run in list(latest.items()):
        try:
            rows += _run_rows(run, keep_parcel, METRICS[metric],
                              report_link(run.manifest["run_id"]) if report_link else "")
        except MtbenchError as exc:  # a damaged value: the run is left out, never shown as "not measured"
            if strict:
                raise
            notes.append(f"skipped {exc}")
            del latest[key]
    if not latest:
        raise MtbenchError(f"no run left to rank in {', '.join(map(str, paths))}: {notes[-1]}")
    if keep_parcel is not None:
        keep_parcel.check()
    notes += _rank(rows)
    pairwise, more = board_stats.annotate(rows, {run.manifest["run_id"]: run.path for run in latest.values()})
    notes += more
    _rank_labels(rows, pairwise)
    rows.sort(key=lambda r: (r["dataset"], r["subject"], r["mode"], r["protocol"], r["metric"], r["rank"] is None, r["rank"] or 0,
                             r["model"], r["run_id"], r["parcel_id"]))
    order = list(dict.fromkeys(r["run_id"] for r in rows))
    by_id = {run.manifest["run_id"]: run for run in latest.values()}
    options = {"dataset": dataset, "subject": subject, "parcels": parcels or "all", "metric": metric, "mode": mode}
    cell_notes = {(row["run_id"], row["parcel_id"]): row.pop("note", "") or "" for row in rows}
    return Board(rows=rows, runs=[by_id[i] for i in order], notes=notes, options=options, cell_notes=cell_notes,
                 pairwise=pairwise)


def _without_sweep_cells(runs: list[RunFolder]) -> tuple[list[RunFolder], list[str]]:
    """Leave out the cells of sweeps: a cell fits one (layer, state), its sweep's combined run all of them.

    A cell compared on its own would stand for its model with whatever (layer, state) it
    happens to fit. Cells whose combination is not written yet (an unfinished sweep) are
    left out with a note saying how to finish it; a rescored cell (``mtbench rescore`` of one
    cell) with a note saying to rescore the combined run instead.
    """
    combined = {name for run in runs for name in run.manifest.get("combined_from") or []}
    kept = [run for run in runs if not run.manifest.get("sweep_cell") and run.manifest["run_id"] not in combined]
    left_out = [run.manifest for run in runs if run.manifest.get("sweep_cell") and run.manifest["run_id"] not in combined]
    rescored = [m["run_id"] for m in left_out if m.get("rescored_from")]
    waiting = [m["run_id"] for m in left_out if not m.get("rescored_from")]
    notes = []
    if len(kept) + len(left_out) < len(runs):
        notes.append(f"{len(runs) - len(kept) - len(left_out)} sweep cells are shown through the runs that combine "
                     "them")
    if waiting:
        notes.append(f"{len(waiting)} cells of sweeps not combined yet are left out (e.g. {waiting[0]}): run the "
                     "same `mtbench sweep` again to finish and combine them")
    if rescored:
        notes.append(f"{len(rescored)} rescored sweep cells are left out (e.g. {rescored[0]}): each fits one layer "
                     "and state; `mtbench rescore` the sweep's combined run (runs/*-combined-*) to rank the model "
                     "with another metric or parcels")
    return kept, notes


def _run_rows(run: RunFolder, keep_parcel, score_column: str, report: str) -> list[dict]:
    m = run.manifest
    analysis = get_registry().analysis(run.mode).load()
    absent = {name: default for other in _analyses() for name, (_, default) in other.board_columns.items()}
    rows = []
    cells = analysis.board_cells(run)
    damage = next((cell["damaged"] for cell in cells if cell.get("damaged")), "")
    if damage:
        raise MtbenchError(f"{run.path}/{damage}, a damaged value (a finished run has a number there), not an "
                           "unmeasured one; the run is left out of the board: re-run it (`mtbench run ...`)")
    for cell in cells:
        cell.pop("damaged", None)
        if keep_parcel is not None and not keep_parcel(cell):
            continue
        rows.append({
            "rank": 0, "rank_label": "", "model": m["model"]["name"], "family": m["model"]["family"],
            "n_params": m["model"].get("n_params"), "n_layers": m["model"].get("n_layers"),
            "dataset": m["dataset"]["name"], "dataset_version": m["dataset"]["version"],
            "atlas": m["dataset"].get("atlas") or "", "subject": m["settings"]["subject"], "mode": run.mode,
            "protocol": _protocol(m), "metric": m["settings"]["metric"], **absent, **cell,
            "score": cell[score_column], "run_id": m["run_id"], "leader_p": None, "vs_leader": None, "winner_p_best": None,
            # the 95% t interval of the raw nested score over test runs (Mode 1 summary); none for other metrics
            "ci_low": cell.get("test_ci_low") if score_column == "test" else None,
            "ci_high": cell.get("test_ci_high") if score_column == "test" else None,
            "model_revision": str(m["model"]["revision"]), "mtbench_version": m["mtbench_version"],
            "report": report,
        })
    return rows


def _rank(rows: list[dict]) -> list[str]:
    """Competition ranks ("1, 2, 2, 4") by whole-brain score within each (dataset, subject, mode, protocol, metric)."""
    notes = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["parcel_id"] == -1:
            groups.setdefault((row["dataset"], row["subject"], row["mode"], row["protocol"], row["metric"]),
                              []).append(row)
    rank_of = {}
    for key, brain in groups.items():
        brain.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["model"], r["run_id"]))
        previous, rank = object(), 0
        for position, row in enumerate(brain, start=1):
            if row["score"] != previous:
                rank, previous = position, row["score"]
            rank_of[row["run_id"]] = rank
        versions = sorted({r["dataset_version"] for r in brain})
        if len(versions) > 1:
            notes.append(f"{key[0]}: runs on {len(versions)} dataset versions ({', '.join(versions)}) are ranked "
                         f"together; their scores are only comparable on the same data")
    for row in rows:
        row["rank"] = rank_of.get(row["run_id"])  # unranked (null) if the run has no whole-brain row
    return notes


def _rank_labels(rows: list[dict], pairwise: list[dict]) -> None:
    """Set each row's ``rank_label``: ties decided by the paired test, in tiers.

    Within a (dataset, subject, mode, protocol, metric) group, the tested models (those in the
    whole-brain rows of ``pairwise``) in rank order: the first opens a tier, and every later model
    that its paired test against the tier's first one (Holm across those tests, as the leader's
    ``leader_p``) does not find significantly worse joins it. Every member shows the first one's
    rank with "=" ("1=", and "3=" for a second tier opened by the model ranked 3); a tier of one
    shows its rank alone. The best model left opens the next tier. Tiers are relative to their
    first model: a model may be in tier 2 and still not significantly below a tier-1 member.
    Models without a test (no per-fold scores) keep the score rank, "n=" for equal scores.
    """
    p_of = {}
    for r in pairwise:
        if r["parcel_id"] == -1:
            p_of[r["run_a"], r["run_b"]] = p_of[r["run_b"], r["run_a"]] = r["p_value"]
    tested = {run for pair in p_of for run in pair}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["parcel_id"] == -1 and row["rank"] is not None:
            groups.setdefault((row["dataset"], row["subject"], row["mode"], row["protocol"], row["metric"]),
                              []).append(row)
    label = {}
    for brain in groups.values():
        brain.sort(key=lambda r: (r["rank"], r["model"], r["run_id"]))
        ranks = [r["rank"] for r in brain]
        label |= {r["run_id"]: f"{r['rank']}=" if ranks.count(r["rank"]) > 1 else str(r["rank"]) for r in brain}
        left = [r for r in brain if r["run_id"] in tested]
        while left:
            top = left[0]
            tests = [(r, p_of[top["run_id"], r["run_id"]]) for r in left[1:] if (top["run_id"], r["run_id"]) in p_of]
            holm = holm_adjust(np.array([p for _, p in tests], dtype=np.float64))
            tier = [top] + [r for (r, _), p in zip(tests, holm) if board_stats.tied_with_leader(float(p))]
            label |= {r["run_id"]: f"{top['rank']}" + ("=" if len(tier) > 1 else "") for r in tier}
            left = [r for r in left if r not in tier]
    for row in rows:
        row["rank_label"] = label.get(row["run_id"], MISSING)


# --------------------------------------------------------------------------- wide view
def wide(board: Board) -> tuple[list[str], list[dict]]:
    """One entry per run (a model row) with its cells per parcel.

    Returns
    -------
    parcels : list of str
        Parcel columns in parcel-id order, the whole brain first.
    models : list of dict
        ``rank, rank_label, model, family, n_params, n_layers, dataset, subject, mode,
        metric, run_id, report, cells`` (parcel -> row of :func:`columns`), ``wins``
        (state -> number of parcels it wins), ``manifest``.
    """
    parcel_ids: dict[str, int] = {}
    models: dict[str, dict] = {}
    for row in board.rows:
        parcel_ids.setdefault(row["parcel"], row["parcel_id"])
        entry = models.setdefault(row["run_id"], {k: row[k] for k in (
            "rank", "rank_label", "model", "family", "n_params", "n_layers", "dataset", "subject", "mode", "protocol",
            "metric", "run_id", "report")} | {"cells": {}, "wins": {}})
        # the encoding mode, and the protocol when it is not the default (the reference's is another experiment)
        entry["mode_label"] = entry["mode"] + ("" if entry["protocol"] == "mtbench" else f" ({entry['protocol']})")
        entry["cells"][row["parcel"]] = row
        if row["parcel_id"] != -1:
            entry["wins"][row["state"]] = entry["wins"].get(row["state"], 0) + 1
    parcels = sorted(parcel_ids, key=lambda p: (parcel_ids[p], p))
    manifests = {run.manifest["run_id"]: run.manifest for run in board.runs}
    for entry in models.values():
        entry["vs_leader"] = leader_text(entry)
        entry["manifest"] = manifests[entry["run_id"]]
    return parcels, list(models.values())


def leader_text(entry: dict) -> str:
    """The rank decided by the test (:func:`mtbench_plugins.commands.compare.board_stats.leader_text`), or a dash."""
    return (entry["cells"].get(WHOLE_BRAIN) or {}).get("vs_leader") or MISSING


def wins_text(wins: dict[str, int]) -> str:
    """``{"a": 2, "b": 3}`` -> ``"b 3, a 2"`` (most parcels first, then by name)."""
    return ", ".join(f"{state} {n}" for state, n in sorted(wins.items(), key=lambda kv: (-kv[1], kv[0])))


def size_text(n_params) -> str:
    if n_params is None:
        return MISSING
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n_params >= scale:
            return f"{n_params / scale:.3g}{unit}"
    return str(n_params)


def score_text(value) -> str:
    return MISSING if value is None else f"{value:.3f}"


def interval_text(cell: dict) -> str:
    """`` [0.401, 0.423]`` (the cell's 95% interval), "" without one."""
    low, high = cell.get("ci_low"), cell.get("ci_high")
    return "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"


def cell_text(cell: dict | None) -> str:
    """``0.412 [0.401, 0.423] (L3 ffn_activated_state)``; a parcel the run did not score is a dash."""
    if cell is None:
        return MISSING
    support = cell.get("winner_p_best")
    stability = "" if support is None else f" P(best) {support:.2f}"
    return f"{score_text(cell['score'])}{interval_text(cell)} (L{cell['layer']} {cell['state']}){stability}"


# --------------------------------------------------------------------------- writers
def to_arrow(board: Board):
    """The board as a ``pyarrow.Table`` with the run manifests in its metadata (key ``mtbench``)."""
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns().items()])
    table = pa.Table.from_pylist(board.rows, schema=schema)
    meta = {"leaderboard_options": board.options, "runs": {r.manifest["run_id"]: r.manifest for r in board.runs}}
    return table.replace_schema_metadata({b"mtbench": json.dumps(meta, sort_keys=True).encode()})


def parquet_bytes(board: Board) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(to_arrow(board), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


PAIRWISE_COLUMNS = {"dataset": "string", "subject": "string", "mode": "string", "protocol": "string",
                    "metric": "string", "parcel_id": "int32", "parcel": "string", "model_a": "string",
                    "model_b": "string", "run_a": "string", "run_b": "string", "delta": "float64",
                    "ci_low": "float64", "ci_high": "float64", "p_value": "float64", "p_holm": "float64",
                    "n_runs": "int32"}


def pairwise_bytes(board: Board) -> bytes:
    """``pairwise.parquet``: :attr:`Board.pairwise` (columns :data:`PAIRWISE_COLUMNS`, maybe no row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PAIRWISE_COLUMNS.items()])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(board.pairwise, schema=schema), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _md(text: str) -> str:
    """A table cell or note as Markdown text: no raw HTML (``&``, ``<``, ``>`` escaped), no cell or line breaks."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.splitlines()).replace("|", "\\|")


def markdown(board: Board) -> str:
    """The board as a Markdown table, one row per model, a legend and the notes."""
    parcels, models = wide(board)
    score = "ceiling-normalized r" if board.options.get("metric") == "normalized" else "held-out r"
    head = ["rank", "model", "family", "params", "layers", "dataset", "subject", "mode", *parcels, "vs leader",
            "winning states"]
    lines = [
        "# mtbench leaderboard",
        "",
        f"Cells: {score} of the best (layer, state) chosen on validation (nested leave-one-run-out), "
        f"then that winner as (L<layer> <state>). {MISSING} = not measured (parcel not in the run, or no noise "
        f"ceiling). {STATS_LEGEND} Winning states: number of parcels each state wins. {legend()}",
        "",
        "| " + " | ".join(map(_md, head)) + " |",
        "|" + "|".join("---:" if h in ("rank", "params", "layers") else "---" for h in head) + "|",
    ]
    for m in models:
        cells = [m["rank_label"], m["model"], m["family"], size_text(m["n_params"]),
                 MISSING if m["n_layers"] is None else str(m["n_layers"]), m["dataset"], m["subject"], m["mode_label"],
                 *(cell_text(m["cells"].get(p)) for p in parcels), m["vs_leader"], wins_text(m["wins"]) or MISSING]
        lines.append("| " + " | ".join(map(_md, cells)) + " |")
    if board.pairwise:
        lines += ["", "Pairwise tests of the models: `pairwise.md` (whole brain and parcels, Holm-corrected)."]
    if board.notes:
        lines += ["", "Notes:", ""] + [f"- {_md(note)}" for note in board.notes]
    return "\n".join(lines) + "\n"


def pairwise_markdown(board: Board) -> str:
    """``pairwise.md``: every pair of models on the whole brain and each parcel shown."""
    lines = ["# mtbench leaderboard: pairwise differences of models", "",
             ("A - B: mean over test runs of the per-run difference of their cells' held-out r (each the nested "
              "choice of that fold), 95% paired t interval over the test runs, p, and p Holm-corrected across the "
              "pairs and parcels of a (dataset, subject, mode, protocol, metric) group. Runs without per-fold "
              "scores (folds.parquet) are not tested."), "", "| dataset | subject | parcel | A | B | A - B | 95% interval | p | p Holm |",
             "|---|---|---|---|---|---:|---|---:|---:|"]
    for r in board.pairwise:
        cells = [r["dataset"], r["subject"], r["parcel"], r["model_a"], r["model_b"], f"{r['delta']:+.4f}",
                 f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", f"{r['p_value']:.2g}", f"{r['p_holm']:.2g}"]
        lines.append("| " + " | ".join(map(_md, cells)) + " |")
    if not board.pairwise:
        lines.append("")
        lines.append("No pair to test: fewer than two models with per-fold scores on the same data.")
    return "\n".join(lines) + "\n"


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _attr(value) -> str:
    return html.escape(str(value), quote=True)


def html_page(board: Board) -> str:
    """A self-contained page (inline CSS and JS, no network): sortable, filterable, with provenance."""
    parcels, models = wide(board)
    e = html.escape
    head = ['<th data-type="number" data-first="asc">rank</th>', '<th data-type="text">model</th>', '<th data-type="text">family</th>',
            '<th data-type="number">params</th>', '<th data-type="number">layers</th>',
            '<th data-type="text">dataset</th>', '<th data-type="text">subject</th>', '<th data-type="text">mode</th>']
    head += [f'<th data-type="number" data-parcel="{_attr(p)}">{e(p)}</th>' for p in parcels]
    head += ['<th data-type="text">vs leader</th>', '<th data-type="text">winning states</th>',
             '<th data-type="text">provenance</th>']
    body = []
    for m in models:
        link = (f'<a href="{_attr(m["report"])}">{e(m["model"])}</a>' if m["report"] else e(m["model"]))
        cells = [
            f'<td data-value="{"" if m["rank"] is None else m["rank"]}">{e(m["rank_label"])}</td>',
            f'<td data-value="{_attr(m["model"])}" class="model">{link}</td>',
            f'<td data-value="{_attr(m["family"])}">{e(m["family"])}</td>',
            f'<td data-value="{"" if m["n_params"] is None else m["n_params"]}">{e(size_text(m["n_params"]))}</td>',
            f'<td data-value="{"" if m["n_layers"] is None else m["n_layers"]}">'
            f'{MISSING if m["n_layers"] is None else m["n_layers"]}</td>',
            f'<td data-value="{_attr(m["dataset"])}">{e(m["dataset"])}</td>',
            f'<td data-value="{_attr(m["subject"])}">{e(m["subject"])}</td>',
            f'<td data-value="{_attr(m["mode_label"])}">{e(m["mode_label"])}</td>',
        ]
        for p in parcels:
            cell = m["cells"].get(p)
            if cell is None or cell["score"] is None:
                cells.append(f'<td data-value="" data-parcel="{_attr(p)}" class="missing">{MISSING}</td>')
                continue
            note = board.cell_notes.get((m["run_id"], cell["parcel_id"]))
            note = f' title="{_attr(note)}"' if note else ""
            cells.append(f'<td data-value="{cell["score"]!r}" data-parcel="{_attr(p)}"{note}>'
                         f'{cell["score"]:.3f}<br><small>{e(interval_text(cell).strip())} L{cell["layer"]} '
                         f'{e(cell["state"])}{_support_html(cell)}</small></td>')
        cells.append(f'<td data-value="{_attr(m["vs_leader"])}">{e(m["vs_leader"])}</td>')
        cells.append(f'<td data-value="{_attr(wins_text(m["wins"]))}">{e(wins_text(m["wins"])) or MISSING}</td>')
        cells.append(f'<td data-value="{_attr(m["run_id"])}">{_provenance(m["manifest"])}</td>')
        body.append(f'<tr data-family="{_attr(m["family"])}" data-run="{_attr(m["run_id"])}">' + "".join(cells)
                    + "</tr>")
    families = sorted({m["family"] for m in models})
    score = "ceiling-normalized r" if board.options.get("metric") == "normalized" else "held-out r"
    replacements = {
        "CSS": _template("leaderboard.css"),
        "JS": _template("leaderboard.js"),
        "LEGEND": e(f"Cells: {score} of the best (layer, state) chosen on validation (nested leave-one-run-out), "
                    f"and that winner. {MISSING} = not measured (parcel not in the run, or no noise ceiling); "
                    f"{STATS_LEGEND} {legend()} Click a column header to sort, click again to reverse."),
        "OPTIONS": e(json.dumps(board.options, sort_keys=True)),
        "FAMILIES": "".join(f'<option value="{_attr(f)}">{e(f)}</option>' for f in families),
        "PARCELS": "".join(f'<option value="{_attr(p)}">{e(p)}</option>' for p in parcels),
        "HEAD": "".join(head),
        "BODY": "\n".join(body),
        "NOTES": "".join(f"<li>{e(n)}</li>" for n in board.notes),
    }
    page = _template("leaderboard.html")
    for key, value in replacements.items():
        page = page.replace("{{" + key + "}}", value)
    return page


def _support_html(cell: dict) -> str:
    support = cell.get("winner_p_best")
    return "" if support is None else f" P(best) {support:.2f}"


def _provenance(m: dict) -> str:
    e = html.escape
    facts = [("run", m["run_id"]), ("model spec", m["model"].get("spec", m["model"]["name"])),
             ("model revision", m["model"]["revision"]), ("dataset version", m["dataset"]["version"]),
             ("mtbench version", m["mtbench_version"]), ("git commit", m.get("git_commit") or MISSING),
             ("created", m.get("created", MISSING))]
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in facts)
    settings = e(json.dumps(m.get("settings", {}), indent=1, sort_keys=True))
    return (f'<details class="prov"><summary>{e(str(m["model"]["revision"])[:12])}</summary><dl>{items}</dl>'
            f"<pre>{settings}</pre></details>")


def terminal_table(board: Board):
    """A rich Table: rank, model, family, size, whole-brain score, the model's best parcel, winning states.

    Dataset, subject and mode get a column only when the board mixes several.
    """

    _, models = wide(board)
    score = "normalized r" if board.options.get("metric") == "normalized" else "r"
    varying = [key for key in ("dataset", "subject", "mode_label") if len({m[key] for m in models}) > 1]
    table = Table(title=f"mtbench leaderboard: {score} of the best layer x state chosen on validation")
    for col in ("rank", "model", "family", "params", *(k.removesuffix("_label") for k in varying), f"whole brain {score}", "best parcel",
                "vs leader", "winning states (parcels)"):
        table.add_column(col, justify="right" if col in ("rank", "params") else "left")
    for m in models:
        scored = [(c["score"], p) for p, c in m["cells"].items() if p != WHOLE_BRAIN and c["score"] is not None]
        best = min(scored, key=lambda sp: (-sp[0], sp[1]), default=None)
        table.add_row(m["rank_label"], m["model"], m["family"], size_text(m["n_params"]), *(m[k] for k in varying),
                      cell_text(m["cells"].get(WHOLE_BRAIN)),
                      f"{best[1]} {best[0]:.3f}" if best else MISSING, m["vs_leader"], wins_text(m["wins"]) or MISSING)
    return table


def write(board: Board, out: Path) -> dict[str, Path]:
    """Write ``leaderboard.parquet``, ``leaderboard.md`` and ``index.html`` into ``out`` (atomically each)."""
    out = writable_folder(out)
    files = {"parquet": out / "leaderboard.parquet", "markdown": out / "leaderboard.md", "html": out / "index.html",
             "pairwise": out / "pairwise.parquet", "pairwise_markdown": out / "pairwise.md"}
    atomic_write_bytes(files["parquet"], parquet_bytes(board))
    atomic_write_bytes(files["pairwise"], pairwise_bytes(board))
    atomic_write_bytes(files["pairwise_markdown"], pairwise_markdown(board).encode("utf-8"))
    atomic_write_bytes(files["markdown"], markdown(board).encode("utf-8"))
    atomic_write_bytes(files["html"], html_page(board).encode("utf-8"))
    return files
