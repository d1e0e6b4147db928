"""A run that waits on a lock held by another process says whom it waits for, and gives up on a
holder that shows no sign of life (issue 32, item 8: a second run while the first was stopped
with SIGSTOP during the extraction waited for ever, saying nothing)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import numpy as np
import pytest
from lock_holder import Holder

from mtbench import paths
from mtbench.api import Stimulus, StimulusRun
from mtbench.errors import MtbenchError
from mtbench.features import _cache_folder, word_features


class Model:
    """A model without torch whose extractions are counted."""

    name, revision, n_layers, family = "lock-test", "r1", 2, "test"

    def __init__(self):
        self.calls = 0

    def settings(self) -> dict:
        return {}

    def extract(self, stimulus, states, layers, progress=None):
        self.calls += 1
        return {(layer, state): [np.full((len(run.words), 3), layer, dtype=np.float32) for run in stimulus.runs]
                for layer in layers for state in states}


def _stimulus() -> Stimulus:
    onsets = np.arange(6, dtype=float)
    return Stimulus(language="en", tr=2.0, runs=[StimulusRun([f"w{i}" for i in range(6)], onsets, onsets + 0.5, 4)])


@pytest.fixture
def quick(tmp_path, monkeypatch):
    """A private cache, a note after 0.3 s and a 1.5 s limit on a holder's silence."""
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(paths.LOCK_TIMEOUT_ENV, "1.5")
    monkeypatch.setattr(paths, "LOCK_NOTE_AFTER", 0.3)


@pytest.mark.parametrize("holder_is", ["silent", "stopped"])
def test_a_run_waiting_for_a_stopped_extraction_says_so_and_gives_up_in_one_line(holder_is, quick, capfd):
    model, stimulus = Model(), _stimulus()
    lock = _cache_folder(model, stimulus) / "extract.lock"
    with Holder(lock, "silent" if holder_is == "silent" else "alive", 60) as other:
        if holder_is == "stopped":
            os.kill(other.pid, signal.SIGSTOP)  # as the reproduction: Ctrl-Z of the first run
        start = time.monotonic()
        with pytest.raises(MtbenchError) as err:
            word_features(model, stimulus, ["s"], [1])
        waited = time.monotonic() - start
    who = f"process {other.pid} on {socket.gethostname()}" + (" (silent)" if holder_is == "silent" else "")
    message = re.sub(r"for \d+ s", "for N s", str(err.value))
    assert message == (
        f"gave up waiting for the feature extraction of lock-test into {lock.parent}: {lock} is held by {who}, which "
        f"has shown no sign of life for N s (stopped with Ctrl-Z or kill -STOP?); resume it (kill -CONT {other.pid}) "
        f"or end it, then run again (MTBENCH_LOCK_TIMEOUT sets this wait in seconds)")
    assert 1.5 <= waited < 10 and model.calls == 0
    assert capfd.readouterr().err.splitlines() == [
        f"note: waiting for the feature extraction of lock-test into {lock.parent}: {lock} is held by {who}"]


def test_a_holder_that_shows_signs_of_life_is_waited_for(quick, capfd):
    """A live extraction longer than the limit is no reason to give up: the limit is on silence."""
    model, stimulus = Model(), _stimulus()
    lock = _cache_folder(model, stimulus) / "extract.lock"
    with Holder(lock, "alive", 4):  # 4 s: longer than the 1.5 s limit
        start = time.monotonic()
        features = word_features(model, stimulus, ["s"], [1])
        assert time.monotonic() - start > 2  # it waited, then extracted
    np.testing.assert_array_equal(features[1, "s"][0], np.ones((6, 3), dtype=np.float32))
    assert model.calls == 1
    assert "note: waiting for the feature extraction of lock-test" in capfd.readouterr().err


def test_the_limit_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(MtbenchError) as err:
        paths.wait_lock(tmp_path / "x.lock", "nothing")
    assert str(err.value) == ("MTBENCH_LOCK_TIMEOUT='soon' is not a number of seconds above 0; set it to one (e.g. "
                              "120, or inf to wait for ever) or unset it")
    monkeypatch.setenv(paths.LOCK_TIMEOUT_ENV, "inf")
    assert paths.lock_timeout() == float("inf")
    monkeypatch.delenv(paths.LOCK_TIMEOUT_ENV)
    assert paths.lock_timeout() == paths.DEFAULT_LOCK_TIMEOUT == 120
