"""Mode 2: several states of one block predict the brain together (pivot selection or banded ridge).

The analysis registered as ``--mode 2``: what the pipeline and the built-in commands call
(:class:`mtbench.api.Analysis`), written in terms of :mod:`.fit` (the two-stage fits, whose
docstring says how they follow the reference), :mod:`.tables` (what a run writes and reads back,
the nested layer choice) and :mod:`.present` (terminal, report, leaderboard).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from mtbench.errors import MtbenchError
from mtbench.registry import get_registry
from mtbench.runner import parse_states
from mtbench.settings import RunSettings

from . import present
from .fit import SELECTIONS, fit_mode2
from .tables import Mode2Tables, read_mode2_tables


def mode2_states(settings) -> list[str]:
    """States to extract for a Mode 2 run: the inputs, then the pivot when it is not one."""
    return list(dict.fromkeys([*settings.inputs, settings.pivot]))


class Mode2:
    """The ``--inputs`` states of each layer fitted together, per layer; the layer chosen per parcel, nested."""

    tag = "mode2"
    takes_states = False
    folds_optional = False  # mode2_folds.parquet is always written: runs always combine
    rescore = None  # another metric needs a new run (`mtbench run --mode 2 --metric ...`)
    board_legend = present.BOARD_LEGEND
    board_columns = present.BOARD_COLUMNS

    # ----------------------------------------------------------------- a run
    def check(self, settings: RunSettings) -> None:
        """One-line errors for a malformed Mode 2 request (before any heavy work)."""
        if settings.selection not in SELECTIONS:
            raise MtbenchError(f"unknown Mode 2 selection {settings.selection!r}: choose one of {', '.join(SELECTIONS)}")
        if not settings.inputs:
            raise MtbenchError("--mode 2 needs --inputs STATE[,STATE...] (the states to combine), e.g. "
                               "--inputs per_head_q_rope,attn_output,ffn_activated_state")
        if list(settings.states) != ["all"]:
            raise MtbenchError("--states is for mode 1; in --mode 2 name the combined states with --inputs")
        registry = get_registry()
        for name in [*settings.inputs, settings.pivot]:
            registry.state(name)  # unknown name -> error with the closest ones
        if len(set(settings.inputs)) != len(settings.inputs):
            raise MtbenchError(f"--inputs {','.join(settings.inputs)} names a state twice; list each state once")

    def states(self, settings: RunSettings, available=None) -> list[str]:
        """The inputs, then the pivot when it is not one, in that order (the order features are concatenated)."""
        names = mode2_states(settings)
        return names if available is None else [parse_states([name], list(available))[0] for name in names]

    def fit(self, inputs, settings: RunSettings, metric, *, progress=None, checkpoint=None, folds: bool = True):
        """Every requested layer; ``folds`` changes nothing (the per-fold table is always written)."""
        result = fit_mode2(inputs.scans.__getitem__, inputs.y_runs, inputs.layers, settings, inputs.dataset.parcels,
                           metric, progress)
        return result.tables(inputs.dataset.parcels.labels.size, inputs.ceiling)

    def print_summary(self, output, console) -> None:
        present.print_summary(output, console)

    # ----------------------------------------------------------------- finished runs
    def combine(self, runs, meta: dict) -> Mode2Tables:
        """Runs of different layers: tables concatenated, the nested layer choice made across all of them."""
        layers = [layer for run in runs for layer in run.manifest["settings"]["layers"]]
        twice = sorted(layer for layer, n in Counter(layers).items() if n > 1)
        if twice:
            raise MtbenchError(f"layer {twice[0]} is fitted by more than one of the Mode 2 runs; combine runs that fit "
                               "different layers")
        parts = []
        for run in runs:
            part = read_mode2_tables(run)
            if part.layers != run.manifest["settings"]["layers"] or {row["layer"] for row in part.folds} != set(
                    part.layers):
                raise MtbenchError(f"{run.path}: its tables are not those of the layers its manifest names; the run is "
                                   "corrupt, re-run it with `mtbench run`")
            parts.append(part)
        tables = Mode2Tables.concat(parts)
        meta["settings"]["layers"] = tables.layers
        return tables

    def board_cells(self, run) -> list[dict]:
        return present.board_cells(run)

    def figures(self, run):
        return present.figures(run)

    # ----------------------------------------------------------------- sweeps
    def sweep_cells(self, base: RunSettings, states, layers, options: dict) -> list[RunSettings]:
        """One cell per layer, fitting the plan's ``[mode2]`` inputs together."""
        return [replace(base, states=["all"], layers=[layer], **options) for layer in layers]

    def cell_label(self, settings: RunSettings) -> str:
        return f"mode2-{settings.selection}"

    def cost(self, settings: RunSettings) -> tuple[int, int]:
        """Its inputs side by side, fitted twice (two stages)."""
        return len(settings.inputs), 2
