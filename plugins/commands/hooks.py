"""The built-in commands, added through the same ``register_commands`` hook as any plugin's.

``mtbench run``, ``list`` and ``plugins`` belong to the core (:mod:`mtbench.cli`); every other
command is here: ``sweep``, ``leaderboard``, ``report``, ``combine``, ``rescore``, ``data`` and
``plugin new``, ``compare``. Each command's module imports its engine's heavy dependencies when it runs.
"""

from __future__ import annotations

from mtbench.hookspecs import hookimpl

from .board.cli import leaderboard_command, report_command
from .compare.cli import compare_command
from .data import data
from .runs.cli import combine, rescore
from .scaffold.scaffold import plugin_group
from .sweep.cli import sweep


@hookimpl
def register_commands(cli):
    for command in (sweep, leaderboard_command, report_command, combine, rescore, data, plugin_group,
                    compare_command):
        cli.add_command(command)
