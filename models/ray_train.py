"""The multi-worker path: the same `run_worker` loop inside a Ray Train v2 `TorchTrainer` (DDP or FSDP).

Ray Train sets up the process group (gloo on CPU, NCCL on GPU), places one worker per GPU and wraps the
model (`ray.train.torch.prepare_model`). Checkpoints are the run's own (RUN_DIR/checkpoints, written by
rank 0 on the shared filesystem), so a restarted worker group, a restarted Tune trial or a `train --resume`
all continue from the same place; Ray's `FailureConfig` decides how often a failed group is restarted.

Inside a Ray Tune trial (a function trainable that calls `models.train.train`), worker reports reach Tune
through `ray.tune.integration.ray_train.TuneReportCallback`, added automatically here.
"""
from __future__ import annotations

from pathlib import Path

from slmscale.errors import SlmscaleError
from slmscale.models.config import RunPlan, TrainConfig
from slmscale.models.loop import WorkerContext, run_worker

__all__ = ["run_torch_trainer", "ReportRelay"]


def _train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    run_worker(
        config["cfg"],
        config["plan"],
        WorkerContext(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=str(ray.train.torch.get_device()),
            ray=True,
        ),
    )


def _report_relay_cls():
    from ray.train.v2.api.callback import UserCallback

    class ReportRelay(UserCallback):
        """Calls `report(metrics, checkpoint_dir)` with rank 0's metrics after every `ray.train.report`
        (in the Train controller process)."""

        def __init__(self, report):
            self.report = report

        def after_report(self, run_context, metrics, checkpoint):
            rank0 = dict(metrics[0])
            self.report(rank0, rank0.get("checkpoint_dir"))

    return ReportRelay


def ReportRelay(report):  # noqa: N802 - reads like the class it builds (lazy Ray import)
    return _report_relay_cls()(report)


def _in_tune_session() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session as in_tune
    except ImportError:  # pragma: no cover - layout of older Ray
        return False
    return in_tune()


def run_torch_trainer(cfg: TrainConfig, plan: RunPlan, report=None, callbacks: list | None = None) -> None:
    """Run the plan on `cfg.workers` Ray Train workers; returns when rank 0 has written final.json."""
    import torch

    from slmscale.ray_utils import ensure_ray

    ensure_ray()
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1 if torch.cuda.is_available() else 0)
    resources = {"CPU": cfg.cpus_per_worker}
    if gpus:
        resources["GPU"] = gpus
    callbacks = list(callbacks or [])
    if report is not None:
        callbacks.append(ReportRelay(report))
    if _in_tune_session():
        from ray.tune.integration.ray_train import TuneReportCallback

        if not any(isinstance(c, TuneReportCallback) for c in callbacks):
            callbacks.append(TuneReportCallback())
    run_dir = Path(cfg.out_dir).resolve()
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "plan": plan.to_dict()},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=bool(gpus),
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name="ray_train",
            storage_path=str(run_dir),
            callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # TrainingFailedError wraps the worker's exception
        cause = _find_cause(exc)
        if isinstance(cause, SlmscaleError):
            raise SlmscaleError(str(cause)) from None
        raise


def _find_cause(exc: BaseException) -> BaseException:
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, SlmscaleError):
            return e
        for attr in ("worker_failures", "error", "cause"):
            v = getattr(e, attr, None)
            if isinstance(v, dict):
                stack.extend(x for x in v.values() if isinstance(x, BaseException))
            elif isinstance(v, BaseException):
                stack.append(v)
        for v in (e.__cause__, e.__context__):
            if v is not None:
                stack.append(v)
    return exc
