"""The built-in analyses, registered through the same entry-point group as any plugin: Mode 1, Mode 2,
variance partitioning (``partition``), width-matched Mode 1 (``widths``) and per-head maps (``heads``).

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


# the columns naming a partition fit: the state, its block, and its reference
_PARTITION_FIT = {"layer": "integer", "state": "string", "reference_layer": "integer", "reference": "string"}
_PARTITION_SCORES = {f"{kind}_{model}": "floating" for kind in ("ev", "r2") for model in ("reference", "state", "joint")}
_PARTS = {"unique_state": "floating", "unique_reference": "floating", "shared": "floating"}

#: Variance partitioning's part of the result schema.
PARTITION_SCHEMA = {
    "manifest_keys": ["partition.estimate"],
    "files": ["maps/mask.nii.gz", "maps/index.json", "maps/partition_unique_state.nii.gz",
              "maps/partition_unique_reference.nii.gz", "maps/partition_shared.nii.gz"],
    "parquet": {
        "partition.parquet": IDENTITY | _PARTITION_FIT | {
            "parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "ev_reference": "floating",
            "ev_state": "floating", "ev_joint": "floating", "unique_state_ci_low": "floating",
            "unique_state_ci_high": "floating", "r2_unique_state": "floating", "r2_unique_reference": "floating",
            "r2_shared": "floating"} | _PARTS,
        "partition_summary.parquet": IDENTITY | _PARTITION_FIT | {
            "parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "unique_state_all": "floating",
            "ev_state": "floating", "ev_reference": "floating", "ev_joint": "floating",
            "folds_agree": "floating"} | _PARTS,
        "partition_voxels.parquet": _PARTITION_FIT | {"voxel": "integer", "parcel_id": "integer"} | _PARTITION_SCORES
                                    | _PARTS,
        "partition_folds.parquet": _PARTITION_FIT | {"fold": "integer", "voxel": "integer"} | _PARTITION_SCORES,
    },
}


_WIDTHS_KIND = {f"{score}_{kind}": "floating" for score in ("test", "validation") for kind in ("unmatched", "matched")}

#: Width-matched Mode 1's part of the result schema.
WIDTHS_SCHEMA = {
    "manifest_keys": ["widths.width", "widths.reduction"],
    "files": ["maps/mask.nii.gz", "maps/index.json", "maps/widths_unmatched_test_r.nii.gz",
              "maps/widths_matched_test_r.nii.gz"],
    "parquet": {
        "widths.parquet": IDENTITY | {"layer": "integer", "state": "string", "dim": "integer", "width": "integer",
                                      "parcel_id": "integer", "parcel": "string", "n_voxels": "integer"}
                          | _WIDTHS_KIND,
        "widths_summary.parquet": IDENTITY | {
            "parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "layer": "integer", "state": "string",
            "test": "floating", "validation": "floating", "folds_agree": "floating", "matched_layer": "integer",
            "matched_state": "string", "matched_test": "floating", "matched_validation": "floating",
            "matched_folds_agree": "floating", "by": "string"},
        "widths_folds.parquet": {"layer": "integer", "state": "string", "fold": "integer", "voxel": "integer"} | {
            f"{score}_{kind}": "floating" for score in ("test", "validation", "alpha")
            for kind in ("unmatched", "matched")},
    },
}


_HEAD_FIT = {"layer": "integer", "state": "string", "head": "integer"}

#: Head-resolved maps' part of the result schema.
HEADS_SCHEMA = {
    "manifest_keys": ["heads.n_heads"],
    "files": ["maps/mask.nii.gz", "maps/index.json", "maps/best_head.nii.gz", "maps/best_head_test_r.nii.gz"],
    "parquet": {
        "heads.parquet": IDENTITY | _HEAD_FIT | {"n_heads": "integer", "parcel_id": "integer", "parcel": "string",
                                                 "n_voxels": "integer", "test": "floating", "validation": "floating"},
        "heads_summary.parquet": IDENTITY | _HEAD_FIT | {
            "parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "n_heads": "integer",
            "test": "floating", "validation": "floating", "folds_agree": "floating", "voxel_best_test": "floating",
            "test_ci_low": "floating", "test_ci_high": "floating"},
        "heads_folds.parquet": _HEAD_FIT | {"fold": "integer", "voxel": "integer", "test": "floating",
                                            "validation": "floating", "alpha": "floating"},
    },
}


def _load_heads():
    from .heads.analysis import Heads

    return Heads()


def _load_widths():
    from .widths.analysis import Widths

    return Widths()


def _load_partition():
    from .partition.analysis import Partition

    return Partition()


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
        AnalysisEntry(name="partition", summary="variance partitioning of each (layer, state) against a reference "
                                                "state: unique, shared (held-out, banded ridge)",
                      load=_load_partition, schema=PARTITION_SCHEMA, plan_table="partition",
                      hint="choose states with --states and the reference with --reference", options=(
                          AnalysisOption("reference", "partition: the reference state R each state is compared with."),
                          AnalysisOption("reference_layer", "partition: the block of the reference (0: each state's "
                                                            "own)."),
                      )),
        AnalysisEntry(name="widths", summary="Mode 1 as it is and with every state reduced to one width (PCA on the "
                                             "training runs, or random projection): content or width?",
                      load=_load_widths, schema=WIDTHS_SCHEMA, plan_table="widths", hint="choose states with --states",
                      options=(
                          AnalysisOption("width", "widths: the common width (0: the narrowest state's)."),
                          AnalysisOption("reduction", "widths: pca (fitted on each outer fold's training runs) or "
                                                      "random (a Gaussian projection).", choices=("pca", "random")),
                      )),
        AnalysisEntry(name="heads", summary="one fit per attention head of the per-head states (GQA-aware); the "
                                            "best (layer, state, head) per voxel and parcel (nested)",
                      load=_load_heads, schema=HEADS_SCHEMA, hint="choose per-head states with --states"),
    ]
