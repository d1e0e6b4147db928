"""The ``mtbench`` command line.

Only light modules are imported at start-up: ``mtbench list`` and ``mtbench plugins``
never import torch; ``mtbench run`` imports the heavy machinery when it starts.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS and torch's MKL thread pools fight on small machines (measured 8x slower);
# torch does the heavy lifting, so keep OpenBLAS single-threaded unless the user says otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .errors import MtbenchError  # noqa: E402
from .registry import get_registry  # noqa: E402
from .scaffold import plugin_group  # noqa: E402

console = Console()
KINDS = ("models", "states", "datasets", "metrics", "executors")


class _Cli(click.Group):
    """Turns MtbenchError into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MtbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


def _options(pairs: tuple[str, ...], flag: str) -> dict:
    """``("k=v", ...)`` -> dict, numbers parsed; ``"a=1,b=2"`` counts as two pairs."""
    out = {}
    split = []
    for pair in pairs:
        parts = pair.split(",")
        # only when every part is a KEY=VALUE of its own (a value may itself hold commas)
        split += parts if len(parts) > 1 and all(re.match(r"\s*\w[\w-]*=", p) for p in parts) else [pair]
    for pair in split:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MtbenchError(f"{flag} expects KEY=VALUE, got {pair!r}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip().replace("-", "_")] = value
    return out


@click.group(cls=_Cli)
@click.version_option(package_name="mtbench")
def main():
    """mtbench: which computation inside a transformer block best predicts each brain region."""


@main.command("list")
@click.argument("kind", type=click.Choice(KINDS))
def list_cmd(kind):
    """List registered models, states, datasets or metrics."""
    registry = get_registry()
    singular = kind[:-1]
    table = Table(title=f"{kind} ({len(registry.entries[singular])})", show_lines=False)
    table.add_column("name", style="bold")
    if kind == "states":
        table.add_column("stage")
    if kind == "models":
        table.add_column("family")
    table.add_column("description")
    table.add_column("plugin", style="dim")
    for name in registry.names(singular):
        entry = registry.entries[singular][name]
        cells = [name]
        if kind == "states":
            cells.append(entry.stage)
        if kind == "models":
            cells.append(entry.family)
        cells += [getattr(entry, "summary", None) or getattr(entry, "description", ""), registry.providers[singular][name]]
        table.add_row(*cells)
    console.print(table)
    _warn_broken(registry)


main.add_command(plugin_group)  # mtbench plugin new KIND NAME


@main.command()
@click.option("--hook", default=None, help="Only plugins implementing this hook (e.g. register_models).")
def plugins(hook):
    """Show every loaded plugin, the distribution it came from and what it registers."""
    registry = get_registry()
    known = sorted(registry.manager.hook.__dict__)
    if hook is not None and hook not in known:
        raise MtbenchError(f"unknown hook {hook!r}: hooks are {', '.join(h for h in known if not h.startswith('_'))}")
    table = Table(title="mtbench plugins (entry-point group 'mtbench')")
    for col in ("plugin", "module", "distribution", "hooks", "status"):
        table.add_column(col)
    for info in registry.plugins:
        if hook is not None and hook not in info.hooks:
            continue
        status = f"[red]failed: {info.error}[/red]" if info.error else "[green]ok[/green]"
        table.add_row(info.name, info.module, f"{info.distribution} {info.version}", ", ".join(info.hooks), status)
    console.print(table)


def _warn_broken(registry) -> None:
    broken = [p for p in registry.plugins if p.error]
    for info in broken:
        console.print(f"[yellow]warning:[/yellow] plugin {info.name} ({info.distribution}) was skipped: {info.error}")


@main.command()
@click.option("--model", required=True, help="Model name (`mtbench list models`), or hf:<folder>.")
@click.option("--states", default="all", show_default=True, help="'all' or a comma list of state names.")
@click.option("--layers", default="all", show_default=True, help="'all', '4' or '1-5,8' (1-based blocks).")
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset name (`mtbench list datasets`).")
@click.option("--subject", default="average", show_default=True)
@click.option("--metric", default="pearson", show_default=True)
@click.option("--hrf", type=click.Choice(["glover", "spm", "fir"]), default="glover", show_default=True,
              help="fir: word features summed per scan, delayed copies concatenated (see --delays).")
@click.option("--delays", default=None, help="Delays in scans, e.g. 1,2,3,4 (default for --hrf fir; none otherwise).")
@click.option("--permutations", default=1000, show_default=True,
              help="Circular-shift permutations per fit for per-voxel p-values (0: none).")
@click.option("--fdr", default=0.05, show_default=True, help="Benjamini-Hochberg FDR level across voxels.")
@click.option("--trim", "trim_scans", default=0, show_default=True, help="Scans dropped at both ends of each run.")
@click.option("--alphas", default="1e0:1e8:9", show_default=True,
              help="Ridge penalties: 'start:stop:count' (log-spaced) or a comma list.")
@click.option("--backend", default="torch", show_default=True, help="Ridge backend (torch, torch_cuda, himalaya, himalaya_cuda).")
@click.option("--precision", type=click.Choice(["mixed", "float32"]), default="mixed", show_default=True,
              help="mixed: alpha search in bfloat16 where the hardware has it (about 2x faster); float32: exact.")
@click.option("--protocol", type=click.Choice(["mtbench", "mindtransformer"]), default="mtbench", show_default=True,
              help="mindtransformer: the reference protocol (trim 10, alphas logspace(2,7,16), one alpha for all "
                   "voxels validated on the first remaining run, glover HRF, float32); conflicting --trim, "
                   "--alphas, --hrf or --precision is an error.")
@click.option("--out", "results_dir", default="mtbench-results", show_default=True, type=click.Path(path_type=Path),
              help="Results directory (shared by runs).")
@click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="e.g. context=512,stride=256 (windows), pooling=last, dtype=bfloat16, device_map=auto.")
@click.option("--device", default=None, help="Where the model runs: cpu, cuda, cuda:N or auto (a model option).")
@click.option("--feature-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Precision of the on-disk word-feature cache.")
@click.option("--seed", default=0, show_default=True)
@click.option("--mode", type=click.IntRange(1, 2), default=1, show_default=True,
              help="1: each (layer, state) on its own; 2: the --inputs states of each layer together.")
