"""The catalog of models by name (``plugins/models/catalog/models.toml``): its numbers against the
reference's table and its own architecture, and resolution through a local stand-in for the
Hugging Face hub (by name, offline, a training-checkpoint revision, a gated model whose token is
never written anywhere)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from click.testing import CliRunner
from mtbench_plugins.models.catalog.data import catalog, read_catalog
from mtbench_plugins.models.hf.loading import load_catalog
from mtbench_plugins.models.hf.tiny import save_tiny_model

from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry, load_model

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mindtransformer-readme.txt"
HESCHL = "Heschl's Gyrus (includes H1 and H2)"
TOKEN = "hf_DummyTokenThatMustNeverBeWritten1234"


# --------------------------------------------------------------------------- a hub with revisions and gates
def commit_of(repo: str, revision: str) -> str:
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


class Hub:
    """``with Hub({repo_id: {revision: folder}}, gated={repo_id}) as url:`` serves model repositories
    as the Hugging Face hub does for ``snapshot_download``: each revision its own commit; a gated
    repository answers only requests carrying ``Authorization: Bearer TOKEN``. ``requests``
    records (path, authorization header) of every request."""

    def __init__(self, repos: dict[str, dict[str, Path]], gated: frozenset = frozenset()):
        self.repos, self.gated = repos, gated
        self.requests: list[tuple[str, str]] = []

    def __enter__(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body: bytes, headers=None, head=False):
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((path, self.headers.get("Authorization", "")))
                for repo, revisions in hub.repos.items():
                    api, files_at = f"/api/models/{repo}/", f"/{repo}/resolve/"
                    if not path.startswith((api, files_at)):
                        continue
                    if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        return self._send(401, b"{}", {"X-Error-Code": "GatedRepo",
                                                       "X-Error-Message": "Access to this model is restricted"}, head)
                    rest = path[len(api):].split("/", 1)[1] if path.startswith(api) else path[len(files_at):]
                    names = {**{r: r for r in revisions}, **{commit_of(repo, r): r for r in revisions}}
                    ref = next((r for r in sorted(names, key=len, reverse=True)
                                if rest == r or rest.startswith(r + "/")), None)
                    if ref is None:
                        return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, head)
                    revision, commit = names[ref], commit_of(repo, names[ref])
                    files = {p.name: p for p in sorted(revisions[revision].iterdir()) if p.is_file()}
                    if path.startswith(api + "revision/"):
                        info = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
                        return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                    if path.startswith(api + "tree/"):
                        tree = [{"type": "file", "path": f, "size": p.stat().st_size,
                                 "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in files.items()]
                        return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                    name = rest[len(ref) + 1:]
                    if name in files:
                        body = files[name].read_bytes()
                        return self._send(200, body, {"X-Repo-Commit": commit,
                                                      "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}, head)
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, head)
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny random models standing in for catalog models: a Qwen3, a Gemma 3 (text), two checkpoints of a Llama."""
    root = tmp_path_factory.mktemp("tiny-catalog")
    return {"qwen3": save_tiny_model(root / "qwen3", "qwen3", n_layers=2),
            "gemma3_text": save_tiny_model(root / "gemma", "gemma3_text", n_layers=2, add_bos=True),
            "step0": save_tiny_model(root / "step0", "llama", seed=0, n_layers=2),
            "step1000": save_tiny_model(root / "step1000", "llama", seed=1, n_layers=2),
            "gemma3": save_tiny_multimodal_gemma3(root / "gemma3", root / "gemma")}


def save_tiny_multimodal_gemma3(folder: Path, text_folder: Path) -> Path:
    """A random Gemma 3 with a vision tower (``model_type`` ``gemma3``, as Gemma 3 4B and larger), with
    the tiny tokenizer of ``text_folder``."""
    import shutil

    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = json.loads((text_folder / "config.json").read_text())
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision,
                                                            mm_tokens_per_image=4))
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (text_folder / name).is_file():
            shutil.copy(text_folder / name, folder / name)
    return folder


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """A fresh Hugging Face cache and mtbench cache; online, no token."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "mtbench-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path


def one_line_error(call) -> str:
    with pytest.raises(MtbenchError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------- the numbers
def reference_rows() -> dict[str, tuple[int, ...]]:
    """Model variant -> (hidden, heads, kv heads, head dim, FFN width, layers) from the reference README's table."""
    if not REFERENCE.is_file():
        pytest.skip(f"the reference README is not at {REFERENCE}")
    rows = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        variant = next((c for c in cells if re.search(r"\(\d[\d.]*[MB]\)$", c)), None)
        if variant is None:
            continue
        numbers = [int(re.sub(r"\D", "", c)) for c in cells[cells.index(variant) + 1:] if re.search(r"\d", c)]
        if len(numbers) >= 6:  # the architecture table (not the max-layer one)
            rows[variant] = tuple(numbers[:6])
    return rows


