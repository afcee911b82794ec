"""The Ray Tune function trainable: one grid point = train, test loss, downstream evals, one results row.

Fault tolerance lives in the run directory, not here: every trial trains into its run dir on the storage
path (`STORAGE/runs/<run_id>/`, see sweep/storage.py), and `models.train.train` resumes from the newest
checkpoint it finds there. A trial that Tune restarts (worker killed, spot node preempted, `sweep resume`
after the driver died) therefore simply calls `train` again. Each checkpoint is also reported to Tune as a
small pointer checkpoint (the run dir and step), so Tune's own bookkeeping knows the trial's progress
without copying gigabytes of optimizer state a second time.

Into the run dir (next to the files of `models.train`) a trial writes attempt.json when it starts,
sweep_evals.json after each evaluation and row.json at the end (`TrialDir` in sweep/storage.py). A WSD trunk
writes row.json too, as its done marker (`sweep results` gives it no row: it is no grid point); a WSD branch
trains into its own run dir, starting from the trunk's checkpoint until it has checkpoints of its own.
"""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from slmscale.io import atomic_write_json, code_version, json_safe
from slmscale.locks import exclusive_lock
from slmscale.sweep.storage import SweepStorage, TrialDir

__all__ = ["run_trial", "train_config_for", "evaluate_run"]


def train_config_for(trial: dict[str, Any], settings: dict[str, Any], run_dir: str | os.PathLike,
                     trunk_dir: str | os.PathLike | None = None):
    """The models.config.TrainConfig of one trial: grid point + the grid's shared `train` fields + resources,
    and for WSD the trial's schedule: a trunk (constant LR, checkpoints kept at its branch points) or a branch
    of the trunk in `trunk_dir`, with the trunk's warmup.

    `trial` is an entry of sweep.json's `trials`, `settings` its `settings`."""
    from slmscale.errors import SlmscaleError
    from slmscale.models.config import TrainConfig

    res = settings["resources"][trial["model"]]
    fields = dict(
        units_dir=settings["units"],
        model=trial["model"],
        tokens=int(trial["tokens"]),
        out_dir=str(run_dir),  # a path, or an object-store URI (train then works in a node-local scratch copy)
        unique_tokens=trial["unique_tokens"],
        seed=int(trial["seed"]),
        workers=int(res["workers"]),
        gpus_per_worker=float(res["gpus_per_worker"]),
    )
    known = TrainConfig.field_names()
    if "cpus_per_worker" in known:
        fields["cpus_per_worker"] = float(res["cpus_per_worker"])
    if "threads" in known and not res["gpus_per_worker"] and res["workers"] == 1:
        # CPU training in the trainable: use exactly the CPUs Tune reserved, so concurrent trials don't fight.
        fields["threads"] = max(1, int(res["cpus_per_worker"]))
    fields.update(settings.get("train") or {})
    if trial.get("lr") is not None:  # the grid's `lrs` axis
        fields["lr"] = float(trial["lr"])
    schedule = trial.get("schedule", "cosine")
    if schedule != "cosine":
        fields.update(schedule=schedule, warmup_steps=int(trial["warmup_steps"]),
                      keep_steps=tuple(trial.get("keep_steps") or ()))
    if trial.get("trunk"):
        if trunk_dir is None:
            raise SlmscaleError(f"trial {trial['run_id']}: a WSD branch needs its trunk's run dir, expected trunk_dir")
        fields["branch_from"] = str(trunk_dir)
    return TrainConfig(**{k: v for k, v in fields.items() if k in known})


def evaluate_run(run_dir: TrialDir, evals: list[dict[str, str]]) -> dict[str, float]:
    """Run each benchmark once per run dir and merge their metric columns.

    `models.evaluation.evaluate` writes the full result to eval/<name>.json; the metrics are also indexed in
    the run dir's evaluation index by the grid's eval entry, so a trial restarted after (some of) its
    evaluations skips them."""
    index = run_dir.read_eval_index()
    metrics: dict[str, float] = {}
    local = run_dir.path
    if run_dir.on_store and any(json.dumps(e, sort_keys=True) not in index for e in evals):
        from slmscale.models.mirror import local_run_dir, scratch_run_dir
        from slmscale.models.rundir import RunDir

        trained_here = scratch_run_dir(run_dir.path)  # the scratch copy `train` just finished, else a fresh pull
        local = trained_here if RunDir(trained_here).is_finished() else local_run_dir(run_dir.path)
    for entry in evals:
        key = json.dumps(entry, sort_keys=True)
        if key not in index:
            from slmscale.models.evaluation import evaluate

            result = evaluate(str(local), entry["benchmark"], units_dir=entry.get("units"),
                              task=entry.get("task"), progress=False)
            if run_dir.on_store:  # eval/<name>.json to the store's run dir too
                from slmscale.models.mirror import RunMirror

                RunMirror(run_dir.path, local).push_evals()
            index[key] = {k: float(v) for k, v in result["metrics"].items()}
            atomic_write_json(run_dir.eval_index, index)
        metrics.update(index[key])
    return metrics


