"""Registration of the embedded default dataset (no heavy import here)."""

from mtbench.api import DatasetEntry
from mtbench.hookspecs import hookimpl


def _load_synthetic(**options):
    from mtbench_plugins.datasets.synthetic import load_synthetic

    return load_synthetic(**options)


@hookimpl
def register_datasets():
    return [
        DatasetEntry(
            name="synthetic",
            summary="embedded default: an original English story, simulated BOLD with a planted truth, 4 mm MNI",
            load=_load_synthetic,
            language="en",
        )
    ]
