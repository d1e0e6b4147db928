"""``mtbench run``: the pipeline's command (extract, align, fit, score, write)."""

from __future__ import annotations

import sys
from dataclasses import replace

import click

from ..display import console, print_run, progress_bars
from ..registry import get_registry
from ..runner import RunStopped, expand_subjects
from ..runner import run as run_pipeline
from ..settings import (
    FEATURE_DTYPES,
    HRF_CHOICES,
    PRECISIONS,
    PROTOCOLS,
    RunSettings,
    mode_value,
    resolve_protocol,
)
from .options import (
    OUT_FOLDER,
    analysis_flags,
    analysis_values,
    comma_list,
    key_value_options,
    mode_help,
    parse_alphas,
    parse_delays,
)
from .signals import sigterm_as_interrupt, stopped_by


@click.command()
@click.option("--model", required=True, help="Model name (`mtbench list models`), or hf:<folder>.")
@click.option("--states", default="all", show_default=True, help="'all' or a comma list of state names.")
@click.option("--layers", default="all", show_default=True, help="'all', '4' or '1-5,8' (1-based blocks).")
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset name (`mtbench list datasets`).")
@click.option("--subject", default="average", show_default=True)
@click.option("--metric", default="pearson", show_default=True)
@click.option("--hrf", type=click.Choice(HRF_CHOICES), default="glover", show_default=True,
              help="fir: word features summed per scan, delayed copies concatenated (see --delays).")
@click.option("--delays", default=None, help="Delays in scans, e.g. 1,2,3,4 (default for --hrf fir; none otherwise).")
@click.option("--permutations", default=1000, show_default=True,
              help="Circular-shift permutations per fit for per-voxel p-values (0: none).")
@click.option("--fdr", default=0.05, show_default=True, help="Benjamini-Hochberg FDR level across voxels.")
@click.option("--trim", "trim_scans", default=0, show_default=True, help="Scans dropped at both ends of each run.")
@click.option("--alphas", default="1e0:1e8:9", show_default=True,
              help="Ridge penalties: 'start:stop:count' (log-spaced) or a comma list.")
@click.option("--backend", default="torch", show_default=True, help="Ridge backend (torch, torch_cuda, himalaya, himalaya_cuda).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="mixed", show_default=True,
              help="mixed: alpha search in bfloat16 where the hardware has it (about 2x faster); float32: exact.")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="mtbench", show_default=True,
              help="mindtransformer: the reference protocol (trim 10, alphas logspace(2,7,16), one alpha for all "
                   "voxels validated on the first remaining run, glover HRF, float32); conflicting --trim, "
                   "--alphas, --hrf or --precision is an error.")
@click.option("--out", "results_dir", default="mtbench-results", show_default=True, type=OUT_FOLDER,
              help="Results directory (shared by runs).")
@click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="e.g. context=512,stride=256 (windows), pooling=last, dtype=bfloat16, device_map=auto.")
@click.option("--device", default=None, help="Where the model runs: cpu, cuda, cuda:N or auto (a model option).")
@click.option("--feature-dtype", type=click.Choice(FEATURE_DTYPES), default="float16", show_default=True,
              help="Precision of the on-disk word-feature cache.")
@click.option("--seed", default=0, show_default=True)
@click.option("--mode", default=None, help=mode_help())
@analysis_flags
@click.option("--folds/--no-folds", default=True, show_default=True,
              help="Write the per-fold table where it is optional (folds.parquet: per outer fold and voxel; ~3 MB per "
                   "fit at LPP scale). `mtbench rescore` and `mtbench combine` need it; --no-folds changes no score.")
def run(model, states, layers, dataset, subject, metric, hrf, delays, permutations, fdr, trim_scans, alphas, backend,
        precision, protocol, results_dir, dataset_options, model_options, device, feature_dtype, seed, mode, folds,
        **analysis_options):
    """Extract states, align them to the scans, fit voxelwise ridge models, score and write results."""
    settings = RunSettings(
        model=model, dataset=dataset, states=comma_list(states), layers=layers, subject=subject, metric=metric,
        alphas=parse_alphas(alphas), hrf=hrf, trim_scans=trim_scans, seed=seed, backend=backend, precision=precision,
        dataset_options=key_value_options(dataset_options, "--dataset-option"),
        model_options=key_value_options(model_options, "--model-option"), protocol=protocol,
        feature_dtype=feature_dtype, mode=mode_value(mode), delays=parse_delays(delays), permutations=permutations,
        fdr=fdr, **analysis_values(analysis_options))
    if device is not None:
        settings.model_options.setdefault("device", device)
    settings.check()  # before the protocol and the subjects: a bad value is one line at once
    ctx = click.get_current_context()
    explicit = [name for name in ("hrf", "trim_scans", "alphas", "precision", "delays")
                if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    registry = get_registry()
    settings = registry.mode_of(resolve_protocol(settings, explicit))  # conflicting explicit flags -> one line
    registry.check_run(settings)  # every name, in a second, before anything heavy is imported
    progress = progress_bars(console)
    with sigterm_as_interrupt():  # a killed job (kill, scancel, a time limit) says what it kept, as Ctrl-C does
        for subject in expand_subjects(settings):  # --subject all / a comma list: one run per subject
            try:
                output = run_pipeline(replace(settings, subject=subject), results_dir, progress=progress, folds=folds)
            except KeyboardInterrupt as exc:
                how, status = stopped_by(exc)
                what = (exc.describe() if isinstance(exc, RunStopped)
                        else "nothing of this run was written (earlier results are untouched); rerun the same command")
                click.echo(f"Error: {how} {what}", err=True)
                sys.exit(status)
            print_run(output)
