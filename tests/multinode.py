"""Multi-node Ray clusters on one machine, for the sweep's cluster tests (tests/test_sweep_multinode.py).

Two harnesses, both built from Ray's own test utilities (`ray.cluster_utils`):

* `LocalAutoscalingCluster`: an autoscaling cluster whose worker "nodes" are extra raylets on this machine,
  started and stopped by Ray's autoscaler through its fake multi-node provider. Its node types come from the
  repository's `cluster.yaml` (`scaled_autoscaler_config`), so the test exercises the shape the real cluster
  has, scaled down to this machine.
* `fixed_cluster`: a `ray.cluster_utils.Cluster` (head + worker nodes added and removed by the test), for
  preempting a node under a running trial.

Scaling rule (`scaled_autoscaler_config`), cluster.yaml -> this machine:

* the head node type becomes Ray's fake head type `ray.head.default` with resources {"CPU": 0}: no trial can
  run on it (in cluster.yaml it is where the driver runs; its CPUs are not meant for training either);
* every other entry of `available_node_types` keeps its name and its `min_workers`; its `max_workers` is capped
  at `MAX_WORKERS_CAP` (2) and its resources are replaced by {"CPU": 1} (GPUs dropped: this machine has none;
  one CPU = one CPU trial of the test grids, which ask for `cpus_per_worker: 1`, `gpus_per_worker: 0`);
  `node_config` (instance type, AMI, spot) is dropped: the fake provider starts local raylets;
* the cluster-wide `max_workers` is capped at `MAX_WORKERS_CAP` too (cluster.yaml: 18), so this 2-core machine
  never runs more than 2 worker raylets whatever the number of node types; `upscaling_speed` is kept;
  `idle_timeout_minutes` is a parameter (cluster.yaml: 10 minutes; the tests use ~0.2);
* provider, auth, file mounts and setup/start commands are replaced by the fake multi-node provider's settings
  (`FAKE_PROVIDER` and empty command lists): nothing is installed or copied, every "node" shares this machine's
  file system (so a `tmp_path` storage is a shared file system, as EFS is on the real cluster).

The same dict is both the autoscaler's config and the file given to `sweep launch --cluster-config`, so the
launch-time resource check counts exactly the node types the autoscaler may start.

Isolation from other Ray instances on this machine (other tests, other developers):

* nothing here runs `ray stop` (`AutoscalingCluster.start/shutdown` do: they would kill every Ray process on
  the machine). The autoscaling head is started in a new session, so it and every process it starts, the fake
  worker nodes included (the autoscaler's monitor starts them), share one process group, which `shutdown`
  kills; anything that escaped the group but names the cluster's private temp dir is killed too;
* the clusters get private temp dirs and free ports (GCS, Ray client server, dashboard agent), and the file
  `/tmp/ray/ray_current_cluster` (which `ray.init()` without an address would follow) is restored to what it was
  before a cluster was started, so no other process joins a test cluster, or a dead one after teardown.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
MAX_WORKERS_CAP = 2
HEAD_NODE_TYPE = "ray.head.default"  # the fake provider's head type (ray.autoscaler._private.fake_multi_node)
FAKE_PROVIDER = {
    "type": "fake_multinode",
    "use_node_id_as_ip": True,
    "disable_node_updaters": True,
    "disable_launch_config_check": True,
}
_EMPTY_LISTS = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
                "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


# --- the scaled autoscaler config ---------------------------------------------------------------------------------

def scaled_node_types(cluster_yaml: str | os.PathLike = CLUSTER_YAML) -> dict[str, dict[str, Any]]:
    """cluster.yaml's worker node types, scaled to this machine (module docstring): name and min_workers kept,
    max_workers capped at MAX_WORKERS_CAP, resources {"CPU": 1}, no node_config."""
    cfg = yaml.safe_load(Path(cluster_yaml).read_text())
    default_max = int(cfg.get("max_workers", MAX_WORKERS_CAP))
    types = {}
    for name, node_type in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        types[name] = {
            "resources": {"CPU": 1},
            "node_config": {},
            "min_workers": int(node_type.get("min_workers", 0)),
            "max_workers": min(int(node_type.get("max_workers", default_max)), MAX_WORKERS_CAP),
        }
    if not types:
        raise ValueError(f"{cluster_yaml}: available_node_types has no worker node type")
    return types


def scaled_autoscaler_config(cluster_yaml: str | os.PathLike = CLUSTER_YAML, *, idle_timeout_minutes: float = 0.2,
                             head_resources: dict[str, float] | None = None) -> dict[str, Any]:
    """The whole fake-multinode autoscaler config for cluster.yaml scaled down to this machine (module docstring).

    Usable as-is by Ray's autoscaler (`ray start --head --autoscaling-config`) and by the sweep's resource check
    (`sweep launch --cluster-config`, read by slmscale.sweep.resources.autoscaler_nodes)."""
    cfg = yaml.safe_load(Path(cluster_yaml).read_text())
    node_types = scaled_node_types(cluster_yaml)
    node_types[HEAD_NODE_TYPE] = {"resources": dict(head_resources or {"CPU": 0}), "node_config": {}, "max_workers": 0}
    config: dict[str, Any] = {
        "cluster_name": f"{cfg.get('cluster_name', 'slmscale')}-fake",
        "max_workers": min(int(cfg.get("max_workers", MAX_WORKERS_CAP)), MAX_WORKERS_CAP),
        "upscaling_speed": float(cfg.get("upscaling_speed", 1.0)),
        "idle_timeout_minutes": float(idle_timeout_minutes),
        "provider": dict(FAKE_PROVIDER),
        "auth": {},
        "head_node_type": HEAD_NODE_TYPE,
        "available_node_types": node_types,
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }
    config.update({key: [] for key in _EMPTY_LISTS})
    return config


# --- small process and port helpers -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    """The `ray` script of this interpreter's environment (PATH may not have the venv's bin/)."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.is_file() else (shutil.which("ray") or "ray")


