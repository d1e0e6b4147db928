"""Built-in mtbench plugins, installed as ``mtbench_plugins``.

They register through the same ``mtbench`` entry-point group and hooks as any
third-party plugin; the core has no list of them.
"""
