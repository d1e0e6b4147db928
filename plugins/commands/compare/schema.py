"""The result schema of a comparison folder (``mtbench compare``), as data, and its check.

A comparison is not a run (no analysis wrote it), so it is not read by
:func:`mtbench.schema.validate_run`; it follows the same rules: a ``manifest.json`` with a
``schema_version`` and the keys readers rely on, Parquet tables whose columns have the kinds
listed here and the manifest in their metadata, maps that exist. It is checked when written
(before the folder is renamed into place) and whenever it is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtbench.errors import MtbenchError, first_line

_VOXEL_COLUMNS = {"voxel": "integer", "parcel_id": "integer", "r_a": "floating", "r_b": "floating",
                  "delta": "floating", "se": "floating", "ci_low": "floating", "ci_high": "floating",
                  "p_value": "floating", "q_value": "floating", "significant": "integer"}
_PARCEL_COLUMNS = {"parcel_id": "integer", "parcel": "string", "n_voxels": "integer", "delta": "floating",
                   "se": "floating", "ci_low": "floating", "ci_high": "floating", "p_value": "floating",
                   "p_holm": "floating", "q_value": "floating", "share_significant": "floating"}

#: What every comparison folder holds. Column kinds as in :data:`mtbench.schema.RESULT_SCHEMA`.
COMPARE_SCHEMA: dict = {
    "schema_version": "1",
    "kind": "comparison",
    "manifest": "manifest.json",
    "manifest_keys": ["schema_version", "kind", "comparison_id", "mtbench_version", "a.fit", "b.fit", "a.runs",
                      "b.runs", "dataset.name", "dataset.version", "subjects", "test.method", "test.lags",
                      "test.level", "test.fdr"],
    "files": ["maps/mask.nii.gz", "maps/delta_r.nii.gz", "maps/significant_delta_r.nii.gz", "delta_r.png"],
    # one row per (subject, voxel) / (subject, parcel); subject "group" for the test across subjects
    "parquet": {"voxels.parquet": {"subject": "string", **_VOXEL_COLUMNS},
                "parcels.parquet": {"subject": "string", **_PARCEL_COLUMNS}},
    "parquet_metadata_key": "mtbench",
}


def _kind_of(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type):
        return "floating"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return str(arrow_type)


def validate_comparison(path: Path) -> dict:
    """Check a comparison folder against :data:`COMPARE_SCHEMA`; return its manifest.

    Raises
    ------
    MtbenchError
        One line naming the folder or file, what is wrong, and what to do.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    again = "run `mtbench compare` again"
    manifest_path = path / COMPARE_SCHEMA["manifest"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise MtbenchError(f"{path}: not a readable comparison (manifest.json: {first_line(exc)}); {again}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != COMPARE_SCHEMA["kind"]:
        raise MtbenchError(f"{path}: not an mtbench comparison (its manifest has no kind 'comparison'); point at a "
                           "folder written by `mtbench compare`")
    if str(manifest.get("schema_version")) != COMPARE_SCHEMA["schema_version"]:
        raise MtbenchError(f"{path}: comparison schema {manifest.get('schema_version')!r}, this mtbench reads "
                           f"{COMPARE_SCHEMA['schema_version']}; {again}")
    for key in COMPARE_SCHEMA["manifest_keys"]:
        value = manifest
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise MtbenchError(f"{manifest_path}: key {key!r} is missing; {again}")
    for name in COMPARE_SCHEMA["files"]:
        if not (path / name).is_file():
            raise MtbenchError(f"{path}: {name} is missing (an incomplete comparison); {again}")
    for name, columns in COMPARE_SCHEMA["parquet"].items():
        file = path / name
        try:
            schema = pq.read_schema(file)
        except Exception as exc:  # pyarrow raises several types for a missing or non-Parquet file
            raise MtbenchError(f"{file}: not a readable Parquet file ({first_line(exc)}); {again}") from None
        if COMPARE_SCHEMA["parquet_metadata_key"].encode() not in (schema.metadata or {}):
            raise MtbenchError(f"{file}: foreign Parquet file (no 'mtbench' provenance in its metadata); {again}")
        for column, kind in columns.items():
            if column not in schema.names:
                raise MtbenchError(f"{file}: column {column!r} is missing; {again}")
            found = _kind_of(schema.field(column).type)
            if found != kind:
                raise MtbenchError(f"{file}: column {column!r} is {found}, the comparison schema says {kind}; {again}")
    return manifest
