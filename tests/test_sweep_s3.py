"""Sweeps, training runs and evaluation on object storage, against a real S3 server (moto's standalone server on
loopback, tests/conftest.py `s3`): nothing here mocks a client call. The unit dataset, the sweep storage and
every run dir live at s3:// URIs; trials train in node-local scratch copies (models/mirror.py).

Covered: the tiny grid end to end (`sweep launch --units s3:// --storage s3://`, status, results, the run-dir
contract: a model loadable by `from_pretrained`, `eval --model s3://`); a trial worker SIGKILLed mid-training
(same final loss as the uninterrupted run); a driver SIGKILLed mid-sweep, then `sweep resume s3://` (every
trial once, none rerun, nothing unpickled from the store); the launch refusals (unreachable endpoint, missing
bucket, missing credentials, a storage that holds a sweep, a live driver's lease); `train -o s3://` resumed
on "another node" (another scratch) bitwise; a damaged checkpoint on the store is skipped for the one before."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from slmscale.cli import main
from slmscale.objstore import StorePath, download, upload
from tests.conftest import wait_for
from tests.test_eval_known_answer import pairs_benchmark, random_run  # noqa: F401 - fixtures
from tests.test_sweep_faults import FAST_TRAIN, _kill_session, write_grid

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from slmscale.models.synthetic_units import write_pattern_units

    return write_pattern_units(tmp_path_factory.mktemp("units"), n_units=50, n_utterances=300, seed=2)


@pytest.fixture(scope="module")
def s3_units(s3, units) -> str:
    uri = s3("units")
    upload(units, StorePath(uri))
    return uri


def store_json(uri: str) -> dict:
    return json.loads(StorePath(uri).read_text())


def complete_steps(run_uri: str) -> list[int]:
    from slmscale.models.checkpoint import complete_steps as steps

    return steps(StorePath(run_uri))


def test_tiny_grid_end_to_end_on_s3(ray_local, s3, s3_units, tmp_path, capsys):
    from transformers import LlamaForCausalLM

    storage = s3("sweep")
    grid = write_grid(tmp_path / "g.yaml", models=["tiny-100K", "tiny-1M"], tokens=[4096, 8192])
    assert main(["sweep", "launch", str(grid), "--units", s3_units, "--storage", storage, "--quiet"]) == 0
    assert "4 of 4 trials finished" in capsys.readouterr().out
    sweep = store_json(f"{storage}/sweep.json")
    assert sweep["units"] == s3_units and sweep["settings"]["units"] == s3_units

    assert main(["sweep", "status", storage]) == 0
    assert capsys.readouterr().out.count("FINISHED") == 4
    out = tmp_path / "results.parquet"
    assert main(["sweep", "results", storage, "-o", str(out), "--complete"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 4 and df["run_id"].is_unique
    assert all(d.startswith(f"{storage}/runs/") for d in df["run_dir"])  # provenance names the store's run dir
    # the results table on the store too (written by the driver as trials finished)
    stored = tmp_path / "stored.parquet"
    download(StorePath(f"{storage}/results.parquet"), stored)
    assert len(pd.read_parquet(stored)) == 4

    # The run-dir contract holds on the store: model/ in the HF layout, final.json, metrics, run.json provenance.
    run = f"{storage}/runs/{df['run_id'].iloc[0]}"
    info = store_json(f"{run}/run.json")
    assert info["units_dir"] == s3_units  # where the units came from, not the node's staged copy
    final = store_json(f"{run}/final.json")
    assert final["test_loss"] == pytest.approx(float(df["loss"].iloc[0]))
    model = download(StorePath(f"{run}/model"), tmp_path / "model")
    assert LlamaForCausalLM.from_pretrained(model).num_parameters() > 0
    assert store_json(f"{run}/row.json")["loss"] == final["test_loss"]


def test_eval_reads_a_run_dir_on_s3(s3, pairs_benchmark, random_run, capsys):  # noqa: F811 - fixtures
    """`slmscale eval --model s3://...` scores the run as it would locally, and writes eval/<name>.json (and the
    merged results row) back to the run dir on the store."""
    from slmscale.models.evaluation import evaluate

    split, bench_units, _ = pairs_benchmark
    local = evaluate(random_run, split, units_dir=bench_units, progress=False, write=False)
    run = s3("eval-run")
    upload(random_run, StorePath(run))
    assert main(["eval", "--model", run, "--benchmark", str(split), "--units", str(bench_units), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["metrics"] == local["metrics"]
    written = [p.name for p in StorePath(f"{run}/eval").iterdir()]
    assert written and json.loads((StorePath(f"{run}/eval") / written[0]).read_text())["metrics"] == local["metrics"]


def test_killed_trial_worker_on_s3_resumes_to_the_uninterrupted_loss(ray_local, s3, s3_units, units, tmp_path):
    from slmscale.models.train import train
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch
    from slmscale.sweep.trainable import train_config_for

    storage = s3("worker-kill")
    grid = write_grid(tmp_path / "g.yaml", tokens=[32768], train={**FAST_TRAIN, "checkpoint_every": 8})
    run = f"{storage}/runs/tiny-100K-D32.8k-s0"
    killed: dict = {}

    def kill_mid_training():
        wait_for(lambda: complete_steps(run) and not StorePath(f"{run}/row.json").exists(), 180,
                 "a first checkpoint on the store")
        attempt = store_json(f"{run}/attempt.json")
        killed.update(attempt)
        os.kill(attempt["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_training, daemon=True)
    killer.start()
    summary = launch(load_grid(grid), storage, units=s3_units, verbose=0)
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    assert summary["finished"] == 1 and not summary["errored"]
    attempt = store_json(f"{run}/attempt.json")
    assert attempt["attempt"] == 2 and attempt["resumed_from_step"] >= 8
    steps = [json.loads(line)["step"] for line in StorePath(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 32768 // 512

    sweep = store_json(f"{storage}/sweep.json")
    trial = sweep["trials"][0]
    settings = {**sweep["settings"], "units": str(units)}
    direct = train(train_config_for(trial, settings, tmp_path / "direct" / trial["run_id"]))
    row = store_json(f"{run}/row.json")
    assert row["loss"] == direct["loss"] and row["val_loss"] == direct["val_loss"]  # bitwise on CPU


def test_killed_driver_then_resume_on_s3_finishes_every_trial_once(ray_local, s3, s3_units, tmp_path, capsys):
    storage = s3("driver-kill")
    grid = write_grid(tmp_path / "grid.yaml", tokens=[2048, 4096, 16384], train={**FAST_TRAIN, "checkpoint_every": 4},
                      max_concurrent=2)
    env = {**os.environ, "RAY_ADDRESS": "", "TQDM_DISABLE": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "slmscale", "sweep", "launch", str(grid), "--units", s3_units, "--storage", storage,
         "--quiet"], cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = StorePath(f"{storage}/runs")
    try:
        def finished_and_midway():
            if driver.poll() is not None:
                raise AssertionError(f"driver exited early: {driver.stderr.read().decode()[-2000:]}")
            done = [d for d in runs.iterdir() if (d / "row.json").exists()]
            midway = [d for d in runs.glob("*-D16.4k-*") if complete_steps(str(d)) and not (d / "row.json").exists()]
            return (done, midway) if done and midway else None

        done, midway = wait_for(finished_and_midway, 240, "one finished trial and the longest one mid-training")
    finally:
        _kill_session(driver)
    before = {d.name: ((d / "row.json").read_text(), (d / "attempt.json").read_text()) for d in runs.iterdir()
              if (d / "row.json").exists()}
    assert before and len(before) < 3

    # The dead driver's lease has not expired yet, but its holder was a process of this host that is gone: the
    # resume takes it over at once (a lease of a live holder is refused: test_launch_refusals_on_s3[lease]).
    lease = json.loads(StorePath(f"{storage}/.lock.json").read_text())
    assert lease["pid"] == driver.pid and lease["expires"] > time.time()
    assert main(["sweep", "resume", storage, "--quiet"]) == 0, capsys.readouterr()
    assert "3 of 3 trials finished" in capsys.readouterr().out
    for name, (row, attempt) in before.items():  # finished trials were not rerun
        assert (runs / name / "row.json").read_text() == row
        assert (runs / name / "attempt.json").read_text() == attempt
    [interrupted] = midway
    assert interrupted.name not in before
    resumed = json.loads((interrupted / "attempt.json").read_text())
    assert resumed["attempt"] == 2 and resumed["resumed_from_step"] > 0
    # Resume restored nothing from the store: a new Tune experiment next to the first one.
    assert StorePath(f"{storage}/tune-2").is_dir()

    out = tmp_path / "results.parquet"
    assert main(["sweep", "results", storage, "-o", str(out), "--complete"]) == 0
    assert len(pd.read_parquet(out)) == 3


@pytest.mark.parametrize("case", ["endpoint", "bucket", "credentials", "holds a sweep", "lease"])
def test_launch_refusals_on_s3(s3, s3_units, tmp_path, capsys, monkeypatch, case):
    """Each refused before any trial starts (no Ray is started), with the reason in one line."""
    grid = write_grid(tmp_path / "g.yaml", tokens=[2048])
    storage = s3("refused")
    expected = {
        "endpoint": "could not be reached",
        "bucket": "bucket 'no-such-bucket' does not exist",
        "credentials": "no AWS credentials found",
        "holds a sweep": "already holds a sweep",
        "lease": "is in use by pid",
    }[case]
    if case == "endpoint":
        import slmscale.objstore as objstore

        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
        monkeypatch.setattr(objstore, "_FS_CACHE", {})
    elif case == "bucket":
        storage = "s3://no-such-bucket/sweep"
    elif case == "credentials":
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(var)
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    elif case == "holds a sweep":
        StorePath(f"{storage}/sweep.json").write_text("{}")
    elif case == "lease":
        import time

        StorePath(f"{storage}/.lock.json").write_text(json.dumps(
            {"token": "x", "pid": 4242, "host": "elsewhere", "started": time.time(), "expires": time.time() + 60}))
    assert main(["sweep", "launch", str(grid), "--units", s3_units, "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    if case not in ("holds a sweep", "bucket"):
        monkeypatch.undo()  # (the endpoint and credentials back, to look)
        assert not StorePath(f"{storage}/sweep.json").exists()  # nothing written


def test_train_on_s3_resumes_on_another_node_bitwise(s3, s3_units, units, tmp_path, monkeypatch):
    """`train -o s3://` stopped after its second checkpoint (a lost node: its scratch is gone), resumed from another
    node's empty scratch: the same weights and test loss as an uninterrupted local run. A damaged newest checkpoint
    on the store is skipped for the one before it."""
    from slmscale.models.config import TrainConfig
    from slmscale.models.train import train

    run = s3("train")
    base = dict(model="tiny-100K", tokens=16384, progress=False, threads=1, checkpoint_every=8, keep_checkpoints=3,
                **FAST_TRAIN)
    reference = train(TrainConfig(units_dir=str(units), out_dir=str(tmp_path / "local"), **base))

    # "node 1": trains until its second checkpoint reaches the store, then dies (the loop is stopped there).
    from slmscale.models import mirror

    monkeypatch.setenv("SLMSCALE_SCRATCH", str(tmp_path / "node1"))
    real_push = mirror.RunMirror.push_checkpoint

    class NodeLost(Exception):
        pass

    def push_then_die(self, step, keep=None, records=None):
        out = real_push(self, step, keep, records)
        if step == 16:  # (raised in the upload thread, then in the training loop at its next wait for it)
            raise NodeLost
        return out

    monkeypatch.setattr(mirror.RunMirror, "push_checkpoint", push_then_die)
    with pytest.raises(NodeLost):
        train(TrainConfig(units_dir=s3_units, out_dir=run, **base))
    monkeypatch.setattr(mirror.RunMirror, "push_checkpoint", real_push)
    assert complete_steps(run) == [8, 16]

    # Damage the newest checkpoint on the store: "node 2" falls back to step 8.
    weights = StorePath(f"{run}/checkpoints/step-0000016/model/model.safetensors")
    weights.write_bytes(weights.read_bytes()[: 1000])

    monkeypatch.setenv("SLMSCALE_SCRATCH", str(tmp_path / "node2"))
    assert main(["train", "--resume", run, "--no-progress"]) == 0
    final = store_json(f"{run}/final.json")
    assert final["resumed_from_step"] == 8
    assert final["test_loss"] == reference["loss"]  # bitwise on CPU
    from slmscale.models.rundir import RunDir

    assert RunDir(StorePath(run)).is_finished()
    assert pd.read_parquet(download(StorePath(f"{run}/results.parquet"), tmp_path / "r.parquet"))["run_dir"][0] == run


def test_a_stale_scratch_copy_takes_the_stores_newer_checkpoint_and_reports(s3, s3_units, tmp_path, monkeypatch):
    """A run that moves node1 -> node2 -> node1: node1's scratch copy is older than the store (node2 trained on
    and pushed a newer checkpoint). node1 resumes from the store's checkpoint with the store's metrics, so
    metrics.jsonl ends with every update exactly once and the loss is the uninterrupted one."""
    from slmscale.models import mirror
    from slmscale.models.config import TrainConfig
    from slmscale.models.train import train

    run = s3("stale")
    base = dict(model="tiny-100K", tokens=16384, progress=False, threads=1, checkpoint_every=8, keep_checkpoints=3,
                **FAST_TRAIN)
    reference = train(TrainConfig(units_dir=s3_units, out_dir=str(tmp_path / "local"), **base))
    real_push = mirror.RunMirror.push_checkpoint

    class NodeLost(Exception):
        pass

    def node(name: str, dies_after_pushing: int | None):
        monkeypatch.setenv("SLMSCALE_SCRATCH", str(tmp_path / name))

        def push(self, step, keep=None, records=None):
            out = real_push(self, step, keep, records)
            if step == dies_after_pushing:
                raise NodeLost  # (surfaces in the loop at its next checkpoint: that one stays local only)
            return out

        monkeypatch.setattr(mirror.RunMirror, "push_checkpoint", push)
        if dies_after_pushing is None:
            return train(TrainConfig(units_dir=s3_units, out_dir=run, **base))
        with pytest.raises(NodeLost):
            train(TrainConfig(units_dir=s3_units, out_dir=run, **base))

    node("node1", dies_after_pushing=8)  # the store has 8; node1's scratch has 8 and 16
    assert complete_steps(run) == [8]
    node("node2", dies_after_pushing=24)  # from 8 on node2: the store has 16 and 24
    assert complete_steps(run)[-1] == 24
    row = node("node1", dies_after_pushing=None)  # back on node1, whose copy stops at 16
    final = store_json(f"{run}/final.json")
    assert final["resumed_from_step"] == 24 and row["loss"] == reference["loss"]
    steps = [json.loads(line)["step"] for line in StorePath(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 33))


def test_wsd_sweep_on_s3_matches_the_same_sweep_on_a_local_directory(ray_local, s3, s3_units, units, tmp_path):
    """A WSD grid on the store: the trunk pushes its branch points, each branch (another trial, possibly another
    node) pulls its trunk's checkpoint from the store; every point's loss equals the same sweep's on local storage."""
    from slmscale.objstore import StorePath
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch
    from slmscale.sweep.results import sweep_results

    grid = load_grid(write_grid(tmp_path / "wsd.yaml", tokens=[8192, 16384], schedule="wsd", max_concurrent=2))
    storage = s3("wsd")
    on_store = launch(grid, storage, units=s3_units, verbose=0)
    local = launch(grid, tmp_path / "local", units=str(units), verbose=0)
    assert on_store["finished"] == local["finished"] == 3 and not on_store["errored"]
    a, b = sweep_results(storage).set_index("run_id"), sweep_results(str(tmp_path / "local")).set_index("run_id")
    assert list(a.index) == list(b.index) and (a["schedule"] == "wsd").all()
    assert (a["loss"] == b["loss"]).all()  # bitwise on CPU
    trunk = next(StorePath(f"{storage}/runs").glob("*trunk*"))
    assert (trunk / "row.json").is_file()  # the trunk finished too (its done marker; no results row)


def test_store_lease_of_a_live_process_here_is_refused_and_released_after(s3):
    """The lease of a live driver on this host is refused like another host's; released by its holder on exit."""
    import socket

    from slmscale.locks import LockHeld, store_lease

    lease = StorePath(f"{s3('lease')}/.lock.json")
    with store_lease(lease, what="sweep storage x", settle=0.1):
        held = json.loads(lease.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(LockHeld, match=r"sweep storage x is in use by pid \d+ on"):
            with store_lease(lease, what="sweep storage x", settle=0.1):
                pass
    assert not lease.exists()