def test_catalog_agrees_with_the_reference_table_for_every_entry_it_lists():
    rows = reference_rows()
    assert len(rows) == 21  # the reference's 21 models
    listed = {m.reference: m for m in catalog().values() if m.reference}
    assert set(listed) == set(rows), set(rows) ^ set(listed)
    for variant, numbers in rows.items():
        m = listed[variant]
        assert (m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.layers) == numbers, variant


def test_published_parameter_counts_agree_with_the_architecture():
    """Embeddings + attention + FFN counted from the numbers within 2% of the model card's count
    (norms and biases left out; a multimodal model's vision tower is its own line): a wrong
    width or depth in the catalog moves the count by far more."""
    for m in catalog().values():
        counted = m.architecture_params()
        assert abs(counted / (m.params - m.vision_params) - 1) < 0.02, (m.name, counted, m.params)
    gpt = catalog()["gpt-oss-120b"]  # mixture of experts: 4 of 128 experts per token
    assert gpt.active_params() < gpt.params / 10


def test_registered_through_the_model_hook_with_size_family_and_hub_id():
    registry = get_registry()
    for m in catalog().values():
        entry = registry.model(m.name)
        assert registry.providers["model"][m.name] == "hf_models"
        assert (entry.family, entry.n_params, entry.source) == (m.family, m.params, m.hub_id)
        assert entry.architecture["layers"] == m.layers
    assert {"gemma3-270m", "smollm2-135m", "hf"} <= set(registry.names("model"))  # the built-ins kept their names


def test_pythia_checkpoints_and_refusals_before_any_download(monkeypatch, tmp_path):
    pythia = catalog()["pythia-160m"]
    steps = pythia.checkpoints.steps
    assert len(steps) == 154 and steps[:3] == (0, 1, 2) and steps[-1] == 143000 and 512 in steps
    assert pythia.revision("step1000") == "step1000"
    assert "step1001" in one_line_error(lambda: pythia.revision("step1001"))
    # gpt_neox is read: a checkpoint goes to the hub (none listens here: one line naming the revision)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    message = one_line_error(lambda: load_model("pythia-160m:step1000"))
    assert "EleutherAI/pythia-160m@step1000" in message and "cannot reach" in message
    # a family the adapter cannot read is refused by name before the hub is asked
    message = one_line_error(lambda: load_catalog(dataclasses.replace(pythia, family="bert")))
    assert "bert" in message and "does not read" in message


