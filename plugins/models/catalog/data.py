"""The catalog of models by name, read from ``models.toml`` (data, not code).

Each ``[[model]]`` of ``models.toml`` is a :class:`CatalogModel`: the name users type, the hub
repository of its weights, its family (``config.model_type``), its published parameter count
and its architecture numbers (which plan a sweep's resources without loading the model, see
``mtbench_plugins.commands.sweep.resources``). A model whose family publishes training
checkpoints as hub revisions (Pythia's ``stepN``) names a ``[checkpoints.NAME]`` schedule.

Nothing here imports torch, transformers or huggingface_hub: ``mtbench list models`` reads it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import tomllib

from mtbench.errors import MtbenchError

from ..hf.families import HOOK_MAPS

#: Multimodal families whose text model is a family the HF adapter reads: loading keeps only the text model
#: (``mtbench_plugins.models.hf.loading``), e.g. Gemma 3 4B/12B/27B (``gemma3``) -> ``gemma3_text``.
MULTIMODAL_TEXT = {"gemma3": ("gemma3_text", "Gemma3ForCausalLM")}


@dataclass(frozen=True)
class Checkpoints:
    """Training checkpoints published as hub revisions ``<prefix><step>``.

    Attributes
    ----------
    prefix : str
        ``"step"``: revision ``step1000`` is the weights after 1000 optimizer steps.
    steps : tuple of int
        Every published step, ascending.
    tokens_per_step : int
        Training tokens per step (0: unknown).
    """

    prefix: str
    steps: tuple[int, ...]
    tokens_per_step: int = 0

    def revision(self, step: int) -> str:
        return f"{self.prefix}{step}"

    def step_of(self, revision: str) -> int | None:
        """``"step1000"`` -> 1000; None for a revision that is not one of these checkpoints."""
        match = re.fullmatch(re.escape(self.prefix) + r"(\d+)", revision)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class CatalogModel:
    """One model of the catalog (see the header of ``models.toml`` for each key)."""

    name: str
    hub_id: str
    family: str
    series: str
    params: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int
    vocab: int
    tied_embeddings: bool
    gated: bool = False
    reference: str = ""
    experts: int = 0
    experts_per_token: int = 0
    ffn_matrices: int = 3
    vision_params: int = 0
    checkpoints: Checkpoints | None = None

    @property
    def supported(self) -> bool:
        """Whether the HF adapter knows the family (where each state sits), or that of its text model."""
        return self.family in HOOK_MAPS or self.family in MULTIMODAL_TEXT

    def summary(self) -> str:
        """One line for ``mtbench list models``: hub id, blocks, checkpoints, gate, support."""
        parts = [f"{self.hub_id}, {self.layers} blocks" + (f", {self.experts} experts" if self.experts else "")]
        if self.checkpoints is not None:
            steps = self.checkpoints.steps
            parts.append(f"{len(steps)} training checkpoints ({self.name}:{self.checkpoints.revision(steps[0])} ... "
                         f":{self.checkpoints.revision(steps[-1])})")
        if self.gated:
            parts.append("gated: HF_TOKEN")
        if not self.supported:
            parts.append(f"family {self.family} not read by the HF adapter yet")
        return "; ".join(parts)

    def architecture_params(self) -> int:
        """Parameters of the language model counted from the architecture numbers (no norms, no biases).

        Embeddings (twice when untied) + per block: the q, k, v and output projections and the
        FFN's matrices (``ffn_matrices`` of ``hidden x ffn`` each, per expert, plus the router).
        Agrees with the published count to a few percent (the test checks it): what it leaves
        out (norms, biases, a vision tower: ``vision_params``) is small or listed.
        """
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        ffn = self.ffn_matrices * self.hidden * self.ffn * max(self.experts, 1)
        router = self.hidden * self.experts
        return embeddings + self.layers * (attention + ffn + router)

    def active_params(self) -> int:
        """Parameters one token goes through (a Mixture-of-Experts model uses ``experts_per_token`` experts)."""
        if not self.experts:
            return self.params - self.vision_params
        unused = self.layers * self.ffn_matrices * self.hidden * self.ffn * (self.experts - self.experts_per_token)
        return self.params - self.vision_params - unused

    def revision(self, argument: str | None) -> str | None:
        """The hub revision ``NAME:ARGUMENT`` asks for (None: the default branch), checked against the
        published checkpoints when the model has some."""
        if argument is None or not str(argument).strip():
            return None
        argument = str(argument).strip()
        if self.checkpoints is not None:
            step = self.checkpoints.step_of(argument)
            if step is None or step not in self.checkpoints.steps:
                steps = self.checkpoints.steps
                raise MtbenchError(f"{self.name} has no checkpoint {argument!r}: its checkpoints are "
                                   f"{self.checkpoints.revision(steps[0])}, {self.checkpoints.revision(steps[1])} ... "
                                   f"{self.checkpoints.revision(steps[-1])} ({len(steps)}; "
                                   f"`mtbench list models`); use e.g. {self.name}:{self.checkpoints.revision(steps[-1])}")
        return argument

    def local_folder(self, revision: str | None = None) -> Path | None:
        """The snapshot folder of the weights in the Hugging Face cache, or None when they are not there."""
        repo = hub_cache() / f"models--{self.hub_id.replace('/', '--')}"
        ref = repo / "refs" / (revision or "main")
        try:
            commit = ref.read_text().strip() if ref.is_file() else (revision or "")
        except OSError:
            return None
        folder = repo / "snapshots" / commit if commit else None
        if folder is None or not (folder / "config.json").is_file():
            return None
        return folder if any(folder.glob("*.safetensors")) else None


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, as ``huggingface_hub`` finds it (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _schedule(raw: dict) -> Checkpoints:
    steps = set(raw.get("steps", []))
    if raw.get("every"):
        steps |= set(range(raw["every"], raw["last"] + 1, raw["every"]))
    return Checkpoints(prefix=raw["prefix"], steps=tuple(sorted(steps)), tokens_per_step=raw.get("tokens_per_step", 0))


def read_catalog(text: str) -> dict[str, CatalogModel]:
    """Name -> :class:`CatalogModel` from the text of a catalog file (the format of ``models.toml``)."""
    raw = tomllib.loads(text)
    schedules = {name: _schedule(table) for name, table in raw.get("checkpoints", {}).items()}
    models = {}
    for entry in raw.get("model", []):
        entry = dict(entry)
        if "checkpoints" in entry:
            entry["checkpoints"] = schedules[entry["checkpoints"]]
        model = CatalogModel(**entry)
        if model.name in models or ":" in model.name:
            raise ValueError(f"catalog: {model.name!r} is listed twice or contains ':'")
        models[model.name] = model
    return models


@lru_cache(maxsize=1)
def catalog() -> dict[str, CatalogModel]:
    """The built-in catalog (``models.toml`` of this package)."""
    return read_catalog(resources.files(__package__).joinpath("models.toml").read_text(encoding="utf-8"))
