"""Registration (imported by `mtbench list`: no torch, no scipy work here)."""

from mtbench.api import AnalysisEntry, MetricEntry, ModelEntry
from mtbench.hookspecs import hookimpl

from .commands import rsa_table
from .rsa_schema import SCHEMA as RSA_SCHEMA


def _spearman(y_true, y_pred):
    from mtbench_example.spearman import spearman_r

    return spearman_r(y_true, y_pred)


def _load_tiny(argument=None, **options):
    from mtbench_example.tiny_model import load_tiny_example

    return load_tiny_example(argument, **options)


def _load_rsa():
    from mtbench_example.rsa import Rsa

    return Rsa()


@hookimpl
def register_metrics():
    return [MetricEntry(name="spearman", summary="Spearman rank correlation per voxel (example plugin)",
                        score=_spearman)]


@hookimpl
def register_models():
    return [ModelEntry(name="tiny-example", summary="tiny random Llama, 3 blocks (example plugin; for tests)",
                       load=_load_tiny, family="llama")]


@hookimpl
def register_analyses():
    return [AnalysisEntry(name="rsa", summary="representational similarity per parcel: linear CKA and RDM "
                                              "correlation of each (layer, state), nothing fitted (example plugin)",
                          load=_load_rsa, schema=RSA_SCHEMA, hint="choose states with --states")]


@hookimpl
def register_commands(cli):
    cli.add_command(rsa_table)
