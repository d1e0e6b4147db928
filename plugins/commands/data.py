"""``mtbench data fetch|prepare|simulate NAME``: dataset housekeeping commands.

The core knows no dataset: each command looks the dataset up in the registry and calls the
matching optional callable of its :class:`~mtbench.api.DatasetEntry`:

- ``entry.fetch(root=, subjects=, annotations_only=, jobs=, progress=, **options)`` downloads;
- ``entry.prepare(root=, subjects=, progress=, **options)`` derives what ``load`` reads;
- ``entry.simulate(out=, truth=, source=, seed=, progress=, **options)`` writes a simulated
  dataset directory.

Each returns a short text summary (printed) or None. ``root=None`` means the plugin's default
location. ``--option KEY=VALUE`` passes plugin-specific settings.
"""

from __future__ import annotations

from pathlib import Path

import click

from mtbench.cli.options import OUT_FOLDER, key_value_options
from mtbench.display import console, progress_bars
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry


def _entry_callable(name: str, command: str):
    entry = get_registry().dataset(name)  # unknown name -> closest names
    func = getattr(entry, command, None)
    if func is None:
        offering = [n for n, e in get_registry().entries["dataset"].items() if getattr(e, command, None)]
        raise MtbenchError(f"dataset {name!r} has no `data {command}` command; datasets that do: "
                           f"{', '.join(sorted(offering)) or 'none'}")
    return func


def _subjects(spec: str | None) -> list[str] | None:
    return None if not spec else [s.strip() for s in spec.split(",") if s.strip()]


def _progress():
    return progress_bars(console, download=True)


def _plain_progress():
    return progress_bars(console)


def _finish(result) -> None:
    if result:
        click.echo(str(result))


@click.group("data")
def data():
    """Fetch, prepare or simulate a dataset (where its plugin offers it)."""


def _plugin_options(pairs):
    return key_value_options(pairs, "--option")


@data.command("fetch")
@click.argument("name")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Where the dataset goes (plugin default).")
@click.option("--subjects", default=None, help="Comma list of subject ids (default: all).")
@click.option("--annotations-only", is_flag=True, help="Only the word annotation and metadata, no BOLD.")
@click.option("--jobs", default=4, show_default=True, help="Parallel downloads.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Plugin-specific setting.")
def fetch(name, root, subjects, annotations_only, jobs, options):
    """Download a dataset (resumable; a re-run downloads only what is missing or corrupt)."""
    func = _entry_callable(name, "fetch")
    with _progress() as progress:
        result = func(root=root, subjects=_subjects(subjects), annotations_only=annotations_only, jobs=jobs,
                      progress=progress, **_plugin_options(options))
    _finish(result)


@data.command("prepare")
@click.argument("name")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="The fetched dataset (plugin default).")
@click.option("--subjects", default=None, help="Comma list of subject ids (default: all fetched).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Plugin-specific setting.")
def prepare(name, root, subjects, options):
    """Derive what runs read (resampled BOLD, mask, average subject, reliability) from fetched files."""
    func = _entry_callable(name, "prepare")
    with _plain_progress() as progress:
        result = func(root=root, subjects=_subjects(subjects), progress=progress, **_plugin_options(options))
    _finish(result)


@data.command("simulate")
@click.argument("name")
@click.option("--truth", default=None, help="Planted truth: JSON list (or a JSON file) of parcel/model/layer/state/weight.")
@click.option("--out", type=OUT_FOLDER, default=None, help="Output dataset directory (plugin default).")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Folder with the real annotation, mask and reliability (plugin default / fallback).")
@click.option("--seed", default=0, show_default=True)
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Plugin-specific setting.")
def simulate(name, truth, out, source, seed, options):
    """Write a simulated dataset with a planted truth that `mtbench run` can be scored against."""
    func = _entry_callable(name, "simulate")
    with _plain_progress() as progress:
        result = func(out=out, truth=truth, source=source, seed=seed, progress=progress, **_plugin_options(options))
    _finish(result)
