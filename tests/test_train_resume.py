"""Exact resume: 2K updates straight == K updates, interruption, resume, K more (bitwise on CPU);
and a training process killed with SIGKILL mid-run resumes to the same result."""
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

from slmscale.models.checkpoint import list_checkpoints, load_model
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
K = 8  # updates before the interruption


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return write_pattern_units(tmp_path_factory.mktemp("units") / "u", n_units=40, n_utterances=300, seed=1)


def _cfg(units, out, **kw):
    base = dict(units_dir=str(units), model="tiny-100K", out_dir=str(out), tokens=512 * 2 * K, lr=2e-3,
                checkpoint_every=K, report_every=2, eval_every=4, threads=1, progress=False)
    return TrainConfig(**{**base, **kw})


def _weights(run_dir):
    return load_file(Path(run_dir) / "model" / "model.safetensors")


def _losses(run_dir):
    lines = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["tokens"], m["train_loss"], m["val_loss"], m["lr"]) for m in lines]


def test_resume_is_bitwise_identical(units, tmp_path):
    straight = train(_cfg(units, tmp_path / "straight"))

    def stop_after_first_checkpoint(metrics, checkpoint_dir):
        if checkpoint_dir is not None and metrics["step"] == K:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_cfg(units, tmp_path / "resumed"), report=stop_after_first_checkpoint)
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == [f"step-{K:07d}"]
    assert not (tmp_path / "resumed" / "model").exists()
    partial, info = load_model(tmp_path / "resumed")  # an unfinished run loads from its newest checkpoint
    assert not info["finished"] and info["step"] == K and partial.config.vocab_size == 42

    seen = []
    resumed = train(_cfg(units, tmp_path / "resumed"), report=lambda m, c: seen.append(m["step"]))
    assert seen[0] == K + 2 and seen[-1] == 2 * K  # continued after the checkpoint, did not restart

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")
    assert straight["loss"] == resumed["loss"] and straight["val_loss"] == resumed["val_loss"]
    assert resumed["tokens"] == 512 * 2 * K

    # A finished run is not trained again: train() returns the same row from its files.
    again = train(_cfg(units, tmp_path / "resumed"), report=lambda m, c: pytest.fail("trained again"))
    assert again["loss"] == resumed["loss"]


def _cli(units, out, steps):
    return [sys.executable, "-m", "slmscale", "train", "--units", str(units), "--model", "tiny-100K",
            "--tokens", str(512 * steps), "--lr", "2e-3", "--checkpoint-every", "10", "--report-every", "5",
            "--threads", "1", "--no-progress", "-o", str(out)]


def test_sigkill_mid_run_then_resume_matches_uninterrupted(units, tmp_path):
    steps = 240
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    reference = subprocess.Popen(_cli(units, tmp_path / "ref", steps), cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_cli(units, tmp_path / "killed", steps), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list_checkpoints(tmp_path / "killed"):
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final.json").exists(), "the run finished before it was killed"
    killed_at = list_checkpoints(tmp_path / "killed")[-1].name

    done = subprocess.run([sys.executable, "-m", "slmscale", "train", "--resume", str(tmp_path / "killed"), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    row = json.loads(done.stdout)
    assert row["tokens"] == 512 * steps and killed_at != f"step-{steps:07d}"

    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _losses(tmp_path / "ref") == _losses(tmp_path / "killed")