def _proc_pgid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])  # fields after "(comm)": state, ppid, pgrp


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _group_members(pgid: int) -> list[int]:
    return [pid for pid in _pids() if _proc_pgid(pid) == pgid]


def _naming(text: str) -> list[int]:
    me = os.getpid()
    return [pid for pid in _pids() if pid != me and text in _proc_cmdline(pid)]


def pid_alive(pid: int) -> bool:
    """A process of this machine with that pid exists and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_group(pgid: int, also_naming: str | None = None, grace_s: float = 10.0) -> None:
    """SIGTERM process group `pgid` (and processes whose command line contains `also_naming`), SIGKILL what is
    left after `grace_s`. Only ever called with a group and a private temp dir this module created."""
    def targets() -> list[int]:
        return sorted(set(_group_members(pgid)) | set(_naming(also_naming) if also_naming else []))

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(pid_alive(p) for p in targets()):
            time.sleep(0.2)


@contextlib.contextmanager
def keep_ray_address_file() -> Iterator[None]:
    """Restore /tmp/ray/ray_current_cluster on exit: a head started by `ray.cluster_utils.Cluster` writes its
    address there, and `ray.init()` (or `slmscale` without --address) in any other process would join it."""
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    finally:
        _restore(path, before)


def _restore(path: Path, content: bytes | None) -> None:
    try:
        if content is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
    except OSError:
        pass


@contextlib.contextmanager
def ray_token_auth() -> Iterator[None]:
    """Ray's token authentication on, as `ray.init()` turns it on for a new local cluster (Ray 2.60: it sets
    RAY_AUTH_MODE=token in its process, hence in every process started later, and writes ~/.ray/auth_token if
    missing), unless RAY_AUTH_MODE is set already (then it is respected). The test clusters listen on this
    machine's network address, so they should not run without authentication; and every process that joins them
    (the sweep driver, `NodeWatcher`) must use the same mode. Restored on exit."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._raylet import Config

    saved = os.environ.get("RAY_AUTH_MODE")
    if saved is None:
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")
    try:
        ensure_token_if_auth_enabled(create_token_if_missing=True)
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
            Config.initialize("")


# --- watching a cluster's nodes without joining it ----------------------------------------------------------------

def _watch_main(gcs_address: str, out: str, every_s: float = 0.25) -> None:
    """Append one JSON line per poll to `out`: {"t": unix time, "workers": [alive non-head node ids]}. Runs in a
    subprocess (`NodeWatcher`): it reads the node table straight from the GCS, no `ray.init` (Ray's
    authentication mode comes from RAY_AUTH_MODE, see `ray_token_auth`)."""
    import ray._private.state
    from ray._raylet import GcsClientOptions

    state = ray._private.state.GlobalState()
    state._initialize_global_state(
        GcsClientOptions.create(gcs_address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False))
    with open(out, "a") as f:
        while True:
            try:
                workers = sorted(n["NodeID"] for n in state.node_table() if n.get("Alive")
                                 and "node:__internal_head__" not in (n.get("Resources") or {}))
                f.write(json.dumps({"t": time.time(), "workers": workers}) + "\n")
            except Exception as exc:  # noqa: BLE001 - keep watching; the reader sees the error
                f.write(json.dumps({"t": time.time(), "error": str(exc)[:300]}) + "\n")
            f.flush()
            time.sleep(every_s)


