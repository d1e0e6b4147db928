"""An interrupted `mtbench run` keeps its finished fits and the same command resumes it."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtbench import paths, runner
from mtbench_plugins.analyses.mode1 import fit as mode1_fit  # where Mode 1 calls the ridge fit
from mtbench.settings import RunSettings
from mtbench.checkpoint import FitCheckpoint, fingerprint
from mtbench.errors import MtbenchError
from mtbench.runner import run
from concurrency import at_once
from lock_holder import Holder
from run_helpers import Interrupted, count_calls, tiny_run_settings, voxel_table

STATES = ["input_hidden_state", "per_head_v", "ffn_output"]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    return tiny_run_settings(tmp_path, monkeypatch, STATES, "per_head_v", permutations=50)


def test_an_interrupted_run_resumes_from_its_finished_fits(settings, tmp_path, monkeypatch):
    n_fits = 2 * len(STATES)
    # reference: the same run, never interrupted, in its own results folder
    reference = run(settings, tmp_path / "reference").run_dir
    assert not (tmp_path / "reference" / "checkpoints").exists()  # removed once the results are written

    calls = count_calls(monkeypatch, mode1_fit, "fit_nested_loro", stop_after=4)
    with pytest.raises(Interrupted):
        run(settings, tmp_path / "results")
    assert len(calls) == 4
    runs = tmp_path / "results" / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # no half-written run
    saved = list((tmp_path / "results" / "checkpoints").glob("*/*.npz"))
    assert len(saved) == 4  # each finished fit was kept at once

    calls = count_calls(monkeypatch, mode1_fit, "fit_nested_loro")
    output = run(settings, tmp_path / "results")
    assert len(calls) == n_fits - 4  # only the fits that were missing
    assert not (tmp_path / "results" / "checkpoints").exists()
    resumed, fresh = voxel_table(output.run_dir), voxel_table(reference)
    for column in ("test", "validation", "alpha", "p_value"):
        np.testing.assert_array_equal(resumed[column].to_numpy(), fresh[column].to_numpy(), err_msg=column)
    inflation = json.loads((output.run_dir / "manifest.json").read_text())["significance"]["null_inflation"]
    assert len(inflation) == n_fits and min(inflation.values()) >= 1.0  # resumed fits kept their calibration
    assert inflation == json.loads((reference / "manifest.json").read_text())["significance"]["null_inflation"]


def test_a_full_disk_at_the_write_is_one_line_and_the_same_command_resumes(settings, tmp_path, monkeypatch):
    """Writing the results fails (no space): one line, no half-written run, and every fit is kept."""
    import errno

    from mtbench_plugins.analyses.mode1 import analysis as mode1

    def full_disk(partial, *args, **kwargs):
        (partial / "scores.parquet").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    write_files = mode1.write_files
    monkeypatch.setattr(mode1, "write_files", full_disk)
    with pytest.raises(MtbenchError) as err:
        run(settings, tmp_path / "results")
    assert str(err.value) == (f"could not write the results under {tmp_path / 'results' / 'runs'} (No space left on "
                              "device); free space there (or give --out another folder), then run the same command "
                              "again: it reuses the finished fits kept in checkpoints/")
    assert not any((tmp_path / "results" / "runs").iterdir())  # nothing half-written
    assert len(list((tmp_path / "results" / "checkpoints").glob("*/*.npz"))) == 2 * len(STATES)
    monkeypatch.setattr(mode1, "write_files", write_files)  # space again
    calls = count_calls(monkeypatch, mode1_fit, "fit_nested_loro")
    assert run(settings, tmp_path / "results").run_dir.is_dir() and calls == []  # nothing fitted again


def test_a_changed_input_never_reuses_a_checkpoint(settings, tmp_path, monkeypatch):
    calls = count_calls(monkeypatch, mode1_fit, "fit_nested_loro", stop_after=2)
    with pytest.raises(Interrupted):
        run(settings, tmp_path / "results")
    # other alphas: the saved fits do not apply, everything is fitted again
    calls = count_calls(monkeypatch, mode1_fit, "fit_nested_loro")
    changed = RunSettings(**{**settings.__dict__, "alphas": [1.0, 1e3]})
    run(changed, tmp_path / "results")
    assert len(calls) == 2 * len(STATES)
    # the first run's checkpoint is left for its own command to resume
    assert len(list((tmp_path / "results" / "checkpoints").glob("*/*.npz"))) == 2


def test_the_same_command_finishing_in_the_same_second_gets_its_own_folder(settings, tmp_path, monkeypatch):
    """Generated ids are timestamped to the second: a second run of that id is written as <id>-2."""
    monkeypatch.setattr(runner, "run_id_for", lambda settings: "20261206T000000-same")
    first = run(settings, tmp_path / "results").run_dir
    second = run(settings, tmp_path / "results").run_dir
    assert (first.name, second.name) == ("20261206T000000-same", "20261206T000000-same-2")
    assert json.loads((second / "manifest.json").read_text())["run_id"] == second.name
    assert set(pq.read_table(second / "scores.parquet").column("run_id").to_pylist()) == {second.name}
    # an id given by the caller (a sweep cell, --run-id) is never renamed
    with pytest.raises(FileExistsError, match="same-2 already exists"):
        run(settings, tmp_path / "results", run_id=second.name)


def test_bad_settings_and_an_out_that_cannot_be_written_fail_before_any_work(settings, tmp_path, monkeypatch):
    """One line before the model loads, not a traceback after hours of fitting (Mode 2 lost them all)."""
    def no_work(*args, **kwargs):
        raise AssertionError("the run started working")

    monkeypatch.setattr(runner, "prepare_inputs", no_work)
    (tmp_path / "afile").write_text("keep me")
    for out in (tmp_path / "afile", tmp_path / "afile" / "results"):
        with pytest.raises(MtbenchError) as err:
            run(settings, out)
        assert str(err.value) == f"cannot write to {out} ({tmp_path / 'afile'} is a file); give --out a folder " \
                                 "you can write to"
    assert (tmp_path / "afile").read_text() == "keep me"
    with pytest.raises(MtbenchError, match=r"trim_scans \(--trim\) must be a whole number .*got -1"):  # was taken as 0
        run(replace(settings, trim_scans=-1), tmp_path / "results")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine, also on a GPU one
    with pytest.raises(MtbenchError, match="backend torch_cuda / device cuda asked for, but torch sees no CUDA GPU"):
        run(replace(settings, backend="torch_cuda"), tmp_path / "results")  # was found after the extraction


def _enter_checkpoint(root: str) -> str:
    try:
        with FitCheckpoint(Path(root), "key"):
            return "in use"
    except MtbenchError as exc:
        return f"MtbenchError: {exc}"


def test_a_checkpoint_folder_that_cannot_be_made_is_an_error_not_a_hang(tmp_path):
    """The retry for another run removing checkpoints/ must not spin forever when the path itself is
    the problem (here a file named checkpoints; an --out under /proc did the same)."""
    (tmp_path / "checkpoints").write_text("")
    [outcome] = at_once(_enter_checkpoint, (str(tmp_path),), timeout=60)  # the old loop never returned
    assert outcome == (f"MtbenchError: cannot keep fit checkpoints in {tmp_path / 'checkpoints'} (File exists); "
                       "move what is in the way or give --out another folder")


def _run_with_pinned_id(settings: RunSettings, results: str, log: str) -> str:
    """One `mtbench run` of ``settings``, its generated id pinned (as if both finished in one second);
    every fit it computes is logged (its pid)."""
    real = mode1_fit.fit_nested_loro
    ready = Path(log).with_suffix(".ready")

    def fit(*args, **kwargs):
        # at its first fit each run waits for the other to reach its own (both then hold the checkpoint):
        # on a loaded machine one run could otherwise finish, and remove the checkpoint, before the other starts
        if not getattr(fit, "met", False):
            with open(ready, "a") as handle:
                handle.write(f"{os.getpid()}\n")
            deadline = time.monotonic() + 120
            while len(ready.read_text().split()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            fit.met = True
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    mode1_fit.fit_nested_loro = fit
    runner.run_id_for = lambda settings: "20261206T000000-same"
    return run(settings, Path(results)).run_dir.name


def test_the_same_command_twice_at_once_splits_the_fits_and_writes_two_whole_runs(settings, tmp_path):
    """Two processes, one command, one results folder: they share the feature cache and the
    checkpoint, compute each fit once between them (issue 32, item 7: 5 of 16 were computed twice),
    neither fails, each writes the whole run a single run writes, and nothing is left behind."""
    results, log = tmp_path / "results", tmp_path / "fits.log"
    names = at_once(_run_with_pinned_id, *[(settings, str(results), str(log))] * 2, timeout=300)
    assert sorted(names) == ["20261206T000000-same", "20261206T000000-same-2"], names
    # per-voxel alphas: the null columns ride along, one fit_nested_loro call per (layer, state)
    fits = log.read_text().split()
    assert len(fits) == 2 * len(STATES), f"{len(fits)} fits for {2 * len(STATES)}, by process: {Counter(fits)}"
    single = voxel_table(run(settings, tmp_path / "single").run_dir)
    for name in names:
        table = voxel_table(results / "runs" / name)
        assert len(table) == 2 * len(STATES) * table["voxel"].nunique()
        for column in ("test", "validation", "alpha", "p_value"):
            np.testing.assert_array_equal(table[column].to_numpy(), single[column].to_numpy(), err_msg=column)
    assert sorted(p.name for p in results.iterdir()) == [".runs.lock", "runs"]  # no checkpoint or claim left


def test_fingerprint_covers_the_data_and_a_truncated_fit_is_refitted(tmp_path):
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    key = fingerprint({"a": 1}, [y])
    assert key == fingerprint({"a": 1}, [y.copy()])
    assert key != fingerprint({"a": 1}, [y + 1e-6])
    assert key != fingerprint({"a": 2}, [y])
    with FitCheckpoint(tmp_path, key) as checkpoint:
        checkpoint.save("L1-x", {"test": y[0]})
        np.testing.assert_array_equal(checkpoint.load("L1-x")["test"], y[0])
        path = checkpoint.folder / "L1-x.npz"
        path.write_bytes(path.read_bytes()[:20])  # e.g. a disk that filled up mid-write elsewhere
        assert checkpoint.load("L1-x") is None and not path.exists()
        checkpoint.remove()
    assert not (tmp_path / "checkpoints").exists()


def _save_and_remove(root: str, key: str) -> list[str]:
    """One run's checkpoint life, many times over: save a fit, then remove (results written)."""
    errors = []
    for _ in range(300):
        try:
            with FitCheckpoint(Path(root), key) as checkpoint:
                checkpoint.save("L1-x", {"test": np.zeros(3)})
                checkpoint.remove()
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def test_concurrent_runs_save_and_remove_their_checkpoints_without_errors(tmp_path):
    """Two runs sharing a results folder (a sweep's cells) each end by removing ``checkpoints/``
    when it looks empty; the other may be creating its own folder in it at that moment. Neither
    may fail for it (a finished cell was reported failed, or a fit crashed, before this was fixed)."""
    outcome = at_once(_save_and_remove, (str(tmp_path), "a"), (str(tmp_path), "b"))
    assert outcome == [[], []], [(len(errors), errors[:2]) for errors in outcome]
    assert not (tmp_path / "checkpoints").exists()


