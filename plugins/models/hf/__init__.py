"""Hugging Face causal language models as mtbench model adapters.

One adapter class serves every supported architecture family; what differs between
families is *where* each of the 13 block states sits, and that is data. Modules:

- :mod:`.families` -- :class:`FamilySpec` and :data:`HOOK_MAPS`, one spec per family (no torch);
- :mod:`.taps` -- forward hooks and attention-function taps that capture the states;
- :mod:`.words` -- words <-> tokens, context windows, the tokenizer's special prefix;
- :mod:`.adapter` -- :class:`HFAdapter`: windows, word pooling, the ``ModelAdapter`` contract;
- :mod:`.loading` -- ``hf:<path-or-id>``, the built-in GGUF models, the untrained control;
- :mod:`.gguf` -- GGUF files converted once into cached HF folders;
- :mod:`.runtime` -- dtypes, devices, quiet loading;
- :mod:`.tiny` -- tiny random models of every family, for tests and plugin authors (no torch
  at import).

Nothing is imported here, so that :mod:`.families` and :mod:`.tiny` stay light: import
from the modules (``from mtbench_plugins.models.hf.loading import load_hf``).
"""
