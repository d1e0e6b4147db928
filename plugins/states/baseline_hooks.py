"""The one state of the non-transformer baselines (GloVe, random, word rate, ...).

A baseline has no blocks: it exposes a single "layer" (1) with a single state,
``embedding``, the baseline's word vector. Transformer adapters never list it in their
``available_states()``, so ``--states all`` on a transformer is unchanged.
"""

from mtbench.api import StateDefinition
from mtbench.hookspecs import hookimpl


@hookimpl
def register_states():
    return [
        StateDefinition(name="embedding", stage="baseline", description="the baseline's word vector", order=100),
    ]
