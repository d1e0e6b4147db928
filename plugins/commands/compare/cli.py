"""``mtbench compare RUN_A [RUN_B] --a L4:per_head_q_rope --b L4:per_head_q``: the paired test of two fits."""

from __future__ import annotations

from pathlib import Path

import click

from mtbench.cli.options import OUT_FOLDER
from mtbench.display import console, progress_bars
from mtbench.errors import MtbenchError

from .present import print_comparison


def _runs(value: str) -> list[Path]:
    """A run folder, or a comma list of them (one per subject)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise MtbenchError(f"{value!r} names no run folder; give RESULTS/runs/<run_id> (or a comma list, one per subject)")
    return [Path(p) for p in parts]


@click.command("compare")
@click.argument("run_a")
@click.argument("run_b", required=False)
@click.option("--a", "fit_a", default=None, help="Fit A in RUN_A as LAYER:STATE, e.g. L4:per_head_q_rope (optional for a "
              "run of one fit).")
@click.option("--b", "fit_b", default=None, help="Fit B as LAYER:STATE, in RUN_B (or in RUN_A when RUN_B is not given).")
@click.option("--parcels", type=click.Path(path_type=Path), default=None,
              help="A NIfTI of integer labels (any grid, resampled nearest) to test parcels of (default: the dataset's).")
@click.option("--parcel-names", type=click.Path(path_type=Path), default=None,
              help="Text file of '<label><tab><name>' lines for --parcels.")
@click.option("--method", type=click.Choice(["corrected-t", "flat-top", "block-bootstrap"]), default="corrected-t",
              show_default=True,
              help="Standard error of the difference: corrected-t across test runs (counts both fits' training noise), "
                   "or, taking the fitted predictions as given, flat-top lag window within runs (more power) or "
                   "circular-block bootstrap (liberal; for reference). See docs/compare.md.")
@click.option("--bootstraps", "n_boot", default=1000, show_default=True, help="Draws of --method block-bootstrap.")
@click.option("--lags", default=None, type=int, help="Scans over which the noise stays correlated (default: from the "
              "data's autocorrelation).")
@click.option("--level", default=0.95, show_default=True, help="Confidence level of the intervals.")
@click.option("--fdr", default=0.05, show_default=True, help="Benjamini-Hochberg level across voxels (and parcels).")
@click.option("--group-test", "group", type=click.Choice(["t", "sign-flip"]), default="t", show_default=True,
              help="With one run per subject: test of the per-subject differences across subjects (one-sample t, or "
                   "sign-flip permutation of it: no normality assumed).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default=None, type=OUT_FOLDER,
              help="The comparison folder to write (default: RESULTS/compare/<id>, next to RUN_A's runs/).")
def compare_command(run_a, run_b, fit_a, fit_b, parcels, parcel_names, method, n_boot, lags, level, fdr, group, seed,
                    out):
    """Is fit A's held-out score higher than fit B's? Per voxel and parcel, on the same scans.

    RUN_A and RUN_B are run folders of one dataset and subject (or comma lists, one run per subject:
    then the differences are also tested across subjects). Each fit is refitted with the alphas its
    run chose in each outer fold (nothing searched again); the held-out r of A minus B gets an
    interval and a p-value that respect the scans' autocorrelation, BH-FDR across voxels, Holm and
    BH across parcels.

    \b
    Two fits of one run:  mtbench compare RESULTS/runs/ID --a L4:per_head_q_rope --b L4:per_head_q
    Two models:           mtbench compare RUN_A RUN_B --a L4:per_head_q --b L4:per_head_q
    """
    if parcel_names is not None and parcels is None:
        raise MtbenchError("--parcel-names names the labels of --parcels; give --parcels LABELS.nii.gz too")
    from .compare import compare  # pyarrow, nibabel, the runner

    folder = compare(_runs(run_a), None if run_b is None else _runs(run_b), fit_a, fit_b, parcels=parcels,
                     parcel_names=parcel_names, out=out, method=method, n_boot=n_boot, lags=lags, level=level, fdr=fdr,
                     seed=seed, group=group, progress=progress_bars(console))
    print_comparison(folder, console)
