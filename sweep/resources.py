"""Per-trial resource requests, and the check that every trial fits the cluster before anything launches.

A trial with one worker trains inside its Tune trainable, so the trial's placement group is that worker's
bundle. A trial with several workers starts a Ray Train `TorchTrainer` from the trainable: the trainable
itself holds a small CPU reservation and Ray Train schedules the workers (Ray 2.60: Tune cannot wrap a
TorchTrainer directly).

The cluster's capacity is what is alive now plus, for an autoscaling cluster, what the autoscaler may add:
each node type of the cluster-launcher YAML (`cluster.yaml`, or `~/ray_bootstrap_config.yaml` on a head
node started by `ray up`) times its `max_workers`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slmscale.errors import SlmscaleError
from slmscale.sweep.grid import GridSpec, Trial, TrialResources

__all__ = ["TRAINABLE_CPUS", "NodeShape", "trial_bundles", "live_nodes", "autoscaler_nodes", "check_fits", "tune_resources"]

# CPU held by the Tune trainable that drives a multi-worker TorchTrainer (it only waits and reports).
TRAINABLE_CPUS = 0.5
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class NodeShape:
    """One node (or node type that may be launched `count` times) and what it offers."""

    name: str
    cpus: float
    gpus: float
    count: int = 1


def worker_bundle(res: TrialResources) -> dict[str, float]:
    bundle = {"CPU": float(res.cpus_per_worker)}
    if res.gpus_per_worker:
        bundle["GPU"] = float(res.gpus_per_worker)
    return bundle


def trial_bundles(res: TrialResources) -> list[dict[str, float]]:
    """Everything one trial occupies while it runs: its trainable plus its training workers."""
    if res.workers == 1:
        return [worker_bundle(res)]
    return [{"CPU": TRAINABLE_CPUS}] + [worker_bundle(res) for _ in range(res.workers)]


def tune_resources(res: TrialResources):
    """The PlacementGroupFactory Tune reserves for a trial (see the module docstring)."""
    from ray import tune

    if res.workers == 1:
        return tune.PlacementGroupFactory([worker_bundle(res)])
    return tune.PlacementGroupFactory([{"CPU": TRAINABLE_CPUS}])


def live_nodes() -> list[NodeShape]:
    """Alive nodes of the Ray cluster this process is connected to."""
    import ray

    shapes = []
    for node in ray.nodes():
        if node.get("Alive"):
            r = node.get("Resources", {})
            shapes.append(NodeShape(node.get("NodeManagerAddress", "node"), float(r.get("CPU", 0)), float(r.get("GPU", 0))))
    return shapes


def autoscaler_nodes(cluster_config: str | Path | None) -> list[NodeShape]:
    """Worker node types an autoscaler may launch, from a cluster-launcher YAML (none if there is no file)."""
    import yaml

    path = Path(cluster_config).expanduser() if cluster_config else BOOTSTRAP_CONFIG.expanduser()
    if not path.is_file():
        if cluster_config:
            raise SlmscaleError(f"--cluster-config: file not found: {path}")
        return []
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SlmscaleError(f"{path}: not valid YAML: {exc}") from None
    head = cfg.get("head_node_type")
    shapes = []
    for name, node_type in (cfg.get("available_node_types") or {}).items():
        if name == head:
            continue  # the head is alive already (counted by live_nodes)
        r = node_type.get("resources") or {}
        if "CPU" not in r:
            raise SlmscaleError(
                f"{path}: available_node_types.{name}.resources has no CPU count; write CPU/GPU explicitly so the "
                f"sweep can check that its trials fit before launching"
            )
        shapes.append(NodeShape(name, float(r.get("CPU", 0)), float(r.get("GPU", 0)), int(node_type.get("max_workers", cfg.get("max_workers", 0)))))
    return shapes


def _fits(bundle: dict[str, float], node: NodeShape) -> bool:
    return bundle.get("CPU", 0) <= node.cpus + 1e-9 and bundle.get("GPU", 0) <= node.gpus + 1e-9


def check_fits(spec: GridSpec, trials: Iterable[Trial], nodes: list[NodeShape]) -> None:
    """Raise SlmscaleError, naming the trial and what it needs, if a trial can never be scheduled.

    Checks that every bundle fits on one node (shape) and that a trial's whole demand fits in the cluster's
    largest possible capacity; otherwise Tune would wait forever for resources that never come.
    """
    if not nodes:
        raise SlmscaleError("the Ray cluster reports no alive nodes")
    total_cpu = sum(n.cpus * n.count for n in nodes)
    total_gpu = sum(n.gpus * n.count for n in nodes)
    described = ", ".join(f"{n.count} x {n.name} ({n.cpus:g} CPU, {n.gpus:g} GPU)" for n in nodes)
    checked: set[str] = set()
    for trial in trials:
        if trial.model in checked:
            continue
        checked.add(trial.model)
        res = spec.resources_for(trial.model)
        bundles = trial_bundles(res)
        for b in bundles:
            if not any(_fits(b, n) for n in nodes):
                raise SlmscaleError(
                    f"{spec.source}: trial {trial.run_id} needs a worker with {b.get('CPU', 0):g} CPU and "
                    f"{b.get('GPU', 0):g} GPU, but no node of the cluster has that much (nodes: {described}); "
                    f"lower 'resources' / 'model_resources.{trial.model}' or add a bigger node type"
                )
        need_cpu = sum(b.get("CPU", 0) for b in bundles)
        need_gpu = sum(b.get("GPU", 0) for b in bundles)
        if need_cpu > total_cpu + 1e-9 or need_gpu > total_gpu + 1e-9:
            raise SlmscaleError(
                f"{spec.source}: trial {trial.run_id} needs {need_cpu:g} CPU and {need_gpu:g} GPU in total "
                f"({res.workers} worker(s)), but the cluster can offer at most {total_cpu:g} CPU and {total_gpu:g} GPU "
                f"(nodes: {described})"
            )
