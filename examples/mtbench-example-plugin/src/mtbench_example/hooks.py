"""Registration (imported by `mtbench list`: no torch, no scipy work here)."""

from mtbench.api import MetricEntry, ModelEntry
from mtbench.hookspecs import hookimpl


def _spearman(y_true, y_pred):
    from mtbench_example.spearman import spearman_r

    return spearman_r(y_true, y_pred)


def _load_tiny(argument=None, **options):
    from mtbench_example.tiny_model import load_tiny_example

    return load_tiny_example(argument, **options)


@hookimpl
def register_metrics():
    return [MetricEntry(name="spearman", summary="Spearman rank correlation per voxel (example plugin)",
                        score=_spearman)]


@hookimpl
def register_models():
    return [ModelEntry(name="tiny-example", summary="tiny random Llama, 3 blocks (example plugin; for tests)",
                       load=_load_tiny, family="llama")]
