"""Nothing lost, nobody in (issue #18): corrupt checkpoints, concurrent writers, records that mean the same from
any directory, Tune state someone else wrote, and OS errors at the command line. Each test fails on the code
before these fixes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmscale.cli import main
from slmscale.locks import LockHeld, exclusive_lock
from slmscale.models.checkpoint import complete_steps
from slmscale.models.rundir import RunDir
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import TrainConfig, train
from slmscale.sweep.storage import SweepStorage

REPO = Path(__file__).resolve().parent.parent


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return write_pattern_units(tmp_path_factory.mktemp("units") / "u", n_units=40, n_utterances=300, seed=2)


def _cfg(units, out, **kw):
    base = dict(units_dir=str(units), model="tiny-100K", out_dir=str(out), tokens=512 * 12, lr=2e-3,
                checkpoint_every=4, report_every=2, threads=1, progress=False)
    return TrainConfig(**{**base, **kw})


def _stop_at(step: int):
    def report(metrics, checkpoint_dir):
        if checkpoint_dir is not None and metrics["step"] == step:
            raise Interrupted
    return report


def _strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds a bare {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(units, tmp_path, capsys):
    straight = train(_cfg(units, tmp_path / "straight"))
    run = RunDir(tmp_path / "cut")
    with pytest.raises(Interrupted):
        train(_cfg(units, run.path), report=_stop_at(8))
    assert complete_steps(run.path) == [4, 8]
    newest = run.checkpoint(8) / "model" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a node lost mid-copy

    assert main(["train", "--resume", str(run.path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "checkpoint of step 8 is broken" in captured.err and "resuming from the checkpoint of step 4" in captured.err
    assert "model/model.safetensors does not match" in (run.checkpoints / "broken-step-0000008" / "why.txt").read_text()
    # Resumed from step 4 and redid 5..12 exactly: the same weights and test loss as the uninterrupted run.
    assert json.loads(captured.out)["loss"] == straight["loss"]
    a, b = load_file(tmp_path / "straight" / "model" / "model.safetensors"), load_file(run.model / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Records are standard JSON and the weights read like every other file of the run.
    assert _strict_json(run.final)["mfu"] is None  # unknown on a CPU: null, not NaN
    umask = os.umask(0)
    os.umask(umask)
    assert (run.model / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_no_intact_checkpoint_is_refused_cleanly_and_legacy_ones_are_loaded(units, tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(Interrupted):
        train(_cfg(units, run.path, keep_checkpoints=2), report=_stop_at(8))
    # A checkpoint written before checksums were recorded is checked by loading every file.
    state_file = run.checkpoint(8) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["files"]
    state_file.write_text(json.dumps(state))
    (run.checkpoint(8) / "optimizer.pt").write_bytes(b"\0" * 100)
    (run.checkpoint(4) / "rng.pt").unlink()
    with pytest.raises(Exception) as err:
        train(_cfg(units, run.path))
    text = str(err.value)
    assert "no intact checkpoint" in text and "step 8: a file does not load" in text and "step 4: rng.pt is missing" in text
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["broken-step-0000004", "broken-step-0000008"]


def _train_cli(units, out, steps):
    return [sys.executable, "-m", "slmscale", "train", "--units", str(units), "--model", "tiny-100K",
            "--tokens", str(512 * steps), "--checkpoint-every", "20", "--report-every", "5", "--threads", "1",
            "--no-progress", "-o", str(out)]


def test_second_train_into_the_same_folder_is_refused(units, tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_train_cli(units, out, 120), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file():
        assert first.poll() is None, first.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    assert main(_train_cli(units, out, 120)[3:]) == 2
    err = capsys.readouterr().err
    assert f"run directory {out} is in use by pid {first.pid}" in err and len(err.strip().splitlines()) == 1
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # one writer: every report once, in order


def test_killed_holder_releases_its_lock_and_a_lock_nests_in_one_process(tmp_path):
    lock = tmp_path / "d" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from slmscale.locks import exclusive_lock\n"
                               f"with exclusive_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            with exclusive_lock(lock, "the folder"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with exclusive_lock(lock, "the folder"), exclusive_lock(lock, "the folder"):  # free again; re-entrant
        pass


def test_resume_from_another_directory_with_relative_units(units, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "u").symlink_to(units, target_is_directory=True)
    monkeypatch.chdir(work)
    with pytest.raises(Interrupted):
        train(_cfg("u", "runs/x"), report=_stop_at(4))
    config = json.loads((work / "runs" / "x" / "config.json").read_text())
    assert config["units_dir"] == str(work / "u") and config["out_dir"] == str(work / "runs" / "x")
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(work / "runs" / "x")]) == 0
    assert RunDir(work / "runs" / "x").is_finished()


def test_second_sweep_launch_into_a_held_storage_is_refused_before_anything(tmp_path, capsys):
    storage = SweepStorage.at(tmp_path / "s")
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nmodels: [tiny-100K]\ntokens: [2048]\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; from slmscale.locks import exclusive_lock\n"
                               f"with exclusive_lock({str(storage.lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        assert main(["sweep", "launch", str(grid), "--units", str(tmp_path / "nowhere"), "--storage", str(storage.root)]) == 2
        assert time.time() - t0 < 10  # refused before any check, Ray or write
        assert f"sweep storage {storage.root} is in use by pid {holder.pid}" in capsys.readouterr().err
        assert not storage.sweep_file.exists()
        (storage.root / "sweep.json").write_text(json.dumps({"grid": {"name": "g"}, "trials": [], "settings": {}}))
        assert main(["sweep", "resume", str(storage.root)]) == 2
        assert "is in use by pid" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_refused_launch_leaves_no_storage_behind(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nmodels: [tiny-100K]\ntokens: [2048]\n")
    assert main(["sweep", "launch", str(grid), "--units", str(tmp_path / "nowhere"), "--storage", str(tmp_path / "s")]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "s").exists()


def _fake_sweep(root: Path, run_ids: list[str]) -> None:
    root.mkdir(parents=True)
    (root / "tune").mkdir()
    (root / "tune" / "tuner.pkl").write_bytes(b"not really a pickle")
    trials = [{"run_id": r, "model": "tiny-100K", "n_params": 1000, "tokens": 10_000, "budget": "tokens=10k"}
              for r in run_ids]
    (root / "sweep.json").write_text(json.dumps({"grid": {"name": "g", "models": ["tiny-100K"], "tokens": [10_000]},
                                                 "units_meta_hash": "h", "trials": trials, "settings": {}}))


def test_resume_refuses_tune_state_others_could_have_written(tmp_path, capsys):
    root = tmp_path / "s"
    _fake_sweep(root, ["a"])
    planted = root / "tune" / "tuner.pkl"
    planted.chmod(0o666)
    assert main(["sweep", "resume", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{planted}: is writable by group and others (mode 666)" in err and "--trust-tune-state" in err
    planted.chmod(0o644)
    (root / "tune").chmod(0o775)
    assert main(["sweep", "resume", str(root)]) == 2
    assert "tune: is writable by group (mode 775)" in capsys.readouterr().err
    if os.getuid() == 0:
        (root / "tune").chmod(0o755)
        os.chown(planted, 4242, 4242)
        assert main(["sweep", "resume", str(root)]) == 2
        assert "is owned by uid 4242" in capsys.readouterr().err


def test_unknown_embedded_benchmark_is_refused_with_the_grid(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nmodels: [tiny-100K]\ntokens: [2048]\nn_units: 50\neval: [embedded:sblimpp]\n")
    assert main(["sweep", "plan", str(grid)]) == 2
    assert "unknown embedded benchmark 'embedded:sblimpp'" in capsys.readouterr().err


def test_sweep_results_lists_missing_trials_and_os_errors_are_one_line(tmp_path, capsys):
    root = tmp_path / "s"
    _fake_sweep(root, ["done", "gone", "running"])
    row = {"n_params": 1000.0, "tokens": 10_000.0, "unique_tokens": 10_000.0, "epochs": 1.0, "flops": 6e7, "loss": 3.0}
    (root / "runs" / "done").mkdir(parents=True)
    (root / "runs" / "done" / "row.json").write_text(json.dumps(row))
    (root / "runs" / "running").mkdir()
    assert main(["sweep", "results", str(root), "-o", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 row(s)" in out and "2 trial(s) have no row" in out
    assert "missing: gone (run dir gone)" in out and "missing: running (not finished)" in out
    assert "a trial Tune already counts as terminated is not rerun" in out

    (tmp_path / "afile").write_text("")
    assert main(["sweep", "results", str(root), "-o", str(tmp_path / "afile" / "r.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"slmscale sweep: error: {tmp_path / 'afile'} is a file, expected a folder (or a path inside one)"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    if os.getuid() != 0:  # root writes anywhere
        assert main(["sweep", "results", str(root), "-o", str(tmp_path / "ro" / "r.csv")]) == 1
        assert capsys.readouterr().err.startswith("slmscale sweep: error: Permission denied")


def test_closed_output_pipe_is_one_line_not_a_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "slmscale", "sweep", "plan", str(REPO / "sweep/grids/paper.yaml"),
                             "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte (`... | head -c0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) != 0
    assert "Traceback" not in err and "closed the output pipe" in err and len(err.strip().splitlines()) == 1
