"""A finished Mode 1 run scored with another metric: each outer fold refitted once with the run's own alphas.

The held-out predictions are not stored (2,816 scans x 25,870 voxels, 290 MB per fit at LPP
scale), so each outer fold is refitted with the alphas the run chose there
(``fit_nested_loro(alpha_per_run=...)``: no inner fold is decomposed) on the cached TR-level
features, and its test run scored with the new metric. The validation scores, the alphas, the
best-state choices (made on validation Pearson r) and the p-values (of Pearson r) are the run's own.
"""

from __future__ import annotations

from contextlib import nullcontext

from mtbench.encoding import fit_nested_loro
from mtbench.errors import MtbenchError
from mtbench.runner import prepare_inputs


def refit_scores(analysis, table, settings, entry, dataset, manifest: dict, progress) -> None:
    """Replace ``table.test`` and ``table.test_per_run`` with ``entry``'s scores of refits that
    use the run's own alphas (one refit per outer fold, no alpha search)."""
    recorded = manifest.get("dataset", {})
    if (recorded.get("version"), recorded.get("stimulus")) != (dataset.version, dataset.stimulus.fingerprint()):
        raise MtbenchError(f"dataset {dataset.name} has changed since run {manifest['run_id']} (version or "
                           "stimulus differ); its alphas do not apply: run `mtbench run` again")
    with progress if progress is not None else nullcontext():
        inputs = prepare_inputs(settings, analysis, progress=progress)
        if inputs.y_runs[0].shape[1] != table.test.shape[1]:
            raise MtbenchError(f"dataset {dataset.name} has {inputs.y_runs[0].shape[1]} voxels, the run "
                               f"{table.test.shape[1]}: run `mtbench run` again")
        task = progress.add_task(f"refit for {entry.name}", total=len(table.keys)) if progress else None
        for f, key in enumerate(table.keys):
            result = fit_nested_loro(inputs.scans.pop(key), inputs.y_runs, settings.alphas, backend=settings.backend,
                                     score=entry.score, precision=settings.precision,
                                     alpha_per_run=table.alpha_per_run[f])
            table.test[f], table.test_per_run[f] = result.test, result.test_per_run
            if task is not None:
                progress.update(task, advance=1, description=f"refit L{key[0]} {key[1]} for {entry.name}")
