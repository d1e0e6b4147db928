"""Registration of the Le Petit Prince datasets (no heavy import here)."""

from functools import partial

from mtbench.api import DatasetEntry
from mtbench.hookspecs import hookimpl


def _load(key, name, **options):
    from mtbench_plugins.datasets.lpp.dataset import load_lpp

    return load_lpp(key, name=name, **options)


def _fetch(key, **kwargs):
    from mtbench_plugins.datasets.lpp.fetch import fetch_lpp

    return fetch_lpp(key, **kwargs)


def _prepare(key, **kwargs):
    from mtbench_plugins.datasets.lpp.prepare import prepare_lpp

    return prepare_lpp(key, **kwargs)


def _simulate(**kwargs):
    from mtbench_plugins.datasets.lpp.simulate import simulate_lpp

    return simulate_lpp(**kwargs)


_LANGUAGES = {"en": ("English", "en"), "fr": ("French", "fr"), "cn": ("Chinese", "zh")}


@hookimpl
def register_datasets():
    entries = [
        DatasetEntry(
            name=f"lpp-{key}",
            summary=f"Le Petit Prince, {label} (OpenNeuro ds003643): `mtbench data fetch lpp-{key}` then `prepare`",
            load=partial(_load, key, f"lpp-{key}"),
            language=iso,
            fetch=partial(_fetch, key),
            prepare=partial(_prepare, key),
            simulate=_simulate if key == "en" else None,
        )
        for key, (label, iso) in _LANGUAGES.items()
    ]
    entries.append(DatasetEntry(
        name="lpp-en-sim",
        summary="Le Petit Prince English timing, real mask and reliability, simulated BOLD with a planted truth "
                "(`mtbench data simulate lpp-en`)",
        load=partial(_load, "en", "lpp-en-sim"),
        language="en",
        simulate=_simulate,
    ))
    return entries