def _report_to_tune(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    """tune.report the metrics; a checkpoint goes to Tune as a pointer (the real one already lives on the
    shared storage, in the run dir, where `train` resumes from it), not as a second copy."""
    from ray import tune

    clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and v is not None}
    if not checkpoint_dir:
        tune.report(clean)
        return
    with tempfile.TemporaryDirectory(prefix="slmscale-ckpt-") as tmp:
        (Path(tmp) / "pointer.json").write_text(json.dumps({"checkpoint_dir": str(checkpoint_dir)}))
        tune.report(clean, checkpoint=tune.Checkpoint.from_directory(tmp))


def _trial_lock(run_dir: TrialDir) -> Path:
    """The run dir's lock file; on object storage (no flock there) that of its scratch copy on this node, which
    `train` takes too. Two attempts of one trial are kept apart by Tune, which runs a trial once at a time."""
    if run_dir.on_store:
        from slmscale.models.mirror import scratch_run_dir

        return scratch_run_dir(run_dir.path) / ".lock"
    return run_dir.lock


def _ray_node_id() -> str | None:
    """The Ray node this attempt runs on (hex id), None outside Ray: which node a preemption took."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - provenance only
        return None


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. `config = {"run_id": str, "sweep_file": STORAGE/sweep.json}`; the trial and
    the launch settings are read from sweep.json on the shared storage.

    Returns None: Tune would report a returned dict a second time."""
    storage = SweepStorage.of_sweep_file(config["sweep_file"])  # wherever the storage is mounted on this node
    sweep = storage.read_sweep()
    trial = next(t for t in sweep["trials"] if t["run_id"] == config["run_id"])
    settings = sweep["settings"]
    run_dir = storage.run_dir(trial["run_id"])
    # The trial is its run directory's one writer (attempt, training, evaluations, row); `train` takes the same
    # lock again (re-entrant in this process). A trial whose previous attempt still runs somewhere is refused,
    # and Tune retries it later.
    trunk_dir = storage.run_dir(trial["trunk"]) if trial.get("trunk") else None
    with exclusive_lock(_trial_lock(run_dir), what=f"trial {trial['run_id']} ({run_dir.path})"):
        _run_trial_locked(trial, settings, run_dir, trunk_dir)


def _run_trial_locked(trial: dict[str, Any], settings: dict[str, Any], run_dir: TrialDir,
                      trunk_dir: TrialDir | None) -> None:
    if run_dir.is_done():  # finished in an earlier attempt (e.g. the driver died after the trial ended)
        _report_to_tune({**run_dir.read_row(), "done": True}, None)
        return
    from slmscale.models.checkpoint import complete_steps

    previous = run_dir.read_attempt()
    steps = complete_steps(run_dir.path)
    atomic_write_json(
        run_dir.attempt,
        {"attempt": int(previous.get("attempt", 0)) + 1, "host": socket.gethostname(), "pid": os.getpid(),
         "node_id": _ray_node_id(), "started": time.time(), "run_id": trial["run_id"],
         "resumed_from_step": steps[-1] if steps else int(trial.get("branch_step", 0))},
    )

    from slmscale.models.train import train

    cfg = train_config_for(trial, settings, run_dir.path, trunk_dir=trunk_dir.path if trunk_dir else None)

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        _report_to_tune({**metrics, "run_id": trial["run_id"], "phase": "train"}, checkpoint_dir)

    # With several workers, train() runs a Ray Train TorchTrainer whose controller forwards the workers'
    # reports to this Tune trial itself; our callback would run in the wrong process.
    row = dict(train(cfg, report=report if cfg.workers == 1 and not getattr(cfg, "use_ray", False) else None))
    if settings.get("eval") and trial.get("schedule") != "constant":  # a WSD trunk is no grid point: not scored
        row.update(evaluate_run(run_dir, list(settings["eval"])))
    row.setdefault("code_version", code_version())
    row["run_id"] = trial["run_id"]
    row["sweep"] = settings["name"]
    atomic_write_json(run_dir.row, json_safe(row))  # standard JSON: an unknown number (MFU on a CPU) is null
    _report_to_tune({**{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}, "done": True},
                    None)