def test_two_runs_of_one_command_share_a_checkpoint_and_the_last_removes_it(tmp_path):
    """The same fingerprint twice at once: a finished run leaves the folder the other still saves in."""
    with FitCheckpoint(tmp_path, "same") as first, FitCheckpoint(tmp_path, "same") as second:
        first.save("L1-x", {"test": np.ones(3)})
        np.testing.assert_array_equal(second.load("L1-x")["test"], np.ones(3))  # the second reuses the fit
        first.remove()  # results written; the second run is still going
        second.save("L1-y", {"test": np.zeros(3)})
        assert sorted(p.name for p in second.folder.iterdir()) == ["L1-x.npz", "L1-y.npz"]
        second.remove()
    assert not (tmp_path / "checkpoints").exists()
    # many times over, in two processes: no save ever fails because the other removed the folder
    outcome = at_once(_save_and_remove, (str(tmp_path), "same"), (str(tmp_path), "same"))
    assert outcome == [[], []], [(len(errors), errors[:2]) for errors in outcome]
    assert not (tmp_path / "checkpoints").exists()


def test_a_fit_claimed_by_a_stopped_run_is_computed_here(tmp_path, monkeypatch, capfd):
    """The claim of a run that shows no sign of life (stopped, hung) is not waited for for ever."""
    monkeypatch.setenv(paths.LOCK_TIMEOUT_ENV, "1")
    with FitCheckpoint(tmp_path, "key") as checkpoint:
        checkpoint.folder.mkdir(parents=True)
        with Holder(checkpoint.folder / "L1-x.claim", "alive", 60) as other:
            assert not checkpoint.claim("L1-x")  # another run is computing it: skipped for now
            os.kill(other.pid, signal.SIGSTOP)
            assert not checkpoint.claim("L1-x", wait=True)  # it stopped: this run computes it itself
        assert checkpoint.claim("L1-x") and checkpoint.claim("L1-y")
        checkpoint.save("L1-x", {"test": np.ones(3)})  # saving releases its claim; leaving the block the rest
        assert checkpoint.load("L1-x") is not None
    note = capfd.readouterr().err.strip()
    assert note.startswith(f"note: the fit L1-x is claimed by process {other.pid} on {socket.gethostname()}, which "
                           "has shown no sign of life for ") and note.endswith(" s: computing it here")
    with FitCheckpoint(tmp_path, "key") as again:  # claims end with their run
        assert again.claim("L1-x") and again.claim("L1-y")
        again.remove()
    assert not (tmp_path / "checkpoints").exists()


def _save_past_a_size_limit(root: str) -> str:
    """Save one fit, then one past a file-size limit: a write that fails half-way, as on a full disk."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    with FitCheckpoint(Path(root), "key") as checkpoint:
        checkpoint.save("L1-small", {"test": np.ones(10)})
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            checkpoint.save("L2-large", {"test": np.ones(100_000)})
        except MtbenchError as exc:
            return f"MtbenchError: {exc}"
        return "saved"


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_temporary_file(tmp_path):
    """Issue 32, item 10: a full disk while a checkpoint was written was a raw OSError, and left a .tmp."""
    [outcome] = at_once(_save_past_a_size_limit, (str(tmp_path),), timeout=60)
    folder = tmp_path / "checkpoints" / "key"
    assert outcome == (f"MtbenchError: could not save the fit L2-large in {folder} (File too large); free space there "
                       "(or give --out another folder), then run the same command again: it reuses the fits saved "
                       "there")
    assert sorted(p.name for p in folder.iterdir()) == ["L1-small.npz"]  # the fit saved before is kept; no .tmp
