"""``mtbench combine`` and ``mtbench rescore``: new runs made from finished ones, nothing fitted twice."""

from __future__ import annotations

from pathlib import Path

import click

from mtbench.cli.options import OUT_FOLDER
from mtbench.display import console, print_run, progress_bars
from mtbench.errors import MtbenchError
from mtbench.paths import check_run_id, results_folder_of



@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--metric", default=None, help="Another registered metric: each outer fold is refitted once with the "
              "run's own alphas (no alpha search) and its test run scored with it.")
@click.option("--parcels", type=click.Path(path_type=Path), default=None,
              help="A NIfTI of integer labels (any grid, resampled nearest): every parcel statistic is recomputed "
                   "from the run's per-fold scores, nothing is fitted.")
@click.option("--parcel-names", type=click.Path(path_type=Path), default=None,
              help="Text file of '<label><tab><name>' lines for --parcels.")
@click.option("--run-id", default=None, help="Name of the new run folder (default: the run's id, metric, parcels).")
@click.option("--out", "results_dir", default=None, type=OUT_FOLDER,
              help="Results folder of the new run (default: the one RUN_DIR is in, RESULTS/runs/<id>).")
def rescore(run_dir, metric, parcels, parcel_names, run_id, results_dir):
    """Score a finished Mode 1 run with another metric or on other parcels, into a new run folder."""
    if parcel_names is not None and parcels is None:
        raise MtbenchError("--parcel-names names the labels of --parcels; give --parcels LABELS.nii.gz too")
    from .rescore import rescore as rescore_run  # pyarrow, nibabel, nilearn

    progress = progress_bars(console)
    print_run(rescore_run(run_dir, metric=metric, parcels=parcels, parcel_names=parcel_names, run_id=run_id,
                              progress=progress, results_dir=results_dir))


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run-id", default=None, help="Name of the combined run (default: <model>-<dataset>-<subject>-combined-"
              "[<analysis>-]<protocol>-<hash of the runs>).")
@click.option("--out", "results_dir", default=None, type=OUT_FOLDER,
              help="Results folder of the combined run (default: the one the first RUN_DIR is in).")
def combine(run_dirs, run_id, results_dir):
    """Write runs of different (layer, state)s as the one run that fitted them all (nothing refitted).

    For runs made one layer (or state) at a time, e.g. one cluster job per layer: the combined run
    chooses the best layer x state per parcel (Mode 2: the best layer) across all of them, as
    `mtbench run` would have. (`mtbench sweep` combines its cells itself.)
    """
    from .combine import combine_runs, default_run_id  # pyarrow, nibabel

    results_dir = results_folder_of(run_dirs[0], results_dir)
    run_id = check_run_id(run_id) if run_id is not None else default_run_id(run_dirs)
    if (results_dir / "runs" / run_id).exists():
        raise MtbenchError(f"{results_dir / 'runs' / run_id} already exists; give another --run-id")
    output = combine_runs(list(run_dirs), results_dir, run_id)
    print_run(output)
    console.print(f"combined {len(run_dirs)} runs into {output.run_dir}")
