"""mtbench: which computation inside a transformer block best explains each brain region.

The core is small on purpose; every model, state, dataset and metric is a plugin
registered through the ``mtbench`` entry-point group (see :mod:`mtbench.hookspecs`).
"""

__version__ = "0.1.0"
