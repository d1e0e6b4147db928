"""Mode 1: every (layer, state) fitted on its own, the best one per voxel and parcel chosen on validation.

The analysis registered as ``--mode 1`` (the default): what the pipeline and the built-in
commands call (:class:`mtbench.api.Analysis`), written in terms of :mod:`.fit` (the fits),
:mod:`.tables` (what a run writes and reads back) and :mod:`.present` (terminal, report,
leaderboard).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np

from mtbench.errors import MtbenchError
from mtbench.registry import get_registry, load_dataset
from mtbench.runner import parse_states
from mtbench.settings import RunSettings
from mtbench.significance import check_permutations

from . import present
from .fit import CALIBRATION_VOXELS, SIGNIFICANCE_METHOD, fit_all, fit_targets
from .rescore import refit_scores
from .tables import ScoreTable, read_score_table, summarize, write_files

# the per-fit arrays of a ScoreTable (keys aside), combined row by row
ARRAYS = ("test", "validation", "alpha", "test_per_run", "validation_per_run", "p_value", "alpha_per_run")


@dataclass
class Mode1Result:
    """A Mode 1 run to write: its scores, the parcels they are summarized on, and the summary.

    Attributes
    ----------
    table : ScoreTable
    labels : ndarray of int, shape (n_voxels,)
    names : dict of int to str
    ceiling : ndarray, shape (n_voxels,), or None
    fdr : float
    manifest : dict
        Keys it adds to the manifest: ``folds_file``, and ``significance`` (per fit, how much
        cross-fitting widened its null) when p-values were computed.
    """

    table: ScoreTable
    labels: np.ndarray
    names: dict
    ceiling: np.ndarray | None
    fdr: float
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = summarize(self.table, self.labels, self.names, self.ceiling, fdr=self.fdr)

    def truth_check(self, truth: dict | None) -> list[dict]:
        """Each planted (parcel, layer, state) against the winner found in that parcel."""
        return check_truth(truth, self.summary)

    def write_files(self, folder, meta: dict, mask_img, truth: dict | None) -> None:
        write_files(folder, meta, self.table, mask_img, self.labels, self.names, self.ceiling, truth)


def check_truth(truth: dict | None, summary: list[dict]) -> list[dict]:
    """Compare each planted (parcel, layer, state) with the winner found in that parcel."""
    if not truth:
        return []
    by_parcel = {row["parcel"]: row for row in summary}
    checks = []
    for plant in truth.get("planted", []):
        row = by_parcel.get(plant["parcel"])
        if row is None:
            continue
        checks.append({
            "parcel": plant["parcel"],
            "planted": f"L{plant['layer']} {plant['state']}",
            "found": f"L{row['layer']} {row['state']}",
            "test": row["test"],
            "recovered": row["layer"] == plant["layer"] and row["state"] == plant["state"],
        })
    return checks


class Mode1:
    """Each (layer, state) on its own: nested leave-one-run-out ridge, significance, best per parcel."""

    tag = ""
    takes_states = True
    folds_optional = True
    board_legend = ""
    board_columns: dict = {}

    # ----------------------------------------------------------------- a run
    def check(self, settings: RunSettings) -> None:
        """The significance test's null draws fit in memory (not killed after the extraction)."""
        if settings.permutations:
            check_permutations(settings.permutations)

    def states(self, settings: RunSettings, available=None) -> list[str]:
        """``settings.states`` (``all``: every state the model has) in the canonical order."""
        return list(settings.states) if available is None else parse_states(settings.states, list(available))

    def fit(self, inputs, settings: RunSettings, metric, *, progress=None, checkpoint=None, folds: bool = True):
        """Every (layer, state) of ``inputs``; finished fits are checkpointed, so the same command resumes."""
        keys = [(layer, state) for layer in inputs.layers for state in inputs.states]
        kept = checkpoint({"significance": [SIGNIFICANCE_METHOD, CALIBRATION_VOXELS]}) if checkpoint else None
        targets, n_calibration = fit_targets(inputs.y_runs, settings)
        inputs.y_runs = None  # the targets hold the BOLD now (after the null columns): one copy in memory
        with kept if kept is not None else nullcontext():  # in use while fitting: no other run removes it
            table = ScoreTable(keys=keys, **fit_all(keys, inputs.scans, targets, n_calibration, settings, metric,
                                                    progress, kept))
        manifest = {"folds_file": bool(folds)}
        if table.null_inflation is not None:  # per fit: how much cross-fitting widened its null
            manifest["significance"] = {"null_inflation": {f"L{layer}-{state}": round(float(value), 4)
                                                           for (layer, state), value in zip(keys, table.null_inflation)}}
        parcels = inputs.dataset.parcels
        return Mode1Result(table, parcels.labels, parcels.names, inputs.ceiling, settings.fdr, manifest)

    def print_summary(self, output, console) -> None:
        present.print_summary(output, console)

    # ----------------------------------------------------------------- finished runs
    def combine(self, runs, meta: dict) -> Mode1Result:
        """Runs of different (layer, state)s as the one run that fitted them all, from their ``folds.parquet``."""
        fitted = [[(layer, state) for layer in run.manifest["settings"]["layers"]
                   for state in run.manifest["settings"]["states"]] for run in runs]  # each run's order of fits
        keys = [key for run_keys in fitted for key in run_keys]
        twice = sorted(key for key, n in Counter(keys).items() if n > 1)
        if twice:
            raise MtbenchError(f"layer {twice[0][0]} {twice[0][1]} is fitted by more than one of the runs; combine "
                               "runs that fit different (layer, state)s")
        # the order of `mtbench run`: layer by layer, states in their canonical order (ties go to the first)
        canonical = get_registry().names("state")
        keys.sort(key=lambda k: (k[0], canonical.index(k[1]) if k[1] in canonical else len(canonical), k[1]))
        row = {key: i for i, key in enumerate(keys)}
        table = None
        for run, run_keys in zip(runs, fitted):  # one run's scores in memory at a time, besides the result
            part = read_score_table(run.path)
            if part.keys != run_keys:
                raise MtbenchError(f"{run.path}: its scores are not those of the fits its manifest names; the run is "
                                   "corrupt, re-run it with `mtbench run`")
            if table is None:
                table = _empty_like(part, keys)
            rows = [row[key] for key in run_keys]
            for name in ARRAYS:
                value = getattr(part, name)
                if value is None:
                    setattr(table, name, None)
                elif getattr(table, name) is not None:
                    getattr(table, name)[rows] = value
        settings = RunSettings.from_record(meta["settings"])
        dataset = load_dataset(settings.dataset, **settings.dataset_options)
        meta["settings"]["layers"] = sorted({layer for layer, _ in table.keys})
        meta["settings"]["states"] = list(dict.fromkeys(state for _, state in table.keys))
        manifest = {"folds_file": True}
        inflation = {k: v for run in runs for k, v in (run.manifest.get("significance") or {})
                     .get("null_inflation", {}).items()}
        if inflation:
            manifest["significance"] = {"null_inflation": inflation}
        return Mode1Result(table, dataset.parcels.labels, dataset.parcels.names,
                           dataset.noise_ceiling(settings.subject), settings.fdr, manifest)

    def rescore(self, run, settings: RunSettings, metric, dataset, parcels, progress=None) -> Mode1Result:
        """Another metric (each outer fold refitted once with the run's alphas) and/or other parcels (no fit)."""
        table = read_score_table(run.path)
        if metric.name != settings.metric:
            refit_scores(self, table, settings, metric, dataset, run.manifest, progress)
        parcels = parcels if parcels is not None else dataset.parcels
        return Mode1Result(table, parcels.labels, parcels.names, dataset.noise_ceiling(settings.subject), settings.fdr)

    def board_cells(self, run) -> list[dict]:
        return present.board_cells(run)

    def figures(self, run):
        return present.figures(run)

    # ----------------------------------------------------------------- sweeps
    def sweep_cells(self, base: RunSettings, states, layers, options: dict) -> list[RunSettings]:
        """One cell per (layer, state)."""
        return [replace(base, states=[state], layers=[layer], **options) for layer in layers for state in states]

    def cell_label(self, settings: RunSettings) -> str:
        return settings.states[0]

    def cost(self, settings: RunSettings) -> tuple[int, int]:
        return 1, 1


def _empty_like(part: ScoreTable, keys: list[tuple[int, str]]) -> ScoreTable:
    """A :class:`ScoreTable` of ``len(keys)`` fits shaped like ``part``, to be filled."""
    arrays = {name: None if getattr(part, name) is None else
              np.empty((len(keys), *getattr(part, name).shape[1:]), dtype=getattr(part, name).dtype)
              for name in ARRAYS}
    return ScoreTable(keys=list(keys), **arrays)
