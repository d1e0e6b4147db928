"""Head-resolved maps (``--mode heads``): a planted head is recovered as that head, GQA-aware.

The planted head: the tiny planted dataset is simulated from a truth model that is the tiny
Llama with every head of L2 ``per_head_q_rope`` but one set to 0, so Heschl's gyrus is driven
by that one head only; the run fits the unmasked model, one head at a time.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from mtbench_plugins.analyses.heads.analysis import head_counts
from mtbench_plugins.testing import check_analysis, check_analysis_result

from mtbench.api import ModelEntry
from mtbench.errors import MtbenchError
from mtbench.registry import get_registry, load_dataset, load_model
from mtbench.runner import run
from mtbench.schema import read_map, read_map_index, read_whole_run
from mtbench.settings import RunSettings

HESCHL = "Heschl's Gyrus (includes H1 and H2)"
PLANTED_HEAD = 1


class OneHead:
    """A model whose ``state`` keeps only head ``head`` (the others 0): what the planted BOLD is made from."""

    def __init__(self, inner, state: str, head: int):
        self.inner, self.state, self.head = inner, state, head
        self.name, self.revision = f"{inner.name}-only-head-{head}", f"{inner.revision}-h{head}"
        self.family, self.n_layers = inner.family, inner.n_layers

    def available_states(self):
        return self.inner.available_states()

    def settings(self):
        return self.inner.settings() | {"only_head": [self.state, self.head]}

    def extract(self, stimulus, states, layers, progress=None):
        out = self.inner.extract(stimulus, states, layers, progress=progress)
        n = head_counts(self.inner)[self.state]
        for (layer, state), runs in out.items():
            if state == self.state:
                for x in runs:
                    width = x.shape[1] // n
                    keep = x[:, self.head * width:(self.head + 1) * width].copy()
                    x[:] = 0
                    x[:, self.head * width:(self.head + 1) * width] = keep
        return out


@pytest.fixture
def planted_head(tmp_path, monkeypatch):
    from run_helpers import tiny_run_settings

    settings = tiny_run_settings(tmp_path, monkeypatch, ["per_head_q_rope", "per_head_k"], "per_head_q_rope", 0)
    model = settings.model
    monkeypatch.setitem(get_registry().entries["model"], "only-head", ModelEntry(
        name="only-head", summary="the tiny Llama with one head of per_head_q_rope kept (test)",
        load=lambda argument=None, **o: OneHead(load_model(model), "per_head_q_rope", PLANTED_HEAD)))
    return replace(settings, mode="heads", dataset_options=settings.dataset_options | {"truth_model": "only-head"})


def test_a_planted_head_is_recovered_as_that_head(planted_head, tmp_path):
    output = run(planted_head, tmp_path / "results")
    by_parcel = {row["parcel"]: row for row in output.summary}
    found = by_parcel[HESCHL]
    assert (found["layer"], found["state"], found["head"]) == (2, "per_head_q_rope", PLANTED_HEAD)
    assert found["n_heads"] == 4 and found["test"] > 0.1
    folder = read_whole_run(output.run_dir)
    meta = json.loads((output.run_dir / "manifest.json").read_text())
    assert meta["heads"]["n_heads"] == {"per_head_q_rope": 4, "per_head_k": 2}  # queries 4, keys 2 (GQA)
    # the brain map of the winning head names that head in most of Heschl's gyrus
    codes = read_map_index(output.run_dir)["best_head.nii.gz"]
    winners = np.asarray(read_map(output.run_dir, "best_head.nii.gz").dataobj)
    dataset = load_dataset(planted_head.dataset, **planted_head.dataset_options)
    mask = np.asarray(dataset.mask_img.dataobj) > 0
    voxels = winners[mask][dataset.parcels.labels == found["parcel_id"]]
    names, counts = np.unique([codes[str(v)] for v in voxels], return_counts=True)
    assert names[np.argmax(counts)] == f"L2 per_head_q_rope h{PLANTED_HEAD}"
    # the seam: read back, combined, drawn, ranked
    analysis = check_analysis(get_registry().analysis("heads"))
    combined = analysis.combine([folder], meta)
    check_analysis_result(combined)
    assert combined.summary == output.summary
    figures = [name for name, _, _ in analysis.figures(folder)]
    assert figures[0] == "best_head_map.png" and "heads_whole_brain.png" in figures
    assert analysis.board_cells(folder)[0]["note"].startswith("head ")


def test_heads_takes_only_per_head_states():
    analysis = get_registry().analysis("heads").load()
    with pytest.raises(MtbenchError, match="^state 'attn_output' has no heads: --mode heads fits per_head_q"):
        analysis.check(RunSettings(model="m", dataset="d", states=["attn_output"], mode="heads"))
    assert analysis.states(RunSettings(model="m", dataset="d", states=["all"]),
                           ["input_hidden_state", "per_head_q", "per_head_v", "attn_output"]) == ["per_head_q",
                                                                                                   "per_head_v"]

    with pytest.raises(MtbenchError, match="^this model has no per-head state"):
        analysis.states(RunSettings(model="m", dataset="d", states=["all"]), ["embedding"])

    class NoHeads:
        name = "bag-of-words"

    with pytest.raises(MtbenchError, match="does not say how many attention heads"):
        head_counts(NoHeads())
