"""The sweep on multi-node Ray clusters, simulated on this one machine with Ray's own test harness (issue #13,
"Sweeps on real clusters"; harness in tests/multinode.py):

* autoscaling from zero: a head without CPUs for trials and cluster.yaml's worker node types (min_workers 0,
  scaled down to this machine): launching a shrunken tiny grid makes the autoscaler start worker nodes, every
  trial runs on them and finishes, and the workers are released after the idle timeout;
* node preemption: a worker node is removed under a trial that has checkpointed; the trial's second attempt
  resumes from its checkpoint on another node to exactly the test loss of an uninterrupted run, and no finished
  trial reruns. The storage kind is a parameter (`make_storage`): a shared directory now, object storage later.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import wait_for
from tests.multinode import (
    CLUSTER_YAML,
    HEAD_NODE_TYPE,
    MAX_WORKERS_CAP,
    NodeWatcher,
    StorageFiles,
    add_worker,
    autoscaling_cluster,
    fixed_cluster,
    node_of,
    pid_alive,
    scaled_autoscaler_config,
    start_driver,
    stop_driver,
)

REPO = Path(__file__).resolve().parent.parent
TINY_GRID = REPO / "sweep" / "grids" / "tiny.yaml"
# Small enough for a CPU test: context 64, 512 tokens per update, tiny evaluation sets.
FAST_TRAIN = {"context": 64, "tokens_per_update": 512, "eval_tokens": 2048, "test_tokens": 2048}
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from slmscale.models.synthetic_units import write_pattern_units

    return write_pattern_units(tmp_path_factory.mktemp("units"), n_units=50, n_utterances=300, seed=2)


def make_storage(kind: str, tmp_path: Path, request=None) -> str:
    """The --storage of a sweep of kind `kind`: 'shared', a directory every node mounts (on this machine every
    node shares the file system, as EFS at /shared does on the cluster), or 's3', a fresh prefix on the moto S3
    server of tests/conftest.py (`s3` fixture). The tests read the storage back only through `StorageFiles`."""
    if kind == "shared":
        return str(tmp_path / "shared" / "sweep")
    if kind == "s3":
        return request.getfixturevalue("s3")("multinode")
    raise ValueError(f"unknown storage kind {kind!r}")


def shrunken_tiny_grid(path: Path, *, models: int | list[str], tokens: int | list[int], **fields) -> Path:
    """sweep/grids/tiny.yaml with its first `models` sizes and `tokens` budgets (or these lists), CPU-test
    training settings (FAST_TRAIN), and `fields` on top."""
    raw = yaml.safe_load(TINY_GRID.read_text())

    def pick(value, values):
        return values[:value] if isinstance(value, int) else list(value)

    raw.update(models=pick(models, raw["models"]), tokens=pick(tokens, raw["tokens"]), train=dict(FAST_TRAIN))
    raw.update(fields)
    path.write_text(yaml.safe_dump(raw))
    return path


def _log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else "(no log)"


# --- (a) autoscaling from zero ----------------------------------------------------------------------------------

def test_scaled_config_mirrors_cluster_yaml():
    """One source of truth: the fake cluster has cluster.yaml's worker types, scaled down (tests/multinode.py)."""
    real = yaml.safe_load(CLUSTER_YAML.read_text())
    config = scaled_autoscaler_config(idle_timeout_minutes=0.2)
    workers = {k: v for k, v in real["available_node_types"].items() if k != real["head_node_type"]}
    scaled = {k: v for k, v in config["available_node_types"].items() if k != HEAD_NODE_TYPE}
    assert set(scaled) == set(workers) and workers
    for name, node_type in scaled.items():
        assert node_type["min_workers"] == workers[name].get("min_workers", 0)
        assert node_type["min_workers"] == 0, f"cluster.yaml: {name} has min_workers > 0: no autoscaling from zero"
        assert node_type["max_workers"] == min(workers[name]["max_workers"], MAX_WORKERS_CAP)
        assert node_type["resources"] == {"CPU": 1}
    assert config["available_node_types"][HEAD_NODE_TYPE]["resources"] == {"CPU": 0}
    assert config["idle_timeout_minutes"] == 0.2 and config["max_workers"] <= MAX_WORKERS_CAP


