"""The result schema of a run folder, as data, and the check of a folder against it.

:data:`RESULT_SCHEMA` lists what every run has (its version and the manifest keys readers rely
on); each analysis adds the files, manifest keys and Parquet columns (with their kind of type)
of its runs (:attr:`mtbench.api.AnalysisEntry.schema`), found through the registry by the
run's ``settings.mode``: :func:`analysis_schema`. Readers accept extra files and extra columns;
they refuse a folder that lacks something listed for its analysis, with one line naming what is
missing and why.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MtbenchError, first_line
from .paths import check_run_id
from .registry import get_registry

#: Columns that say which run a table row belongs to (written from the manifest).
IDENTITY = {"run_id": "string", "model": "string", "dataset": "string", "subject": "string", "metric": "string"}
#: What every run folder holds, whatever its analysis. Column kinds: "integer", "floating"
#: (float or double), "string" (also dictionary-encoded or large strings).
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
    # Key of the Parquet schema metadata that holds the run's manifest.
    "parquet_metadata_key": "mtbench",
}


def analysis_schema(mode: str) -> dict:
    """The part of the result schema of runs of analysis ``mode`` (``manifest_keys``, ``files``, ``parquet``...).

    Raises
    ------
    MtbenchError
        No installed analysis has that name.
    """
    return get_registry().analysis(mode).schema


@dataclass
class RunFolder:
    """A run folder that passed :func:`validate_run`.

    Attributes
    ----------
    path : Path
    manifest : dict
        The parsed ``manifest.json``.
    mode : str
        The analysis whose files the folder holds (``settings.mode`` of its manifest).
    """

    path: Path
    manifest: dict
    mode: str = "1"


def run_mode(manifest: dict) -> str:
    """The analysis of a run: ``settings.mode`` of its manifest (the default analysis when absent)."""
    settings = manifest.get("settings")
    mode = settings.get("mode") if isinstance(settings, dict) else None
    mode = mode if mode is not None else manifest.get("mode")
    return str(mode) if mode is not None else get_registry().default_analysis().name


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
    """Check one run folder against :data:`RESULT_SCHEMA` and its analysis's part (:func:`analysis_schema`).

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
    known = get_registry().names("analysis")
    if mode not in known:
        raise MtbenchError(f"{manifest_path}: unknown encoding mode {mode!r} (this mtbench reads modes "
                           f"{', '.join(known)}){newer or '; install the analysis plugin that wrote it, or ' + rerun}")
    expected = analysis_schema(mode)
    for key in [*RESULT_SCHEMA["manifest_keys"], *expected["manifest_keys"]]:
        if _get(manifest, key) is None:
            raise MtbenchError(f"{manifest_path}: key {key!r} is missing{newer}; {rerun}")
    try:  # readers make folders and links from it (reports/<run_id>/): a name, never a path
        check_run_id(manifest["run_id"])
    except MtbenchError:
        raise MtbenchError(f"{manifest_path}: run_id {manifest['run_id']!r} is not a run id (letters, digits, '.', "
                           f"'_', '-'); a foreign or edited manifest: {rerun}") from None
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

    import nibabel as nib

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
