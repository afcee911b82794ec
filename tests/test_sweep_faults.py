"""Fault tolerance on local Ray with tiny models: a trial's worker SIGKILLed mid-training resumes from its
checkpoint to the same final loss as an uninterrupted run; a SIGKILLed driver is finished by `sweep resume`
without rerunning finished trials, and the results table has every trial exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slmscale.cli import main
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent
FAST_TRAIN = {"context": 64, "tokens_per_update": 512, "eval_tokens": 2048, "test_tokens": 2048}
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from slmscale.models.synthetic_units import write_pattern_units

    return write_pattern_units(tmp_path_factory.mktemp("units"), n_units=50, n_utterances=300, seed=2)


def write_grid(path: Path, **fields) -> Path:
    raw = {"name": "faults", "models": ["tiny-100K"], "seeds": [0], "train": FAST_TRAIN,
           "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "max_failures": 2, **fields}
    path.write_text(yaml.safe_dump(raw))
    return path


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []


def test_killed_trial_worker_resumes_to_the_uninterrupted_loss(ray_local, units, tmp_path):
    from slmscale.models.train import train
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch
    from slmscale.sweep.trainable import train_config_for

    grid = write_grid(tmp_path / "g.yaml", tokens=[32768], train={**FAST_TRAIN, "checkpoint_every": 8})
    storage = tmp_path / "sweep"
    run_dir = storage / "runs" / "tiny-100K-D32.8k-s0"
    killed: dict = {}

    def kill_mid_training():
        # First checkpoint written and training still going: SIGKILL the process that trains the trial.
        wait_for(lambda: checkpoints(run_dir) and not (run_dir / "row.json").exists(), 120, "a first checkpoint")
        attempt = json.loads((run_dir / "attempt.json").read_text())
        killed.update(attempt, step_at_kill=len(checkpoints(run_dir)))
        os.kill(attempt["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_training, daemon=True)
    killer.start()
    summary = launch(load_grid(grid), storage, units=str(units), verbose=0)
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    assert summary["finished"] == 1 and not summary["errored"]

    attempt = json.loads((run_dir / "attempt.json").read_text())
    assert attempt["attempt"] == 2 and attempt["pid"] != killed["pid"]
    assert attempt["resumed_from_step"] >= 8  # the retry started from a checkpoint, not from scratch
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 32768 // 512  # one report per step, none lost or doubled

    # The same trial trained without interruption, directly (same config, same threads).
    sweep = json.loads((storage / "sweep.json").read_text())
    trial = sweep["trials"][0]
    direct = train(train_config_for(trial, sweep["settings"], tmp_path / "direct" / trial["run_id"]))
    row = json.loads((run_dir / "row.json").read_text())
    assert row["loss"] == pytest.approx(direct["loss"], rel=1e-6, abs=0)
    assert row["val_loss"] == pytest.approx(direct["val_loss"], rel=1e-6, abs=0)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and the local Ray it started (its process group: processes this test started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_killed_driver_then_resume_finishes_every_trial_once(ray_local, units, tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", tokens=[2048, 4096, 16384],
                      train={**FAST_TRAIN, "checkpoint_every": 4}, max_concurrent=2)
    storage = tmp_path / "driver kill" / "sweep"  # a path with spaces
    assert main(["sweep", "plan", str(grid), "--units", str(units)]) == 0
    assert "3 trials" in capsys.readouterr().out

    env = {**os.environ, "RAY_ADDRESS": "", "TQDM_DISABLE": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "slmscale", "sweep", "launch", str(grid), "--units", str(units), "--storage", str(storage),
         "--quiet"],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    runs = storage / "runs"
    try:
        def finished_and_midway():
            if driver.poll() is not None:
                raise AssertionError(f"driver exited early: {driver.stderr.read().decode()[-2000:]}")
            done = [d for d in runs.glob("*") if (d / "row.json").exists()]
            # The longest trial (32 updates, a checkpoint every 4) past its first checkpoint: far from its end, so
            # it is still training when the kill lands.
            midway = [d for d in runs.glob("*-D16.4k-*") if checkpoints(d) and not (d / "row.json").exists()]
            return (done, midway) if done and midway else None

        done, midway = wait_for(finished_and_midway, 240, "one finished trial and the longest one mid-training")
    finally:
        _kill_session(driver)
    before = {d.name: ((d / "row.json").stat().st_mtime_ns, (d / "attempt.json").read_text()) for d in runs.glob("*")
              if (d / "row.json").exists()}
    assert before and len(before) < 3

    assert main(["sweep", "status", str(storage)]) == 0
    assert "FINISHED" in capsys.readouterr().out

    assert main(["sweep", "resume", str(storage), "--quiet"]) == 0, capsys.readouterr()
    assert "3 of 3 trials finished" in capsys.readouterr().out
    for name, (mtime, attempt) in before.items():  # finished trials were not rerun
        assert (runs / name / "row.json").stat().st_mtime_ns == mtime
        assert (runs / name / "attempt.json").read_text() == attempt
    [interrupted] = midway
    assert interrupted.name not in before  # it had not finished when the driver died
    resumed = json.loads((interrupted / "attempt.json").read_text())
    assert resumed["attempt"] == 2 and resumed["resumed_from_step"] > 0  # continued from its checkpoint

    out = tmp_path / "results.parquet"
    assert main(["sweep", "results", str(storage), "-o", str(out), "--complete"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 3 and df["run_id"].is_unique
    assert set(df["run_id"]) == {t["run_id"] for t in json.loads((storage / "sweep.json").read_text())["trials"]}
