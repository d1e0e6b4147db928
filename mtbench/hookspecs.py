"""The hooks a plugin may implement.

A plugin is any module registered under the ``mtbench`` entry-point group that
implements some of these functions, decorated with :data:`mtbench.hookimpl`.
The ``register_*`` hooks that take no argument return a list of small, import-cheap
*entries*; heavy work (torch, transformers, reading data) happens only when an entry's
``load`` is called. :func:`register_commands` adds click commands to the ``mtbench`` group.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mtbench")
hookimpl = pluggy.HookimplMarker("mtbench")


@hookspec
def register_models():
    """Models this plugin provides.

    Returns
    -------
    list of mtbench.api.ModelEntry
        ``entry.load(**options)`` returns an object satisfying
        :class:`mtbench.api.ModelAdapter`.
    """


@hookspec
def register_states():
    """Intermediate states (extraction points) this plugin defines.

    Returns
    -------
    list of mtbench.api.StateDefinition
    """


@hookspec
def register_datasets():
    """Datasets this plugin provides.

    Returns
    -------
    list of mtbench.api.DatasetEntry
        ``entry.load(**options)`` returns an object satisfying
        :class:`mtbench.api.Dataset`.
    """


@hookspec
def register_metrics():
    """Scoring functions this plugin provides.

    Returns
    -------
    list of mtbench.api.MetricEntry
    """


@hookspec
def register_executors():
    """Executors ``mtbench sweep`` can run its tasks on (``--executor NAME``).

    Returns
    -------
    list of mtbench.api.ExecutorEntry
        ``entry.load(**options)`` returns an object satisfying
        :class:`mtbench.api.Executor`.
    """


@hookspec
def register_analyses():
    """Analyses a run can fit (``mtbench run --mode NAME``): what it fits, writes, ranks and draws.

    Returns
    -------
    list of mtbench.api.AnalysisEntry
        ``entry.load()`` returns an object satisfying :class:`mtbench.api.Analysis`.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``mtbench`` command line.

    Parameters
    ----------
    cli : click.Group
        The ``mtbench`` group: ``cli.add_command(command)`` or ``@cli.command()``. A name that
        is already taken is refused (the plugin is marked failed); the command's module imports
        its heavy dependencies when it runs, not here.
    """
