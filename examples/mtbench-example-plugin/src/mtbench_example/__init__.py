"""Example third-party mtbench plugin: the ``spearman`` metric and the ``tiny-example`` model."""