@click.option("--inputs", default="", help="Mode 2: comma list of states combined per layer.")
@click.option("--pivot", default="input_hidden_state", show_default=True,
              help="Mode 2 pivot: stage 2 keeps as many features as this state has dimensions.")
@click.option("--selection", type=click.Choice(["pivot", "banded"]), default="pivot", show_default=True,
              help="Mode 2: pivot (MindTransformer's two-stage selection) or banded (himalaya banded ridge).")
@click.option("--folds/--no-folds", default=True, show_default=True,
              help="Write folds.parquet (per outer fold and voxel; ~3 MB per fit at LPP scale). "
                   "`mtbench rescore` needs it; --no-folds changes no score.")
def run(model, states, layers, dataset, subject, metric, hrf, delays, permutations, fdr, trim_scans, alphas, backend,
        precision, protocol, results_dir, dataset_options, model_options, device, feature_dtype, seed, mode, inputs,
        pivot, selection, folds):
    """Extract states, align them to the scans, fit voxelwise ridge models, score and write results."""
    from .settings import RunSettings
    from .display import progress_bars
    from .settings import resolve_protocol
    from .runner import run as run_pipeline

    settings = RunSettings(
        model=model,
        dataset=dataset,
        states=[s.strip() for s in states.split(",") if s.strip()],
        layers=layers,
        subject=subject,
        metric=metric,
        alphas=_parse_alphas(alphas),
        hrf=hrf,
        trim_scans=trim_scans,
        seed=seed,
        backend=backend,
        precision=precision,
        dataset_options=_options(dataset_options, "--dataset-option"),
        model_options=_options(model_options, "--model-option"),
        protocol=protocol,
        feature_dtype=feature_dtype,
        mode=mode,
        inputs=[s.strip() for s in inputs.split(",") if s.strip()],
        pivot=pivot,
        selection=selection,
        delays=_parse_delays(delays),
        permutations=permutations,
        fdr=fdr,
    )
    if device is not None:
        settings.model_options.setdefault("device", device)
    settings.check()  # before the protocol and the subjects: a bad value is one line at once
    ctx = click.get_current_context()
    explicit = [name for name in ("hrf", "trim_scans", "alphas", "precision", "delays")
                if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    settings = resolve_protocol(settings, explicit)  # conflicting explicit flags -> one-line error
    progress = progress_bars(console)
    from dataclasses import replace

    from .runner import expand_subjects

    for subject in expand_subjects(settings):  # --subject all / a comma list: one run per subject
        try:
            output = run_pipeline(replace(settings, subject=subject), results_dir, progress=progress, folds=folds)
        except KeyboardInterrupt:
            click.echo("Error: interrupted; nothing of this run was written (earlier results are untouched); "
                       "rerun it to resume the feature extraction where it stopped", err=True)
            sys.exit(130)
        print_summary(output)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--metric", default=None, help="Another registered metric: each outer fold is refitted once with the "
              "run's own alphas (no alpha search) and its test run scored with it.")
