"""Several runs that fitted different parts of one experiment, as the one run that fitted them all.

A sweep fits each (layer, state) as its own run (a *cell*), so that cells run anywhere and
resume one by one; users split a run by hand the same way (one cluster job per layer). The
question such runs answer (which layer and state best explains each parcel?) needs them side
by side: :func:`combine_runs` checks that the runs agree on everything but what each fitted,
and hands them to their analysis (:meth:`mtbench.api.Analysis.combine`), which reads their
per-fold scores and makes the choices across all of them, nothing refitted. The combined run's
files are the files of the run that would have fitted everything with the same settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

from mtbench.errors import MtbenchError
from mtbench.paths import check_run_id
from mtbench.registry import get_registry, model_slug, slug
from mtbench.results import write_run
from mtbench.runner import RunOutput
from mtbench.schema import read_map, validate_run

_PER_CELL = ("states", "layers")



def combine_runs(run_dirs: list[Path], results_dir: Path, run_id: str):
    """Write ``results_dir/runs/<run_id>``: the runs ``run_dirs`` as one run.

    Parameters
    ----------
    run_dirs : list of Path
        Finished runs of one model, dataset, subject, analysis and the same settings, each
        fitting parts the others do not (e.g. (layer, state)s, or layers), with the per-fold
        tables their analysis combines from.
    results_dir : Path
    run_id : str
        Name of the combined run; its manifest lists the runs in ``combined_from``.

    Returns
    -------
    mtbench.runner.RunOutput

    Raises
    ------
    MtbenchError
        The runs disagree (another model, dataset, subject or setting), fit the same
        (layer, state) twice, or one cannot be read.
    """
    start = time.perf_counter()
    check_run_id(run_id)  # before reading any run
    if not run_dirs:
        raise MtbenchError("nothing to combine: give at least one run")
    runs = [validate_run(Path(d)) for d in run_dirs]
    first = runs[0].manifest
    for run in runs:
        problem = _disagreement(first, run.manifest)  # another mode is another setting
        if problem:
            raise MtbenchError(f"{run.path}: {problem} than {runs[0].path}; combine runs of one model, dataset, "
                               "subject, mode and settings")
    analysis = get_registry().analysis(runs[0].mode).load()
    meta = _combined_manifest(runs, run_id)
    result = analysis.combine(runs, meta)
    meta |= result.manifest
    truth = _truth(runs[0])
    out = write_run(Path(results_dir), run_id, meta, result, read_map(runs[0].path, "mask.nii.gz"), truth)
    return RunOutput(run_dir=out, summary=result.summary, truth_check=result.truth_check(truth),
                     seconds=time.perf_counter() - start, mode=runs[0].mode)

def _combined_manifest(runs, run_id: str) -> dict:
    """The first run's manifest as the combined run's: its id, where it came from, the fits' seconds."""
    meta = copy.deepcopy(runs[0].manifest)
    meta["run_id"] = run_id
    meta["combined_from"] = [run.manifest["run_id"] for run in runs]
    meta.pop("sweep_cell", None)  # the combination is what the leaderboard shows
    meta["seconds"] = round(sum(float(run.manifest.get("seconds", 0)) for run in runs), 1)  # of the fits
    meta.pop("timings", None)  # per stage of one cell's run: not this run's
    return meta


def _truth(run) -> dict | None:
    """The planted truth a run was scored against (synthetic datasets), or None."""
    path = run.path / "truth.json"
    return json.loads(path.read_text()) if path.is_file() else None


def default_run_id(run_dirs: list[Path]) -> str:
    """``<model>-<dataset>-<subject>-combined-[<analysis tag>-]<protocol>-<hash of the run ids>`` for ``mtbench
    combine`` (named like a sweep's combined runs)."""
    runs = [validate_run(Path(d)) for d in run_dirs]
    manifests = [run.manifest for run in runs]
    digest = hashlib.sha256("\n".join(sorted(m["run_id"] for m in manifests)).encode()).hexdigest()[:10]
    first = manifests[0]
    return "-".join([model_slug(first["model"]["spec"]), slug(first["dataset"]["name"]),
                     slug(first["settings"]["subject"]), "combined",
                     *combined_tag(runs[0].mode),
                     slug(first["settings"].get("protocol") or "mtbench"), digest])


def combined_tag(mode: str) -> list[str]:
    """The analysis's part of a combined run's name (none for the default analysis)."""
    tag = get_registry().analysis(mode).load().tag
    return [tag] if tag else []


def _disagreement(a: dict, b: dict) -> str | None:
    """What makes two run manifests results of different experiments ("another model"...), or None."""
    if (a["model"].get("spec"), a["model"].get("revision")) != (b["model"].get("spec"), b["model"].get("revision")):
        return "another model"
    if ({k: a["dataset"].get(k) for k in ("name", "version", "stimulus", "n_voxels")}
            != {k: b["dataset"].get(k) for k in ("name", "version", "stimulus", "n_voxels")}):
        return "another dataset"
    if a["settings"].get("subject") != b["settings"].get("subject"):
        return "another subject"
    for key in sorted(set(a["settings"]) | set(b["settings"]), key=lambda k: (k != "mode", k)):  # the mode first
        if key not in _PER_CELL and a["settings"].get(key) != b["settings"].get(key):
            return f"another {key} ({b['settings'].get(key)!r})"
    if a.get("rescored_from") or b.get("rescored_from"):
        return "a rescored run (combine the runs it came from)"
    return None