def test_scaled_config_is_read_by_the_resource_check(tmp_path):
    """The sweep's launch-time resource check reads the scaled config as it is (`--cluster-config`)."""
    from slmscale.sweep.resources import autoscaler_nodes

    config = scaled_autoscaler_config(idle_timeout_minutes=0.2)
    path = tmp_path / "cluster-fake.yaml"
    path.write_text(yaml.safe_dump(config))
    shapes = {s.name: s for s in autoscaler_nodes(path)}
    assert set(shapes) == set(config["available_node_types"]) - {HEAD_NODE_TYPE}
    assert all(s.cpus == 1 and s.gpus == 0 and 1 <= s.count <= MAX_WORKERS_CAP for s in shapes.values())


@pytest.mark.slow  # ~50 s: with the slow tests (`make test-all`); the object-store preemption test is the default one
@pytest.mark.timeout(420)
def test_sweep_autoscales_from_zero_and_releases_idle_workers(units, tmp_path):
    config = scaled_autoscaler_config(idle_timeout_minutes=0.2)
    grid = shrunken_tiny_grid(tmp_path / "grid.yaml", models=2, tokens=2)
    storage = make_storage("shared", tmp_path)
    log = tmp_path / "driver.log"
    t_start = time.time()
    with autoscaling_cluster(config) as cluster:
        t_head = time.time()
        watcher = NodeWatcher(cluster.address, tmp_path / "nodes.jsonl")
        driver = None
        try:
            first = wait_for(watcher.latest, 60, "the first node-table sample")
            assert first["workers"] == [], f"worker nodes alive before the sweep: {first}"
            t0 = time.time()
            driver = start_driver(
                ["sweep", "launch", str(grid), "--units", str(units), "--storage", storage, "--address", cluster.address,
                 "--cluster-config", str(cluster.write_config(tmp_path / "cluster-fake.yaml")), "--quiet"], log)
            rc = driver.wait(timeout=300)
            t_done = time.time()
            assert rc == 0, _log_tail(log)
            # Released after the idle timeout (0.2 min) plus the autoscaler's update period.
            wait_for(lambda: (s := watcher.latest()) and s["t"] > t_done and not s["workers"], 120,
                     "the idle worker nodes to be released")
            t_released = next(s["t"] for s in watcher.samples() if s["t"] > t_done and not s["workers"])
            samples = watcher.samples()
        finally:
            if driver is not None:
                stop_driver(driver)
            watcher.stop()

    up = [s for s in samples if s["workers"]]
    assert up, "the autoscaler started no worker node"
    started = sorted({n for s in samples for n in s["workers"]})
    assert 1 <= max(len(s["workers"]) for s in samples) <= config["max_workers"]

    files = StorageFiles(storage)
    sweep = files.read_json("sweep.json")
    assert len(sweep["trials"]) == 4
    last_row = 0.0
    for trial in sweep["trials"]:
        run = f"runs/{trial['run_id']}"
        assert files.exists(f"{run}/row.json"), f"{trial['run_id']} did not finish\n{_log_tail(log)}"
        attempt = files.read_json(f"{run}/attempt.json")
        assert attempt["attempt"] == 1
        assert attempt["node_id"] in started, f"{trial['run_id']} ran on {attempt['node_id']}, not on a worker node"
        last_row = max(last_row, files.mtime(f"{run}/row.json"))
    print(f"\n[autoscaling] head up in {t_head - t_start:.1f}s; from launch: first worker node alive after "
          f"{up[0]['t'] - t0:.1f}s, {len(started)} worker node(s) started (at most {max(len(s['workers']) for s in samples)}"
          f" at once), all {len(sweep['trials'])} trials finished after {last_row - t0:.1f}s (driver exited after "
          f"{t_done - t0:.1f}s), workers released {t_released - t_done:.1f}s after the driver exited "
          f"({t_released - last_row:.1f}s after the last trial finished); test wall {time.time() - t_start:.1f}s")


