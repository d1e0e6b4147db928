"""Two processes asking for the same uncached features: the model runs once, the cache stays whole.

Two ``mtbench run`` of one model, or sweep cells of a (model, dataset) on a cold cache, used
to extract into one shared partial folder at once, each restarting (wiping) the other's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from concurrency import at_once

from mtbench.api import Stimulus, StimulusRun
from mtbench.features import word_features

STATES, LAYERS = ["per_head_v", "ffn_output"], [1, 2]


def _stimulus() -> Stimulus:
    runs = []
    for n_words in (7, 5):
        onsets = np.arange(n_words, dtype=float)
        runs.append(StimulusRun([f"w{i}" for i in range(n_words)], onsets, onsets + 0.5, n_scans=4))
    return Stimulus(language="en", tr=2.0, runs=runs)


def _expected(stimulus: Stimulus, layer: int, state: str, run: int) -> np.ndarray:
    """Distinct, exactly representable values for every (layer, state, run, word, dim)."""
    n_words = len(stimulus.runs[run].words)
    offset = 100 * layer + 10 * STATES.index(state) + run
    return (offset + np.arange(n_words * 3, dtype=np.float32).reshape(n_words, 3) / 4).astype(np.float32)


class SlowLoggingModel:
    """A model whose every extraction is logged (one line per call) and takes a while."""

    name, revision, n_layers, family = "slow-logging", "r1", 2, "test"

    def __init__(self, log: Path):
        self.log = log

    def settings(self) -> dict:
        return {}

    def extract(self, stimulus, states, layers, progress=None):
        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()} {sorted(states)} {sorted(layers)}\n")
        time.sleep(1.0)  # the other process asks meanwhile and finds nothing cached yet
        return {(layer, state): [_expected(stimulus, layer, state, r) for r in range(len(stimulus.runs))]
                for layer in layers for state in states}


def _ask(cache: str, log: str) -> dict:
    os.environ["MTBENCH_CACHE"] = cache
    features = word_features(SlowLoggingModel(Path(log)), _stimulus(), STATES, LAYERS)
    return {key: [np.asarray(x) for x in features[key]] for key in features}


def test_two_processes_extract_once_and_both_read_the_whole_cache(tmp_path):
    log = tmp_path / "extractions.log"
    answers = at_once(_ask, *[(str(tmp_path / "cache"), str(log))] * 2)
    assert all(isinstance(a, dict) for a in answers), answers
    assert len(log.read_text().splitlines()) == 1, log.read_text()  # the second waited, then read
    stimulus = _stimulus()
    for answer in answers:
        assert sorted(answer) == sorted((layer, state) for layer in LAYERS for state in STATES)
        for (layer, state), runs in answer.items():
            for r, x in enumerate(runs):
                np.testing.assert_array_equal(x, _expected(stimulus, layer, state, r))
    (folder,) = [p for p in (tmp_path / "cache" / "features").glob("*/*") if p.is_dir()]
    assert not list(folder.glob("partial-*"))  # finished: the partial folder is gone
