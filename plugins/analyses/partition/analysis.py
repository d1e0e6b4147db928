"""Variance partitioning (``--mode partition``): what a state adds beyond a reference state.

For every (layer, state) S of the run and its reference R (``--reference``, default
``input_hidden_state``, of the same block unless ``--reference-layer`` names one), per voxel
and parcel: the held-out variance explained by R alone, S alone and both jointly (banded
ridge, one penalty per state), and from them the unique part of S, the unique part of R and
their shared part (:mod:`.fit` says which estimate and why). Several states at once are
partitioned each against the same R (pairwise, not a decomposition among the states:
``docs/analyses.md``). The R-alone fit of a block is fitted once and serves every state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
from rich.table import Table

from mtbench.display import print_truth_check
from mtbench.errors import MtbenchError
from mtbench.features import ScanFeatures, word_features
from mtbench.registry import get_registry, load_dataset
from mtbench.results import WHOLE_BRAIN
from mtbench.runner import parse_states, scan_features
from mtbench.settings import RunSettings

from ..figures import partition_bars, score_map
from .fit import MODELS, banded_grid, single_space
from .tables import (
    ESTIMATE,
    MAPS,
    SCORES,
    PartitionResult,
    PartitionTable,
    read_rows,
    read_table,
)


def reference_scans(inputs, settings: RunSettings, key: tuple[int, str]) -> list[np.ndarray]:
    """TR-level features of ``key`` (layer, state), also when the run did not extract it (another block).

    Read from (or written to) the same feature caches as the run's own (one extraction serves all).
    """
    if key in inputs.scans:
        return inputs.scans[key]
    from mtbench.alignment import alignment_fingerprint, stimulus_operators

    stimulus = inputs.dataset.stimulus
    words = word_features(inputs.adapter, stimulus, [key[1]], [key[0]], dtype=settings.feature_dtype)
    operators = stimulus_operators(stimulus, settings.hrf, settings.delays)
    scans = ScanFeatures(words, lambda w: scan_features(w, operators, settings),
                         alignment_fingerprint(operators, settings.trim_scans),
                         [op.shape[-2] - 2 * max(settings.trim_scans, 0) for op in operators])
    return scans[key]


class Partition:
    """Variance partitioning of each (layer, state) against a reference state: see the module docstring."""

    tag = "partition"
    takes_states = True
    folds_optional = False
    rescore = None
    board_legend = ("partition rows: per parcel the state adding most beyond its reference (unique(S), signed "
                    "squared held-out r, chosen inside each outer fold); validation: its mean over all runs.")
    board_columns: dict = {}

    # ----------------------------------------------------------------- a run
    def check(self, settings: RunSettings) -> None:
        """The reference is a state (the registry names the closest one otherwise)."""
        get_registry().state(settings.reference)
        if settings.reference_layer == 0 and list(settings.states) == [settings.reference]:
            raise MtbenchError(f"--states {settings.reference} is the reference itself: give other states with "
                               "--states, or another --reference / --reference-layer")

    def states(self, settings: RunSettings, available=None) -> list[str]:
        """The states partitioned and, when it is of the same block, the reference (canonical order)."""
        names = list(settings.states)
        if settings.reference_layer == 0 and names != ["all"]:
            names = [*names, settings.reference]
        if available is None:
            return list(dict.fromkeys(names))
        states = parse_states(names, list(available))
        if settings.reference not in available:
            raise MtbenchError(f"reference state {settings.reference!r} does not exist in this model; available: "
                               f"{', '.join(available)} (--reference)")
        return states

    def fits(self, inputs, settings: RunSettings) -> list[tuple]:
        """``(layer, state, reference_layer, reference)`` of every partition of the run, in order."""
        n_layers = getattr(inputs.adapter, "n_layers", None)
        if settings.reference_layer and n_layers is not None and settings.reference_layer > n_layers:
            raise MtbenchError(f"--reference-layer {settings.reference_layer} is out of range: this model has "
                               f"blocks 1..{n_layers}")
        requested = settings.states if settings.states != ["all"] else inputs.states
        keys = []
        for layer in inputs.layers:
            ref_layer = settings.reference_layer or layer
            keys += [(layer, s, ref_layer, settings.reference) for s in inputs.states
                     if s in requested and (layer, s) != (ref_layer, settings.reference)]
        if not keys:
            raise MtbenchError("nothing to partition: every state given is the reference; give others with --states")
        return keys

    def fit(self, inputs, settings: RunSettings, metric, *, progress=None, checkpoint=None, folds: bool = True):
        """Per fit: R alone (once per reference), S alone, R and S jointly (banded); every test run scored."""
        keys = self.fits(inputs, settings)
        y_runs = inputs.y_runs
        options = dict(backend=settings.backend, precision=settings.precision, shared_alpha=settings.shared_alpha,
                       inner=settings.inner)
        task = progress.add_task("partition (3 nested fits each)", total=len(keys)) if progress is not None else None
        scores = {name: np.zeros((len(keys), len(y_runs), y_runs[0].shape[1]), np.float32) for name in SCORES}
        alone: dict = {}  # the reference-alone fit of each reference, shared by every state partitioned against it
        for f, (layer, state, ref_layer, ref) in enumerate(keys):
            if (ref_layer, ref) not in alone:
                r_runs = reference_scans(inputs, settings, (ref_layer, ref))
                alone = {(ref_layer, ref): (r_runs, single_space(r_runs, y_runs, settings.alphas, **options))}
            r_runs = alone[(ref_layer, ref)][0]
            s_runs = inputs.scans.pop((layer, state))
            fitted = {"reference": alone[(ref_layer, ref)][1], "state": single_space(s_runs, y_runs, settings.alphas,
                                                                                  **options),
                      "joint": banded_grid([r_runs, s_runs], y_runs, settings.alphas, **options)}
            for model in MODELS:
                scores[f"ev_{model}"][f], scores[f"r2_{model}"][f] = fitted[model].ev, fitted[model].r2
            if task is not None:
                progress.update(task, advance=1, description=f"partition L{layer} {state} vs L{ref_layer} {ref}")
        parcels = inputs.dataset.parcels
        return PartitionResult(PartitionTable(keys, scores), parcels.labels, parcels.names, {"partition": ESTIMATE})

    def print_summary(self, output, console) -> None:
        rows = output.summary
        table = Table(title="What each state adds beyond its reference (variance partitioning, held-out)",
                      caption="unique = joint - other alone; shared = S + R - joint; signed squared held-out r; "
                              "unique(S) test: the state chosen inside each outer fold")
        for column in ("parcel", "layer", "state", "reference", "R alone", "S alone", "joint", "unique(S)",
                       "unique(R)", "shared"):
            table.add_column(column, justify="left" if column in ("parcel", "state", "reference") else "right")
        for row in [rows[0], *sorted(rows[1:], key=lambda r: -r["unique_state"])[:15]]:
            table.add_row(row["parcel"], str(row["layer"]), row["state"], f"L{row['reference_layer']} {row['reference']}",
                          *(f"{row[k]:.4f}" for k in ("ev_reference", "ev_state", "ev_joint", "unique_state",
                                                       "unique_reference", "shared")))
        console.print(table)
        print_truth_check(output, "Planted truth: the state adding most in its parcel?", "unique(S)", out=console)

    # ----------------------------------------------------------------- finished runs
    def combine(self, runs, meta: dict) -> PartitionResult:
        """Runs of different fits as the one run that fitted them all (from ``partition_folds.parquet``)."""
        tables = [read_table(run.path) for run in runs]
        keys = [key for t in tables for key in t.keys]
        twice = [key for key, n in Counter(keys).items() if n > 1]
        if twice:
            raise MtbenchError(f"L{twice[0][0]} {twice[0][1]} vs L{twice[0][2]} {twice[0][3]} is in more than one of "
                               "the runs; combine runs of different (layer, state)s")
        order = get_registry().names("state")
        rank = sorted(range(len(keys)), key=lambda i: (keys[i][0], order.index(keys[i][1]) if keys[i][1] in order
                                                       else len(order), keys[i][1], keys[i][2], keys[i][3]))
        scores = {name: np.concatenate([t.scores[name] for t in tables])[rank] for name in SCORES}
        keys = [keys[i] for i in rank]
        meta["settings"]["layers"] = sorted({k[0] for k in keys})
        meta["settings"]["states"] = list(dict.fromkeys(k[1] for k in keys))
        settings = RunSettings.from_record(meta["settings"])
        dataset = load_dataset(settings.dataset, **settings.dataset_options)
        return PartitionResult(PartitionTable(keys, scores), dataset.parcels.labels, dataset.parcels.names,
                               {"partition": runs[0].manifest["partition"]})

    def board_cells(self, run) -> list[dict]:
        return [{"parcel_id": r["parcel_id"], "parcel": r["parcel"], "n_voxels": r["n_voxels"], "layer": r["layer"],
                 "state": r["state"], "test": r["unique_state"], "test_normalized": None, "ceiling": None,
                 "validation": r["unique_state_all"], "folds_agree": r["folds_agree"], "voxel_best_test": None,
                 "top_state": r["state"], "top_state_share": None, "tied_states": "",
                 "note": f"vs L{r['reference_layer']} {r['reference']}: unique(R) {r['unique_reference']:.4f}, "
                         f"shared {r['shared']:.4f}"}
                for r in read_rows(run.path / "partition_summary.parquet")]

    def figures(self, run):
        summary = read_rows(run.path / "partition_summary.parquet")
        rows = read_rows(run.path / "partition.parquet")
        brain = summary[0]
        best = [r for r in rows if (r["layer"], r["state"]) == (brain["layer"], brain["state"])]
        parcels = [WHOLE_BRAIN, *[r["parcel"] for r in sorted(summary[1:], key=lambda r: -r["unique_state"])][:20]]
        fits = list(dict.fromkeys((r["layer"], r["state"]) for r in rows))
        volume = fits.index((brain["layer"], brain["state"]))
        title = f"L{brain['layer']} {brain['state']} vs L{brain['reference_layer']} {brain['reference']}"
        return [
            ("partition_bars.png", f"Variance partitioning per parcel: {title}",
             partition_bars(best, parcels, title=f"Variance partitioning: {title}")),
            ("partition_unique_state_map.png", f"Unique variance of {title}, MNI152",
             score_map(run.path, MAPS["unique_state"], volume=volume, title=f"Unique variance of {title}",
                       label="unique(S): signed squared held-out r")),
        ]

    # ----------------------------------------------------------------- sweeps
    def sweep_cells(self, base: RunSettings, states, layers, options: dict) -> list[RunSettings]:
        """One cell per (layer, state); each refits its reference alone (a third of its cost)."""
        return [replace(base, states=[state], layers=[layer], **options) for layer in layers for state in states
                if not (state == (options.get("reference") or base.reference)
                        and not (options.get("reference_layer") or base.reference_layer))]

    def cell_label(self, settings: RunSettings) -> str:
        return f"partition-{settings.states[0]}"

    def cost(self, settings: RunSettings) -> tuple[int, int]:
        return 2, 3  # the joint fit is twice as wide; three fits
