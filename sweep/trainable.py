"""The Ray Tune function trainable: one grid point = train, test loss, downstream evals, one results row.

Fault tolerance lives in the run directory, not here: every trial trains into `STORAGE/runs/<run_id>/`
on the storage path, and `models.train.train` resumes from the newest checkpoint it finds there. A trial
that Tune restarts (worker killed, spot node preempted, `sweep resume` after the driver died) therefore
simply calls `train` again. Each checkpoint is also reported to Tune as a small pointer checkpoint (the
run dir and step), so Tune's own bookkeeping knows the trial's progress without copying gigabytes of
optimizer state a second time.

Files this module writes into the run dir (next to those of `models.train`):
    attempt.json        host, pid, attempt number, start time of the current attempt (for `sweep status`)
    sweep_evals.json    metrics of each finished evaluation (models.evaluation writes eval/<name>.json),
                        so a restarted trial skips the evaluations already done
    row.json            the final results row, training + evaluation metrics: its presence means FINISHED
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

from slmscale.io import atomic_write_json, code_version

__all__ = ["run_trial", "train_trial", "run_dir_of", "ROW_FILE", "ATTEMPT_FILE", "train_config_for", "evaluate_run"]

ROW_FILE = "row.json"
ATTEMPT_FILE = "attempt.json"
EVAL_INDEX = "sweep_evals.json"


def run_dir_of(storage: str | Path, run_id: str) -> Path:
    return Path(storage) / "runs" / run_id


def train_config_for(trial: dict[str, Any], sweep: dict[str, Any], run_dir: Path):
    """The models.train.TrainConfig of one trial: grid point + the grid's shared `train` fields + resources."""
    from slmscale.models.train import TrainConfig

    res = sweep["resources"][trial["model"]]
    fields = dict(
        units_dir=sweep["units"],
        model=trial["model"],
        tokens=int(trial["tokens"]),
        out_dir=str(run_dir),
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
    fields.update(sweep.get("train") or {})
    return TrainConfig(**{k: v for k, v in fields.items() if k in known})


def evaluate_run(run_dir: Path, evals: list[dict[str, str]]) -> dict[str, float]:
    """Run each benchmark once per run dir and merge their metric columns.

    `models.evaluation.evaluate` writes the full result to eval/<name>.json; the metrics are also indexed in
    EVAL_INDEX by the grid's benchmark entry, so a trial restarted after (some of) its evaluations skips them."""
    index_path = run_dir / EVAL_INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    metrics: dict[str, float] = {}
    for entry in evals:
        key = json.dumps(entry, sort_keys=True)
        if key not in index:
            from slmscale.models.evaluation import evaluate

            result = evaluate(str(run_dir), entry["benchmark"], units_dir=entry.get("units"), task=entry.get("task"),
                              progress=False)
            index[key] = {k: float(v) for k, v in result["metrics"].items()}
            atomic_write_json(index_path, index)
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


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. `config = {"run_id": str, "sweep_file": STORAGE/sweep.json}`.

    Returns None: Tune would report a returned dict a second time."""
    train_trial(config)


def train_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Body of `run_trial`; returns the trial's results row."""
    if "sweep_file" in config:
        spec = json.loads(Path(config["sweep_file"]).read_text())
        trial = next(t for t in spec["trials"] if t["run_id"] == config["run_id"])
        sweep = spec["settings"]
        run_root = Path(config["sweep_file"]).parent / "runs"  # next to sweep.json, wherever the storage is mounted
    else:  # called directly with an explicit trial + settings
        trial, sweep = config["trial"], config["sweep"]
        run_root = Path(sweep["run_root"])
    run_dir = run_root / trial["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    row_path = run_dir / ROW_FILE
    if row_path.is_file():  # finished in an earlier attempt (e.g. the driver died after the trial ended)
        row = json.loads(row_path.read_text())
        _report_to_tune({**row, "done": True}, None)
        return row
    from slmscale.models.checkpoint import latest_checkpoint

    previous = json.loads((run_dir / ATTEMPT_FILE).read_text()) if (run_dir / ATTEMPT_FILE).is_file() else {}
    newest = latest_checkpoint(run_dir)
    atomic_write_json(
        run_dir / ATTEMPT_FILE,
        {"attempt": int(previous.get("attempt", 0)) + 1, "host": socket.gethostname(), "pid": os.getpid(),
         "started": time.time(), "run_id": trial["run_id"],
         "resumed_from_step": int(newest.name.split("-")[1]) if newest else 0},
    )

    from slmscale.models.train import train

    cfg = train_config_for(trial, sweep, run_dir)

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        _report_to_tune({**metrics, "run_id": trial["run_id"], "phase": "train"}, checkpoint_dir)

    # With several workers, train() runs a Ray Train TorchTrainer whose controller forwards the workers'
    # reports to this Tune trial itself; our callback would run in the wrong process.
    row = dict(train(cfg, report=report if cfg.workers == 1 and not getattr(cfg, "use_ray", False) else None))
    if sweep.get("eval"):
        row.update(evaluate_run(run_dir, list(sweep["eval"])))
    row.setdefault("code_version", code_version())
    row["run_id"] = trial["run_id"]
    row["sweep"] = sweep["name"]
    atomic_write_json(row_path, row)
    _report_to_tune({**{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}, "done": True},
                    None)
    return row
