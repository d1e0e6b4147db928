"""The built-in analyses, registered through the same entry-point group as any plugin: Mode 1 and Mode 2.

Registration is cheap: the entries are data; ``load`` imports the implementation.
"""

from __future__ import annotations

from mtbench.api import AnalysisEntry, AnalysisOption
from mtbench.hookspecs import hookimpl
from mtbench.schema import IDENTITY

# one row per parcel of a Mode 2 run: its settings and the parcel
_MODE2_PARCEL = IDENTITY | {"mode": "integer", "selection": "string", "pivot": "string", "inputs": "string",
                            "parcel_id": "integer", "parcel": "string", "n_voxels": "integer"}

#: Mode 1's part of the result schema (``mtbench.schema``).
MODE1_SCHEMA = {
    "manifest_keys": [],
    "files": [
        "maps/mask.nii.gz", "maps/best_test_r.nii.gz", "maps/best_layer.nii.gz", "maps/best_state.nii.gz",
        "maps/index.json",
    ],
    "parquet": {
        "summary.parquet": IDENTITY | {
            "parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "layer": "integer",
            "state": "string", "validation": "floating", "test": "floating", "winner_test": "floating",
            "folds_agree": "floating", "voxel_best_test": "floating", "ceiling": "floating",
            "test_normalized": "floating",
        },
        "scores.parquet": IDENTITY | {
            "layer": "integer", "state": "string", "parcel_id": "integer", "parcel": "string",
            "n_voxels": "integer", "split": "string", "value": "floating",
        },
        "winners.parquet": {
            "run_id": "string", "parcel_id": "integer", "parcel": "string", "layer": "integer",
            "state": "string", "n_won": "integer", "share": "floating",
        },
        "voxels.parquet": {
            "layer": "integer", "state": "string", "voxel": "integer", "parcel_id": "integer",
            "test": "floating", "validation": "floating", "alpha": "floating",
        },
    },
    # checked when present: runs written before mtbench kept per-fold scores lack it
    "optional_parquet": {
        "folds.parquet": {
            "layer": "integer", "state": "string", "fold": "integer", "voxel": "integer",
            "test": "floating", "validation": "floating", "alpha": "floating",
        },
    },
}

#: Mode 2's part of the result schema.
MODE2_SCHEMA = {
    "manifest_keys": ["settings.inputs", "settings.pivot", "settings.selection"],
    "files": ["maps/mask.nii.gz", "maps/mode2_stage1_test_r.nii.gz", "maps/mode2_stage2_test_r.nii.gz",
              "maps/index.json"],
    "parquet": {
        "mode2.parquet": _MODE2_PARCEL | {
            "layer": "integer", "n_features": "integer", "n_kept": "integer", "stage1_test": "floating",
            "stage2_test": "floating", "gain": "floating", "stage1_validation": "floating",
            "stage2_validation": "floating", "top_state": "string", "ceiling": "floating",
            "stage2_test_normalized": "floating",
        },
        "mode2_nested.parquet": _MODE2_PARCEL | {
            "layer": "integer",
            "folds_agree": "floating", "fold_layers": "string", "test": "floating",
            "stage1_test": "floating", "validation": "floating", "test_ci_low": "floating",
            "test_ci_high": "floating", "top_state": "string", "ceiling": "floating",
            "test_normalized": "floating",
        },
        "mode2_folds.parquet": IDENTITY | {
            "layer": "integer", "parcel_id": "integer", "parcel": "string", "n_voxels": "integer",
            "fold": "integer", "stage1_test": "floating", "stage2_test": "floating",
            "stage1_validation": "floating", "stage2_validation": "floating",
        },
        "mode2_states.parquet": IDENTITY | {
            "layer": "integer", "parcel_id": "integer", "parcel": "string", "state": "string",
            "dim": "integer", "kept": "floating", "kept_share": "floating", "kept_fraction": "floating",
            "importance_share": "floating", "contribution": "floating",
        },
        "mode2_voxels.parquet": {
            "layer": "integer", "parcel_id": "integer", "voxel": "integer", "stage1_test": "floating",
            "stage2_test": "floating", "stage1_validation": "floating", "stage2_validation": "floating",
        },
    },
}


def _load_mode1():
    from .mode1.analysis import (
        Mode1,  # numpy, pyarrow, nibabel: imported when a run needs them
    )

    return Mode1()


def _load_mode2():
    from .mode2.analysis import Mode2

    return Mode2()


@hookimpl
def register_analyses():
    return [
        AnalysisEntry(name="1", summary="each (layer, state) on its own; the best per voxel and parcel chosen on "
                                        "validation (nested)", load=_load_mode1, schema=MODE1_SCHEMA, default=True,
                      hint="choose states with --states"),
        AnalysisEntry(name="2", summary="the --inputs states of each layer together: MindTransformer's pivot "
                                        "selection or banded ridge; the layer chosen per parcel (nested)",
                      load=_load_mode2, schema=MODE2_SCHEMA, plan_table="mode2", options=(
                          AnalysisOption("inputs", "Mode 2: comma list of states combined per layer."),
                          AnalysisOption("pivot", "Mode 2 pivot: stage 2 keeps as many features as this state has "
                                                  "dimensions."),
                          AnalysisOption("selection", "Mode 2: pivot (MindTransformer's two-stage selection) or banded "
                                                      "(himalaya banded ridge).", choices=("pivot", "banded")),
                      )),
    ]