@click.option("--parcels", type=click.Path(path_type=Path), default=None,
              help="A NIfTI of integer labels (any grid, resampled nearest): every parcel statistic is recomputed "
                   "from the run's per-fold scores, nothing is fitted.")
@click.option("--parcel-names", type=click.Path(path_type=Path), default=None,
              help="Text file of '<label><tab><name>' lines for --parcels.")
@click.option("--run-id", default=None, help="Name of the new run folder (default: the run's id, metric, parcels).")
@click.option("--out", "results_dir", default=None, type=click.Path(path_type=Path),
              help="Results folder of the new run (default: the one RUN_DIR is in, RESULTS/runs/<id>).")
def rescore(run_dir, metric, parcels, parcel_names, run_id, results_dir):
    """Score a finished Mode 1 run with another metric or on other parcels, into a new run folder."""
    from .display import progress_bars
    from .rescore import rescore as rescore_run

    if parcel_names is not None and parcels is None:
        raise MtbenchError("--parcel-names names the labels of --parcels; give --parcels LABELS.nii.gz too")
    progress = progress_bars(console)
    print_summary(rescore_run(run_dir, metric=metric, parcels=parcels, parcel_names=parcel_names, run_id=run_id,
                              progress=progress, results_dir=results_dir))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run-id", default=None, help="Name of the combined run (default: <model>-<dataset>-<subject>-combined-"
              "[mode2-]<protocol>-<hash of the runs>).")
@click.option("--out", "results_dir", default=None, type=click.Path(path_type=Path),
              help="Results folder of the combined run (default: the one the first RUN_DIR is in).")
def combine(run_dirs, run_id, results_dir):
    """Write runs of different (layer, state)s as the one run that fitted them all (nothing refitted).

    For runs made one layer (or state) at a time, e.g. one cluster job per layer: the combined run
    chooses the best layer x state per parcel (Mode 2: the best layer) across all of them, as
    `mtbench run` would have. (`mtbench sweep` combines its cells itself.)
    """
    from .combine import combine_runs, default_run_id
    from .paths import results_folder_of

    results_dir = results_folder_of(run_dirs[0], results_dir)
    run_id = run_id or default_run_id(run_dirs)
    if (results_dir / "runs" / run_id).exists():
        raise MtbenchError(f"{results_dir / 'runs' / run_id} already exists; give another --run-id")
    output = combine_runs(list(run_dirs), results_dir, run_id)
    print_summary(output)
    console.print(f"combined {len(run_dirs)} runs into {output.run_dir}")


