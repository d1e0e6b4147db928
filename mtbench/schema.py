"""The result schema of a run folder, as data, and the check of a folder against it.

:data:`RESULT_SCHEMA` lists the files every run has, the manifest keys readers rely on,
and the columns (with their kind of type) of every Parquet file, per encoding mode (a
Mode 1 run writes ``summary.parquet`` and friends, a Mode 2 run ``mode2.parquet`` and
friends instead: :mod:`mtbench.mode2`). Readers accept extra files and extra columns;
they refuse a folder that lacks something listed for its mode, with one line naming
what is missing and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MtbenchError, first_line

#: What a run folder must hold: keys shared by every mode, then per mode (``settings.mode``
#: of the manifest, 1 when absent) the extra manifest keys, files and Parquet columns.
#: Column kinds: "integer", "floating" (float or double), "string" (also dictionary-encoded
#: or large strings).
_IDENTITY = {"run_id": "string", "model": "string", "dataset": "string", "subject": "string", "metric": "string"}
# one row per parcel of a Mode 2 run: its settings and the parcel
_MODE2_PARCEL = _IDENTITY | {"mode": "integer", "selection": "string", "pivot": "string", "inputs": "string",
                             "parcel_id": "integer", "parcel": "string", "n_voxels": "integer"}
RESULT_SCHEMA: dict = {
    "schema_version": "1",
    "oldest_readable_version": "1",
    "manifest": "manifest.json",
    "manifest_keys": [
        "schema_version", "run_id", "mtbench_version",
        "model.name", "model.family", "model.revision",
        "dataset.name", "dataset.version",
        "settings.subject", "settings.metric",
    ],
    "modes": {
        "1": {
            "manifest_keys": [],
            "files": [
                "maps/mask.nii.gz", "maps/best_test_r.nii.gz", "maps/best_layer.nii.gz", "maps/best_state.nii.gz",
                "maps/index.json",
            ],
            "parquet": {
                "summary.parquet": _IDENTITY | {
                    "parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "layer": "integer",
                    "state": "string", "validation": "floating", "test": "floating", "winner_test": "floating",
                    "folds_agree": "floating", "voxel_best_test": "floating", "ceiling": "floating",
                    "test_normalized": "floating",
                },
                "scores.parquet": _IDENTITY | {
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
        },
        "2": {
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
                "mode2_folds.parquet": _IDENTITY | {
                    "layer": "integer", "parcel_id": "integer", "parcel": "string", "n_voxels": "integer",
                    "fold": "integer", "stage1_test": "floating", "stage2_test": "floating",
                    "stage1_validation": "floating", "stage2_validation": "floating",
                },
                "mode2_states.parquet": _IDENTITY | {
                    "layer": "integer", "parcel_id": "integer", "parcel": "string", "state": "string",
                    "dim": "integer", "kept": "floating", "kept_share": "floating", "kept_fraction": "floating",
                    "importance_share": "floating", "contribution": "floating",
                },
                "mode2_voxels.parquet": {
                    "layer": "integer", "parcel_id": "integer", "voxel": "integer", "stage1_test": "floating",
                    "stage2_test": "floating", "stage1_validation": "floating", "stage2_validation": "floating",
                },
            },
        },
    },
    # Key of the Parquet schema metadata that holds the run's manifest.
    "parquet_metadata_key": "mtbench",
}


@dataclass
class RunFolder:
    """A run folder that passed :func:`validate_run`.

    Attributes
    ----------
    path : Path
    manifest : dict
        The parsed ``manifest.json``.
    mode : str
        The encoding mode whose files the folder holds (a key of ``RESULT_SCHEMA["modes"]``).
    """

    path: Path
    manifest: dict
    mode: str = "1"


def run_mode(manifest: dict) -> str:
    """The encoding mode of a run: ``settings.mode`` of its manifest, "1" when absent."""
    settings = manifest.get("settings")
    mode = settings.get("mode") if isinstance(settings, dict) else None
    return str(mode if mode is not None else manifest.get("mode") or 1)


def _version_number(value) -> int | None:
    try:
        return int(str(value).split(".")[0])
    except ValueError:
        return None


def _kind_of(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type):
        return "floating"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return str(arrow_type)


def _get(mapping: dict, dotted: str):
    value = mapping
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def validate_run(path: Path) -> RunFolder:
    """Check one run folder against :data:`RESULT_SCHEMA` (the keys and files of its mode).

    Parameters
    ----------
    path : Path
        A folder ``RESULTS/runs/<run_id>``.

    Returns
    -------
    RunFolder

    Raises
    ------
    MtbenchError
        One line naming the folder or file, what is wrong, and what to do.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    rerun = "re-run it with this mtbench (`mtbench run ...`)"
    manifest_path = path / RESULT_SCHEMA["manifest"]
    if not manifest_path.is_file():
        raise MtbenchError(f"{path}: not an mtbench run (no manifest.json); point at folders written by `mtbench run`")
    manifest = _json_object(manifest_path, "an mtbench manifest")
    version = _version_number(manifest.get("schema_version"))
    current = _version_number(RESULT_SCHEMA["schema_version"])
    if version is None:
        raise MtbenchError(f"{path}: foreign or pre-release result (manifest has no result schema_version); {rerun}")
    if version < _version_number(RESULT_SCHEMA["oldest_readable_version"]):
        raise MtbenchError(f"{path}: result schema {version} is older than this mtbench reads "
                           f"({RESULT_SCHEMA['oldest_readable_version']}..{current}); {rerun}")
    newer = f" (written by a newer mtbench, schema {version}: upgrade mtbench)" if version > current else ""
    mode = run_mode(manifest)
    if mode not in RESULT_SCHEMA["modes"]:
        raise MtbenchError(f"{manifest_path}: unknown encoding mode {mode!r} (this mtbench reads modes "
                           f"{', '.join(RESULT_SCHEMA['modes'])}){newer or '; ' + rerun}")
    expected = RESULT_SCHEMA["modes"][mode]
    for key in [*RESULT_SCHEMA["manifest_keys"], *expected["manifest_keys"]]:
        if _get(manifest, key) is None:
            raise MtbenchError(f"{manifest_path}: key {key!r} is missing{newer}; {rerun}")
    what = f"incomplete or foreign mode {mode} run"
    for name in expected["files"]:
        if not (path / name).is_file():
            raise MtbenchError(f"{path}: {name} is missing ({what}){newer}; {rerun}")
    optional = {name: columns for name, columns in expected.get("optional_parquet", {}).items()
                if (path / name).exists()}
    for name, columns in {**expected["parquet"], **optional}.items():
        file = path / name
        if not file.is_file():
            raise MtbenchError(f"{path}: {name} is missing ({what}){newer}; {rerun}")
        try:
            schema = pq.read_schema(file)
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise MtbenchError(f"{file}: not a readable Parquet file ({first_line(exc)}); {rerun}") from None
        if RESULT_SCHEMA["parquet_metadata_key"].encode() not in (schema.metadata or {}):
            raise MtbenchError(f"{file}: foreign Parquet file (no 'mtbench' provenance in its metadata); "
                               f"only files written by `mtbench run` can be read")
        for column, kind in columns.items():
            if column not in schema.names:
                raise MtbenchError(f"{file}: column {column!r} is missing (older or foreign result schema){newer}; "
                                   f"{rerun}")
            found = _kind_of(schema.field(column).type)
            if found != kind:
                raise MtbenchError(f"{file}: column {column!r} is {found}, the result schema says {kind}; {rerun}")
    return RunFolder(path=path, manifest=manifest, mode=mode)