class NodeWatcher:
    """Which worker nodes of the cluster at `gcs_address` are alive, over time, polled by a subprocess (see
    `_watch_main`): the pytest process never joins a test cluster (it may hold its own local Ray)."""

    def __init__(self, gcs_address: str, out: Path) -> None:
        self.out = Path(out)
        self.out.write_text("")
        code = f"from tests.multinode import _watch_main; _watch_main({gcs_address!r}, {str(self.out)!r})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                                     env={**os.environ, "RAY_ADDRESS": ""}, stdout=subprocess.DEVNULL,
                                     stderr=open(self.out.with_suffix(".err"), "wb"))

    def samples(self) -> list[dict[str, Any]]:
        rows = []
        for line in self.out.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
        return [r for r in rows if "workers" in r]

    def latest(self) -> dict[str, Any] | None:
        rows = self.samples()
        return rows[-1] if rows else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc.pid, grace_s=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


# --- the autoscaling cluster -------------------------------------------------------------------------------------

def _autoscaling_cluster_base():
    from ray.cluster_utils import AutoscalingCluster

    return AutoscalingCluster


class LocalAutoscalingCluster(_autoscaling_cluster_base()):
    """`ray.cluster_utils.AutoscalingCluster` that is safe on a shared machine.

    * `_generate_config` builds the whole base config itself (the Ray wheel does not ship the
      fake_multi_node/example.yaml that Ray's version reads);
    * `start` is Ray's `start` without `ray stop --force`, with a private temp dir and free ports, the head
      started in a new session (one process group for the head's processes and the fake worker nodes);
    * `shutdown` kills that process group (and anything naming the private temp dir), not every Ray process.

    `config` is the autoscaler config; `write_config(path)` writes it for `sweep launch --cluster-config`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._full_config = config
        types = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
        head = dict(config["available_node_types"][config["head_node_type"]]["resources"])
        extra = {k: v for k, v in config.items() if k not in ("available_node_types", "head_node_type", "provider")}
        super().__init__(head_resources=head, worker_node_types=types, **extra)
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="ray-as-", dir="/tmp")  # short: Ray's socket paths live here
        self.pgid: int | None = None
        self.address: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        import copy

        config = copy.deepcopy(self._full_config)
        config["available_node_types"] = copy.deepcopy(worker_node_types)
        config["available_node_types"][HEAD_NODE_TYPE] = {"resources": dict(head_resources), "node_config": {},
                                                          "max_workers": 0}
        config["head_node_type"] = HEAD_NODE_TYPE
        if autoscaler_v2:
            from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

            config["provider"].update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
        config.update(config_kwargs)
        return config

    def write_config(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return path

    def start(self, _system_config=None, override_env: dict | None = None, timeout_s: float = 120) -> str:
        """Start the head (the autoscaler's monitor runs on it); returns the GCS address 'ip:port'."""
        import ray._private.services

        node_ip = ray._private.services.get_node_ip_address()
        self.address = f"{node_ip}:{self.port}"
        # The fake provider joins its worker nodes to <this machine's IP>:6379 unless told the GCS address.
        self._config["provider"]["gcs_address"] = self.address
        config_file = Path(self.temp_dir) / "autoscaling-config.json"
        config_file.write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [_ray_bin(), "start", "--head", f"--autoscaling-config={config_file}", f"--port={self.port}",
               f"--temp-dir={self.temp_dir}", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false", "--disable-usage-stats",
               f"--num-cpus={head.pop('CPU', 0)}", f"--num-gpus={head.pop('GPU', 0)}"]
        if "object_store_memory" in head:
            cmd.append(f"--object-store-memory={head.pop('object_store_memory')}")
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        if _system_config is not None:
            cmd.append(f"--system-config={json.dumps(_system_config, separators=(',', ':'))}")
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", **(override_env or {})}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pgid = proc.pid  # a session leader: its pid is the group id of everything it starts
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.shutdown()
            raise
        if proc.returncode != 0:
            self.shutdown()
            raise RuntimeError(f"ray start --head failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
        ray._private.services.find_gcs_addresses.cache_clear()
        return self.address

    def shutdown(self) -> None:
        """Kill the head's process group (every process of this cluster), not every Ray process of the machine."""
        if self.pgid is not None:
            kill_group(self.pgid, also_naming=self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def autoscaling_cluster(config: dict[str, Any]) -> Iterator[LocalAutoscalingCluster]:
    with ray_token_auth():
        cluster = LocalAutoscalingCluster(config)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.shutdown()


# --- the fixed cluster ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def fixed_cluster(head_cpus: float = 0, workers: int = 2, worker_cpus: float = 1,
                  node_scratch: Path | None = None) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` (not connected: drive it through `--address cluster.address` from a
    subprocess) with a head of `head_cpus` CPUs and `workers` nodes of `worker_cpus` CPUs; shut down on exit,
    also on failure. Add a node like it with `add_worker(cluster)`. With `node_scratch`, every worker node gets
    its own local disk for object-store runs: SLMSCALE_SCRATCH=node_scratch/node-N in its raylet's environment
    (inherited by its workers), at `node.scratch`."""
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="ray-mn-", dir="/tmp")
    cluster = None
    with ray_token_auth(), keep_ray_address_file():
        try:
            with keep_ray_address_file():  # restored at once: no other process may join this cluster meanwhile
                cluster = Cluster(initialize_head=True, connect=False,
                                  head_node_args={"num_cpus": head_cpus, "temp_dir": temp_dir, "include_dashboard": False})
            cluster.worker_cpus = worker_cpus
            cluster.temp_dir = temp_dir
            cluster.node_scratch = node_scratch
            cluster.nodes_added = 0
            for _ in range(workers):
                add_worker(cluster)
            yield cluster
        finally:
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def add_worker(cluster) -> Any:
    cluster.nodes_added += 1
    if cluster.node_scratch is None:
        return cluster.add_node(num_cpus=cluster.worker_cpus, temp_dir=cluster.temp_dir)
    scratch = Path(cluster.node_scratch) / f"node-{cluster.nodes_added}"
    node = cluster.add_node(num_cpus=cluster.worker_cpus, temp_dir=cluster.temp_dir,
                            env_vars={"SLMSCALE_SCRATCH": str(scratch)})
    node.scratch = scratch
    return node


def node_of(cluster, node_id: str):
    """The worker node (ray._private.node.Node) of `cluster` whose Ray node id (hex) is `node_id`, else None."""
    return next((n for n in cluster.worker_nodes if n.node_id == node_id), None)


# --- sweep helpers ---------------------------------------------------------------------------------------------

def start_driver(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m slmscale ARGS` in a new session (so killing it can't touch anything else), output to `log`."""
    env = {**os.environ, "RAY_ADDRESS": "", "TQDM_DISABLE": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "slmscale", *args], cwd=REPO, env=env,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def stop_driver(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        kill_group(proc.pid, grace_s=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class StorageFiles:
    """Read-only view of a sweep's storage, for assertions: a path, or any URI pyarrow.fs understands
    (s3://bucket/prefix, ...), so a test can take the storage kind as a parameter. Paths are relative to it."""

    def __init__(self, storage: str) -> None:
        from pyarrow import fs

        if "://" in storage:  # the project's own S3 settings (AWS_ENDPOINT_URL, timeouts)
            from slmscale.objstore import filesystem_of

            self.fs, self.root = filesystem_of(storage)
        else:
            self.fs, self.root = fs.LocalFileSystem(), str(Path(storage).resolve())

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def _info(self, rel: str):
        return self.fs.get_file_info(self._path(rel))

    def exists(self, rel: str) -> bool:
        from pyarrow import fs

        return self._info(rel).type == fs.FileType.File

    def mtime(self, rel: str) -> float:
        return self._info(rel).mtime.timestamp()

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read().decode()

    def read_json(self, rel: str) -> dict[str, Any]:
        return json.loads(self.read_text(rel))

    def list_dir(self, rel: str) -> list[str]:
        """Names of the folders in `rel` (none if it does not exist)."""
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory)

    def checkpoint_steps(self, run_id: str) -> list[int]:
        """Steps of the trial's complete checkpoints: runs/<run_id>/checkpoints/step-NNNNNNN/ holding
        trainer_state.json (written last)."""
        steps = []
        for name in self.list_dir(f"runs/{run_id}/checkpoints"):
            if name.startswith("step-") and self.exists(f"runs/{run_id}/checkpoints/{name}/trainer_state.json"):
                steps.append(int(name.split("-", 1)[1]))
        return sorted(steps)

    def metric_steps(self, run_id: str) -> list[int]:
        """The `step` of every line of runs/<run_id>/metrics.jsonl, in order (a torn last line is skipped)."""
        rel = f"runs/{run_id}/metrics.jsonl"
        if not self.exists(rel):
            return []
        steps = []
        for line in self.read_text(rel).splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                steps.append(int(json.loads(line)["step"]))
        return steps
