"""The hooks a plugin may implement.

A plugin is any module registered under the ``mtbench`` entry-point group that
implements some of these functions, decorated with :data:`mtbench.hookimpl`.
Every hook returns a list of small, import-cheap *entries*; heavy work (torch,
transformers, reading data) happens only when an entry's ``load`` is called.
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