_RERUN = "the run is corrupt, re-run it with this mtbench (`mtbench run ...`)"


def read_whole_run(path: Path) -> RunFolder:
    """:func:`validate_run`, and every file of the run read to its end: nothing truncated or damaged.

    ``validate_run`` reads the manifest and each Parquet footer (which catches a truncated
    Parquet file); this also decompresses every map and parses every JSON file, the files that
    only fail when a report or rescore reads them. Used where a damaged run must be told apart
    before trusting it (a sweep decides whether a cell is done).

    Raises
    ------
    MtbenchError
        One line naming the damaged file.
    """
    run = validate_run(path)
    for file in sorted(Path(path).glob("*.json")):
        _json_object(file, "an mtbench result file")
    if (Path(path) / "maps").is_dir():
        read_map_index(path)
        for file in sorted((Path(path) / "maps").glob("*.nii*")):
            read_map(path, file.name)
    return run


def read_map(run_dir: Path, name: str):
    """``run_dir/maps/<name>``, read in full; a damaged file is one line naming it.

    Parameters
    ----------
    run_dir : Path
    name : str
        e.g. ``"mask.nii.gz"``.

    Returns
    -------
    nibabel.Nifti1Image
        With its data in memory (``nib.load`` alone reads only the header, so a truncated
        file would fail later, inside a plotting or resampling call).
    """
    import zlib

    import nibabel as nib
    import numpy as np

    path = Path(run_dir) / "maps" / name
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except (OSError, ValueError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise MtbenchError(f"{path}: not a readable NIfTI map ({first_line(exc)}); {_RERUN}") from None
    return nib.Nifti1Image(data, image.affine, image.header)


def read_map_index(run_dir: Path) -> dict:
    """``run_dir/maps/index.json`` (what the codes and volumes of the maps mean); one line when damaged."""
    return _json_object(Path(run_dir) / "maps" / "index.json", "a map index")


def _json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path``; one line naming the file when it is unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise MtbenchError(f"{path}: not valid JSON ({exc}); {_RERUN}") from None
    if not isinstance(value, dict):
        raise MtbenchError(f"{path}: not {what} (a JSON object is expected); {_RERUN}")
    return value