# --- (b) node preemption ------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("storage_kind", [pytest.param("shared", marks=pytest.mark.slow), "s3"])
def test_preempted_node_trial_resumes_to_the_uninterrupted_loss(units, tmp_path, storage_kind, request):
    """Object storage ('s3': units and storage on the moto server, each worker node with its own scratch disk,
    deleted with the node) in the default suite; the shared-directory variant with the slow tests."""
    from slmscale.models.train import train
    from slmscale.objstore import StorePath, upload
    from slmscale.sweep.trainable import train_config_for

    t_start = time.time()
    # One short trial (16 updates: finishes first) and one long one (128 updates, a checkpoint every 16), one per
    # worker node. The long one is preempted a few updates past a checkpoint, once the short one has finished.
    checkpoint_every, past_checkpoint = 16, 5
    grid = shrunken_tiny_grid(tmp_path / "grid.yaml", models=["tiny-1M"], tokens=[8192, 65536], name="preempt",
                              train={**FAST_TRAIN, "checkpoint_every": checkpoint_every, "report_every": 1})
    storage = make_storage(storage_kind, tmp_path, request)
    files = StorageFiles(storage)
    on_store = storage_kind == "s3"
    if on_store:  # the unit dataset on the store too: every node stages it once
        units_arg = f"{storage}-units"
        upload(units, StorePath(units_arg))
    else:
        units_arg = str(units)
    log = tmp_path / "driver.log"
    updates = {}  # run_id -> total updates

    def total_updates(run_id: str) -> int:
        if not updates and files.exists("sweep.json"):
            tpu = FAST_TRAIN["tokens_per_update"]
            updates.update({t["run_id"]: int(t["tokens"]) // tpu for t in files.read_json("sweep.json")["trials"]})
        return updates.get(run_id, 0)

    with fixed_cluster(head_cpus=0, workers=2, worker_cpus=1,
                       node_scratch=tmp_path / "node-disks" if on_store else None) as cluster:

        def trained_steps(run: str, attempt: dict) -> list[int]:
            """Updates the trial has reported. On object storage the store has them up to the newest pushed
            checkpoint; the updates since are in the scratch copy on the node that trains it."""
            if not on_store:
                return files.metric_steps(run)
            node = node_of(cluster, attempt.get("node_id"))
            paths = list(Path(node.scratch).glob(f"runs/*/{run}/metrics.jsonl")) if node else []
            text = paths[0].read_text() if paths else ""
            return [json.loads(line)["step"] for line in text.splitlines() if line.endswith("}")]

        t_cluster = time.time()
        driver = start_driver(["sweep", "launch", str(grid), "--units", units_arg, "--storage", storage,
                               "--address", cluster.address, "--quiet"], log)
        try:
            def finished_and_midway():
                if driver.poll() is not None:
                    raise AssertionError(f"the sweep ended before the preemption:\n{_log_tail(log)}")
                runs = files.list_dir("runs")
                done = [r for r in runs if files.exists(f"runs/{r}/row.json")]
                for run in runs:
                    steps = files.checkpoint_steps(run)
                    attempt = files.read_json(f"runs/{run}/attempt.json") if files.exists(f"runs/{run}/attempt.json") else {}
                    if (done and run not in done and steps and steps[-1] < total_updates(run)
                            and max(trained_steps(run, attempt), default=0) >= steps[-1] + past_checkpoint
                            and attempt.get("attempt") == 1 and node_of(cluster, attempt.get("node_id"))):
                        return run, attempt, steps[-1]
                return None

            victim, first, ckpt_seen = wait_for(finished_and_midway, 180, "a finished trial and another one "
                                                f"{past_checkpoint} updates past a checkpoint, mid-training")
            node = node_of(cluster, first["node_id"])
            step_before = max(trained_steps(victim, first), default=0)
            t_remove = time.time()
            cluster.remove_node(node)  # the spot node is gone, with the trial's worker process
            if on_store:
                shutil.rmtree(node.scratch)  # ... and its local disk
            t_removed = time.time()
            add_worker(cluster)  # the autoscaler's replacement: capacity remains
            t_added = time.time()
            wait_for(lambda: not pid_alive(first["pid"]), 60, "the preempted attempt's process to end")
            # What the first attempt had done when it died (read before the second attempt rewrites its files).
            second_started = files.read_json(f"runs/{victim}/attempt.json")["attempt"] != 1
            step_at_kill = step_before if second_started or on_store else max(files.metric_steps(victim) + [step_before])
            ckpt_at_kill = ckpt_seen if second_started else max(files.checkpoint_steps(victim))
            finished_before = {r: files.read_json(f"runs/{r}/attempt.json") for r in files.list_dir("runs")
                               if files.exists(f"runs/{r}/row.json")}
            rc = driver.wait(timeout=240)
            assert rc == 0, _log_tail(log)
        finally:
            stop_driver(driver)
        replacement_ids = {n.node_id for n in cluster.worker_nodes}

    sweep = files.read_json("sweep.json")
    attempt = files.read_json(f"runs/{victim}/attempt.json")
    row = files.read_json(f"runs/{victim}/row.json")
    final = files.read_json(f"runs/{victim}/final.json")
    t_second = attempt["started"]
    t_finished = files.mtime(f"runs/{victim}/row.json")

    # The preempted trial ran a second attempt, on another node, from a checkpoint.
    assert attempt["attempt"] == 2 and attempt["node_id"] != first["node_id"]
    assert attempt["node_id"] in replacement_ids
    assert attempt["resumed_from_step"] > 0
    assert ckpt_seen <= attempt["resumed_from_step"] < step_at_kill  # updates past the checkpoint were redone
    if not second_started:  # the checkpoint it resumed from is the newest one the first attempt completed
        assert attempt["resumed_from_step"] == ckpt_at_kill
    steps = files.metric_steps(victim)
    assert steps == list(range(1, total_updates(victim) + 1))  # every update reported once: none lost or doubled

    # Finished trials were not rerun; every trial finished in one attempt except the preempted one.
    assert finished_before and victim not in finished_before
    for trial in sweep["trials"]:
        run_id = trial["run_id"]
        assert files.exists(f"runs/{run_id}/row.json")
        if run_id != victim:
            assert files.read_json(f"runs/{run_id}/attempt.json")["attempt"] == 1
        if run_id in finished_before:
            assert files.read_json(f"runs/{run_id}/attempt.json") == finished_before[run_id]

    # The same trial trained without interruption: exactly the same test loss (CPU training, threads=1).
    trial = next(t for t in sweep["trials"] if t["run_id"] == victim)
    direct = train(train_config_for(trial, sweep["settings"], tmp_path / "uninterrupted" / victim))
    assert row["loss"] == final["test_loss"] == direct["loss"]
    assert row["val_loss"] == direct["val_loss"]

    print(f"\n[preemption/{storage_kind}] removed node {first['node_id'][:12]} under {victim} at update {step_at_kill}/"
          f"{total_updates(victim)} (newest checkpoint {ckpt_at_kill}, every {checkpoint_every}); remove_node took "
          f"{t_removed - t_remove:.1f}s, add_node {t_added - t_removed:.1f}s; 2nd attempt started "
          f"{t_second - t_remove:.1f}s after remove_node (from step {attempt['resumed_from_step']}: "
          f"{step_at_kill - attempt['resumed_from_step']} update(s) redone) and finished {t_finished - t_remove:.1f}s "
          f"after it; test loss {row['loss']:.6f} == uninterrupted; cluster up in {t_cluster - t_start:.1f}s, "
          f"preempted {t_remove - t_cluster:.1f}s after launch; test wall {time.time() - t_start:.1f}s")