# --------------------------------------------------------------------------- through the hub
def test_a_name_resolves_through_the_hub_then_loads_offline(tiny, hub_env, monkeypatch):
    server = Hub({"Qwen/Qwen3-0.6B": {"main": tiny["qwen3"]}})
    listed = CliRunner().invoke(main, ["list", "models"], env={"COLUMNS": "250"})
    assert re.search(r"qwen3-0\.6b\s+│ qwen3\s+│\s+600M │ no", listed.output), listed.output
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        adapter = load_model("qwen3-0.6b")
    assert adapter.name == "qwen3-0.6b" and adapter.family == "qwen3" and adapter.n_layers == 2
    assert any(path.endswith("model.safetensors") for path, _ in server.requests)
    listed = CliRunner().invoke(main, ["list", "models"], env={"COLUMNS": "250"})
    assert re.search(r"qwen3-0\.6b\s+│ qwen3\s+│\s+600M │ yes", listed.output), listed.output
    # offline: the cached copy, same weights; a name never downloaded is the usual one line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_model("qwen3-0.6b").revision == adapter.revision
    message = one_line_error(lambda: load_model("qwen3-1.7b"))
    assert message.startswith("model Qwen/Qwen3-1.7B is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    assert "download it first" in message and "pass a local folder" in message
    # online, the hub unreachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert "cannot reach the Hugging Face hub for Qwen/Qwen3-1.7B" in one_line_error(lambda: load_model("qwen3-1.7b"))


CHECKPOINTED = """
[checkpoints.tiny]
prefix = "step"
steps = [0, 1000, 2000]

[[model]]
name = "tiny-ckpt"
hub_id = "tiny-org/tiny-ckpt"
family = "llama"
series = "Tiny"
params = 100_000
hidden = 64
heads = 4
kv_heads = 2
head_dim = 16
ffn = 128
layers = 2
vocab = 320
tied_embeddings = false
checkpoints = "tiny"
"""


def test_a_training_checkpoint_is_a_hub_revision(tiny, hub_env, monkeypatch):
    (model,) = read_catalog(CHECKPOINTED).values()
    server = Hub({"tiny-org/tiny-ckpt": {"main": tiny["step1000"], "step0": tiny["step0"],
                                         "step1000": tiny["step1000"]}})
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        early, late = load_catalog(model, "step0"), load_catalog(model, revision="step1000")
        assert "step5" in one_line_error(lambda: load_catalog(model, "step5"))
        asked = len(server.requests)
        missing = one_line_error(lambda: load_catalog(model, "step2000"))  # listed, but not on this hub
    assert "has no revision 'step2000'" in missing and len(server.requests) > asked
    assert not any("step5" in path for path, _ in server.requests)  # refused before asking
    assert (early.name, late.name) == ("tiny-ckpt@step0", "tiny-ckpt@step1000")
    assert early.revision != late.revision
    files_from = {path.split("/resolve/")[1].split("/")[0] for path, _ in server.requests if "/resolve/" in path}
    assert files_from == {commit_of("tiny-org/tiny-ckpt", "step0"), commit_of("tiny-org/tiny-ckpt", "step1000")}
    assert model.local_folder("step0") is not None and model.local_folder("step2000") is None


def test_a_gated_model_takes_its_token_from_the_environment_and_never_writes_it(tiny, hub_env, monkeypatch):
    """Every file the run writes (results, feature cache, Hugging Face cache) is searched for the token."""
    server = Hub({"google/gemma-3-270m-it": {"main": tiny["gemma3_text"]}}, gated=frozenset({"google/gemma-3-270m-it"}))
    out = hub_env / "results"
    args = ["run", "--model", "gemma-3-270m-it", "--layers", "1", "--states", "pre_attn_norm,ffn_output",
            "--dataset-option", "scale=tiny", "--dataset-option", "truth_model=random", "--dataset-option",
            "truth=" + json.dumps([{"parcel": HESCHL, "layer": 1, "state": "embedding"}]),
            "--alphas", "1e0:1e4:3", "--permutations", "0", "--out", str(out)]
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 2 and "is gated" in refused.output and "HF_TOKEN" in refused.output
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (f"Bearer {TOKEN}") in {auth for _, auth in server.requests}
    (manifest,) = out.glob("runs/*/manifest.json")
    assert json.loads(manifest.read_text())["model"]["name"] == "gemma-3-270m-it"
    written = [p for p in hub_env.rglob("*") if p.is_file()]
    assert len(written) > 10
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert not any(TOKEN in str(p) for p in written)
    assert np.isfinite(json.loads(manifest.read_text())["seconds"])


def test_checkpoint_runs_are_named_by_step_and_drawn_along_training_on_the_board(tiny, hub_env, monkeypatch):
    """Two checkpoints of a catalog model run by name (``NAME:stepN``), then `mtbench leaderboard`."""
    import functools

    from mtbench_plugins.models.hooks import _load_catalog

    from mtbench.api import ModelEntry

    (model,) = read_catalog(CHECKPOINTED).values()
    monkeypatch.setitem(get_registry().entries["model"], model.name, ModelEntry(
        name=model.name, summary=model.summary(), load=functools.partial(_load_catalog, model), family="llama"))
    server = Hub({"tiny-org/tiny-ckpt": {"step0": tiny["step0"], "step1000": tiny["step1000"]}})
    out = hub_env / "results"
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        for step in ("step0", "step1000"):
            result = CliRunner().invoke(main, [
                "run", "--model", f"tiny-ckpt:{step}", "--layers", "1", "--states", "ffn_output",
                "--dataset-option", "scale=tiny", "--dataset-option", "truth_model=random", "--dataset-option",
                "truth=" + json.dumps([{"parcel": HESCHL, "layer": 1, "state": "embedding"}]),
                "--alphas", "1e0:1e4:3", "--permutations", "0", "--out", str(out)])
            assert result.exit_code == 0, result.output
    names = sorted(json.loads(p.read_text())["model"]["name"] for p in out.glob("runs/*/manifest.json"))
    assert names == ["tiny-ckpt@step0", "tiny-ckpt@step1000"]
    board = CliRunner().invoke(main, ["leaderboard", str(out), "--out", str(hub_env / "board"), "--no-reports"])
    assert board.exit_code == 0, board.output
    assert (hub_env / "board" / "training.png").is_file() and not (hub_env / "board" / "scaling.png").exists()
    assert "Whole-brain score along training" in (hub_env / "board" / "index.html").read_text()


def test_a_multimodal_gemma3_runs_as_its_text_model(tiny, hub_env, monkeypatch):
    """Gemma 3 4B and larger are image-text models (``gemma3``): their text model is read, with the
    multimodal model's hidden states for text, and passes the model conformance kit."""
    import torch
    from mtbench_plugins.testing import check_model_adapter, tiny_stimulus
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with Hub({"google/gemma-3-4b-it": {"main": tiny["gemma3"]}}, gated=frozenset({"google/gemma-3-4b-it"})) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        adapter = load_model("gemma-3-4b-it")
    assert (adapter.name, adapter.family, adapter.n_layers) == ("gemma-3-4b-it", "gemma3_text", 2)
    full = AutoModelForCausalLM.from_pretrained(tiny["gemma3"]).eval()
    assert sum(p.numel() for p in full.parameters()) > adapter.n_params  # the vision tower is left out
    ids = torch.arange(5, 25)[None]
    with torch.no_grad():
        expected = full(input_ids=ids, output_hidden_states=True).hidden_states
        found = adapter.model(input_ids=ids, output_hidden_states=True).hidden_states
    for a, b in zip(expected, found, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    check_model_adapter(adapter, stimulus=tiny_stimulus())