def _parse_delays(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        delays = [int(d) for d in spec.split(",")]
    except ValueError:
        raise MtbenchError(f"cannot read --delays {spec!r}: use a comma list of scans, e.g. 1,2,3,4") from None
    if min(delays) < 0:
        raise MtbenchError(f"--delays {spec!r}: delays are scans after the word, >= 0")
    return delays


def _parse_alphas(spec: str) -> list[float]:
    import numpy as np

    try:
        if ":" in spec:
            lo, hi, count = spec.split(":")
            ends = [float(lo), float(hi)]
            if int(count) < 1 or min(ends) <= 0:
                raise MtbenchError(f"--alphas {spec!r}: start and stop must be positive and count at least 1, "
                                   "e.g. 1e0:1e8:9")
            values = np.logspace(np.log10(ends[0]), np.log10(ends[1]), int(count)).tolist()
        else:
            values = [float(a) for a in spec.split(",")]
    except ValueError:
        raise MtbenchError(f"cannot read --alphas {spec!r}: use 'start:stop:count' or a comma list") from None
    if not all(np.isfinite(v) and v > 0 for v in values):  # NaN compares False both ways: test each
        raise MtbenchError(f"--alphas {spec!r}: every penalty must be positive and finite")
    return values


def print_summary(output, top: int = 15) -> None:
    """Best layer x state per parcel (chosen on validation), and the planted-truth check (Mode 2: its own table)."""
    rows = output.summary
    if rows and rows[0].get("mode") == 2:
        from .mode2 import print_summary as print_mode2_summary

        print_mode2_summary(output, console)
        return
    brain, parcels = rows[0], sorted(rows[1:], key=lambda r: -r["test"])
    has_ceiling = any(r["ceiling"] == r["ceiling"] for r in rows)  # not NaN
    table = Table(title=f"Best layer x state per parcel — top {top} by held-out r",
                  caption="winner chosen on validation folds; r test = held-out r of choosing the best fit "
                          "inside each outer fold (nested, unbiased); agree = share of folds picking the winner")
    for col in ("parcel", "voxels", "layer", "state", "r val", "r test", "agree"):
        table.add_column(col, justify="left" if col in ("parcel", "state") else "right")
    if has_ceiling:
        table.add_column("ceiling", justify="right")
    has_significance = any(r.get("share_significant", float("nan")) == r.get("share_significant") for r in rows)
    table.add_column("95% CI (runs)", justify="right")
    if has_significance:
        table.add_column("signif.", justify="right")
    for row in [brain, *parcels[:top]]:
        cells = [row["parcel"], str(row["n_voxels"]), str(row["layer"]), row["state"],
                 f"{row['validation']:.3f}", f"{row['test']:.3f}", f"{row['folds_agree']:.0%}"]
        if has_ceiling:
            cells.append(f"{row['ceiling']:.3f}")
        cells.append(f"{row['test_ci_low']:.3f}..{row['test_ci_high']:.3f}" if "test_ci_low" in row else "")
        if has_significance:  # share of the parcel's voxels where the winner is significant (BH-FDR)
            cells.append(f"{row['share_significant']:.0%}")
        table.add_row(*cells)
    console.print(table)
    print_truth_check(output, "Planted truth (simulated dataset): recovered?", "r test")


def print_truth_check(output, title: str, score_label: str, out: Console = console) -> None:
    """The planted-truth table of a simulated dataset (if any), then where the results are."""
    if output.truth_check:
        check = Table(title=title)
        for col in ("parcel", "planted", "found", score_label, "ok"):
            check.add_column(col)
        for row in output.truth_check:
            check.add_row(row["parcel"], row["planted"], row["found"], f"{row['test']:.3f}",
                          "[green]yes[/green]" if row["recovered"] else "[red]no[/red]")
        out.print(check)
    out.print(f"results: {output.run_dir}  ({output.seconds:.0f} s)")


from .board_commands import leaderboard_command, report_command  # noqa: E402

main.add_command(leaderboard_command)
main.add_command(report_command)

from .sweep_cli import sweep  # noqa: E402  (the command lives in its own module)

main.add_command(sweep)

from .data_cli import data as _data_group  # noqa: E402

main.add_command(_data_group)


if __name__ == "__main__":  # pragma: no cover
    main()
