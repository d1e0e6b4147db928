"""``mtbench plugin new KIND NAME``: write a working plugin package skeleton.

The skeleton is a pip-installable package with the ``mtbench`` entry point, one
implementation of KIND (model, dataset, metric or state) and a test that runs mtbench's
conformance kit on it; it passes as generated. The files come from
``templates/`` beside this module (package data): ``common/`` for every kind, ``<KIND>/``
for the kind's hooks, implementation and test.
"""

from __future__ import annotations

import re
import shutil
import zlib
from importlib import resources
from pathlib import Path
from string import Template

import click

from mtbench.errors import MtbenchError
from mtbench.paths import writable_folder

KINDS = ("model", "dataset", "metric", "state")
_HOOKS = {"model": "register_models", "dataset": "register_datasets", "metric": "register_metrics",
          "state": "register_states"}
_SUMMARIES = {
    "model": "toy context model {name} (replace with yours)",
    "dataset": "tiny simulated dataset {name} (replace with your data)",
    "metric": "{name}: coefficient of determination (R^2) per voxel",
    "state": "{name}: describe the tensor this state is, in words",
}
# template file (relative to its template folder) -> path in the generated package
_LAYOUT = {
    ("common", "pyproject.toml.tmpl"): "pyproject.toml",
    ("common", "README.md.tmpl"): "README.md",
    ("common", "__init__.py.tmpl"): "src/{package}/__init__.py",
    ("kind", "hooks.py.tmpl"): "src/{package}/hooks.py",
    ("kind", "impl.py.tmpl"): "src/{package}/{module}.py",
    ("kind", "test_conformance.py.tmpl"): "tests/test_conformance.py",
}


def plugin_names(kind: str, name: str) -> dict[str, str]:
    """Every name the templates use, derived from KIND and NAME.

    ``NAME`` is what users type (``--metric NAME``); states are lower_snake_case.

    Returns
    -------
    dict
        ``name``, ``kind``, ``distribution`` (``mtbench-NAME``), ``package``
        (``mtbench_NAME``), ``module``, ``entry_point``, ``class_name``, ``hook``,
        ``summary``, ``stage``, ``order``.
    """
    if kind not in KINDS:
        raise MtbenchError(f"unknown plugin kind {kind!r}: use one of {', '.join(KINDS)}")
    # a folder and distribution name, never a path: a letter first, a letter or digit last (PEP 508), short
    pattern = r"[a-z](?:[a-z0-9_]*[a-z0-9])?" if kind == "state" else r"[a-z](?:[a-z0-9-]*[a-z0-9])?"
    if not re.fullmatch(pattern, name) or len(name) > 64:
        example = "my_state" if kind == "state" else "my-" + kind
        raise MtbenchError(f"plugin name {name!r} is not valid for a {kind}: use lower case letters, digits and "
                           f"{'_' if kind == 'state' else '-'}, a letter first, no {'_' if kind == 'state' else '-'} "
                           f"last, at most 64 characters (e.g. {example})")
    snake = name.replace("-", "_")
    return {
        "name": name,
        "kind": kind,
        "distribution": f"mtbench-{snake.replace('_', '-')}",
        "package": f"mtbench_{snake}",
        "module": kind,
        "entry_point": snake,
        "class_name": "".join(part.capitalize() for part in snake.split("_")) + kind.capitalize(),
        "hook": _HOOKS[kind],
        "summary": _SUMMARIES[kind].format(name=name),
        "stage": "custom",
        # a stable order after the built-in states, distinct across plugins with other names
        "order": str(1000 + zlib.crc32(name.encode()) % 100000),
    }


def new_plugin(kind: str, name: str, parent: str | Path = ".") -> Path:
    """Write the package ``mtbench-NAME`` under ``parent`` and return its folder.

    Raises
    ------
    MtbenchError
        Unknown kind, invalid name, or the folder exists and is not empty.
    """
    names = plugin_names(kind, name)
    root = Path(parent) / names["distribution"]
    if root.exists() and any(root.iterdir()):
        raise MtbenchError(f"{root} already exists and is not empty: choose another NAME or --dir")
    made = not root.exists()
    writable_folder(root, fix="give --dir a folder you can write to")  # before any file: no half a package
    templates = resources.files(__package__) / "templates"
    try:
        for (folder, template), target in _LAYOUT.items():
            source = templates / (kind if folder == "kind" else folder) / template
            text = Template(source.read_text(encoding="utf-8")).substitute(names)
            path = root / target.format(**names)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:  # the disk filled up, a quota
        if made:
            shutil.rmtree(root, ignore_errors=True)
        raise MtbenchError(f"could not write {root} ({exc.strerror or exc}); free space there or give --dir "
                           "another folder") from None
    return root


@click.group("plugin")
def plugin_group():
    """Write plugins: `mtbench plugin new KIND NAME`."""


@plugin_group.command("new")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("name")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder in which to create mtbench-NAME/.")
def new_command(kind, name, parent):
    """Create a plugin package mtbench-NAME: entry point, one KIND implementation, a conformance test."""
    root = new_plugin(kind, name, parent)
    click.echo(f"created {root}\nnext: cd {root} && pip install -e '.[test]' && pytest")
