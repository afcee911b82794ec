"""`train(cfg)`: one complete training run of one ladder size on one unit dataset, resumable.

    cfg.validate() -> meta.json -> RunPlan (exact counts) -> RUN_DIR/config.json + run.json
    -> data checks (ids < K, non-empty splits, U) -> loop (in process, or Ray Train TorchTrainer)
    -> final.json (test loss) -> results.parquet (one row of analysis/schema.py)

All input checks happen before the first forward pass. Calling `train` again on the same `out_dir` resumes
from the newest checkpoint, or just returns the row when the run has finished.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from slmscale.analysis.schema import write_results
from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, code_version
from slmscale.locks import locked_folder
from slmscale.models.checkpoint import branch_point, newest_intact_checkpoint
from slmscale.models.config import RunPlan, TrainConfig, make_plan
from slmscale.models.data import SequenceSampler, cached_unit_streams
from slmscale.models.ladder import llama_config
from slmscale.models.loop import WorkerContext, run_worker
from slmscale.models.rundir import RunDir
from slmscale.tokenization.schema import UnitsMeta, meta_hash, read_meta

__all__ = ["TrainConfig", "RunPlan", "train", "prepare_run", "results_row"]

ReportFn = Callable[[dict, "str | None"], None]


def _tokenizer_id(meta: UnitsMeta) -> str:
    tok = meta.tokenizer
    return str(tok.get("id") or tok.get("name") or tok.get("kind"))


def prepare_run(cfg: TrainConfig) -> tuple[RunPlan, dict[str, Any]]:
    """Validate everything that can be validated without training, create RUN_DIR and return (plan, run_info).

    Raises SlmscaleError for a bad config, a missing/empty unit dataset, unit ids >= K, a budget smaller than
    one update, a unique-token cap the data cannot supply, or a RUN_DIR made by a different config."""
    cfg.validate()
    rd = RunDir(cfg.out_dir)
    if cfg.parallel == "fsdp":
        import torch

        gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1 if torch.cuda.is_available() else 0)
        if not gpus or not (cfg.workers > 1 or cfg.use_ray):
            raise SlmscaleError(
                f"train config: field 'parallel' = 'fsdp' needs the Ray Train path on GPUs (Ray Train's FSDP is "
                f"GPU-only), got workers={cfg.workers}, gpus_per_worker={gpus}; expected --workers > 1 with GPUs, "
                f"or parallel='ddp'"
            )
    if cfg.fused_kernels == "on":  # refused here, before anything is written, where the kernels cannot run
        from slmscale.models.kernels import resolve_fused_kernels

        on_ray = cfg.workers > 1 or cfg.use_ray
        resolve_fused_kernels("on", "cuda" if (on_ray and cfg.gpus_per_worker) or (not on_ray and _local_device(cfg)
                                                                                       == "cuda") else "cpu",
                              fsdp=cfg.parallel == "fsdp")
    meta = read_meta(cfg.units_dir)
    plan = make_plan(cfg, meta.vocab_size)
    units_hash = meta_hash(cfg.units_dir)

    if rd.config.is_file():
        previous = TrainConfig.load(rd.path)
        diff = previous.differences(cfg)
        if diff:
            detail = "; ".join(f"{k}: run has {a!r}, given {b!r}" for k, (a, b) in diff.items())
            raise SlmscaleError(f"{rd.config}: resuming with a different config is refused ({detail})")
    if rd.run_info.is_file():
        info = rd.read_run_info()
        if info.get("units_meta_hash") != units_hash:
            raise SlmscaleError(
                f"{cfg.units_dir}/meta.json: this unit dataset (hash {units_hash[:12]}) is not the one the run in "
                f"{rd.path} was started on ({str(info.get('units_meta_hash'))[:12]}); expected the same units"
            )

    # The workers resume from the newest checkpoint: make sure it is intact first (a node lost mid-write, a
    # truncated copy), falling back to an older one; refuses checkpoints of another model (copied in by mistake).
    identity = {"model": cfg.model, "n_params": plan.n_params, "vocab_size": plan.vocab_size, "context": plan.context}
    if not rd.is_finished():
        own = newest_intact_checkpoint(rd.path, identity)
        if own is None and cfg.branch_from is not None:  # a WSD branch starts from its trunk's checkpoint
            branch_point(cfg.branch_from, plan.cooldown_start, identity)

    # Data checks (cheap next to training): ids in range, every split non-empty, U available.
    rd.path.mkdir(parents=True, exist_ok=True)
    streams = cached_unit_streams(cfg.units_dir, cfg.data_cache_dir(), cfg.val_fraction, cfg.test_fraction, cfg.seed, units_hash)
    sampler = SequenceSampler(streams.train, plan.context, cfg.seed, cfg.unique_tokens)

    info = {
        "model": cfg.model,
        "model_config": llama_config(cfg.model, meta.vocab_size, plan.context).to_dict(),
        "n_params": plan.n_params,
        "seed": cfg.seed,
        "tokenizer": _tokenizer_id(meta),
        "tokenizer_hash": meta.tokenizer_hash,
        "tokenizer_info": meta.tokenizer,
        "units_dir": _units_source(cfg.units_dir),
        "units_meta_hash": units_hash,
        "units_vocab_size": meta.vocab_size,
        "eos_id": streams.eos_id,
        "pad_id": streams.pad_id,
        "plan": plan.to_dict(),
        "total_steps": plan.total_steps,
        "unique_tokens": sampler.unique_tokens,
        "train_tokens_available": int(len(streams.train)),
        "split_utterances": streams.utterances,
        "code_version": code_version(),
    }
    atomic_write_json(rd.config, cfg.to_dict())
    if not rd.run_info.is_file():
        atomic_write_json(rd.run_info, info)
    return plan, info


def _units_source(units_dir: str) -> str:
    """Where the unit dataset came from: its object-store URI for a node-local staged copy (models/mirror.py)."""
    marker = Path(units_dir) / ".staged.json"
    if marker.is_file():
        return str(json.loads(marker.read_text()).get("source") or units_dir)
    return str(Path(units_dir).resolve())


def results_row(cfg: TrainConfig, plan: RunPlan, info: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """The run's row in the results-table schema (analysis/schema.py), with provenance columns."""
    tokens = float(plan.tokens)
    # U_D = distinct tokens actually seen: the cap (or all training data), or D itself when D covers less.
    unique = float(min(final["unique_tokens"], plan.tokens))
    return {
        "run_id": Path(cfg.out_dir).resolve().name,
        "model": cfg.model,
        "n_params": float(plan.n_params),
        "tokens": tokens,
        "unique_tokens": unique,
        "epochs": tokens / unique,
        "flops": 6.0 * plan.n_params * tokens,
        "loss": float(final["test_loss"]),
        "tokenizer": info["tokenizer"],
        "tokenizer_hash": info["tokenizer_hash"],
        "units_meta_hash": info["units_meta_hash"],
        "model_config": json.dumps(info["model_config"], sort_keys=True),
        "seed": int(cfg.seed),
        "lr": float(cfg.lr),  # the peak LR (a grid with `lrs` trains each point at several)
        "code_version": info["code_version"],
        "flops_exact": float(plan.flops_per_token) * tokens,
        "schedule": cfg.schedule,
        "tokens_per_s": _number(final.get("tokens_per_s")),  # the updates alone
        "mfu": _number(final.get("mfu")),
        "wall_tokens_per_s": _number(final.get("wall_tokens_per_s")),  # with evaluations and checkpoints
        "wall_mfu": _number(final.get("wall_mfu")),
        "val_loss": _number(final.get("val_loss")),
        "run_dir": cfg.sync_to or str(Path(cfg.out_dir).resolve()),  # an object-store run: its home on the store
    }


def _number(value: Any) -> float:
    """A final.json number; null (unknown, e.g. MFU on a CPU) is NaN in the table."""
    return float("nan") if value is None else float(value)


def train(cfg: TrainConfig, report: ReportFn | None = None, *, ray_callbacks: list | None = None) -> dict[str, Any]:
    """Train (or resume, or just read back) one run; returns its results row (also written to results.parquet).

    `report(metrics, checkpoint_dir_or_None)` is called at every report. With one worker it runs in this process.
    On the Ray Train path (cfg.workers > 1 or cfg.use_ray) it runs in the Train controller actor, so it must be
    picklable, and it is called at checkpoints and at the end only (metrics.jsonl has every report); inside a Ray Tune trial, worker reports are forwarded to Tune automatically
    (`ray.tune.integration.ray_train.TuneReportCallback`), and `ray_callbacks` adds further Train v2
    `UserCallback`s."""
    cfg.validate()
    from slmscale.objstore import is_uri

    if is_uri(cfg.out_dir) or is_uri(cfg.units_dir) or is_uri(cfg.branch_from):
        return _train_via_store(cfg, report, ray_callbacks)
    rd = RunDir(cfg.out_dir)
    # One writer per run directory, taken before any check or write (two `train -o same` at once would
    # interleave metrics.jsonl and overwrite each other's config/run records).
    with locked_folder(rd.path, rd.lock.name, what=f"run directory {rd.path}"):
        return _train_locked(cfg, rd, report, ray_callbacks)


def _train_locked(cfg: TrainConfig, rd: RunDir, report: ReportFn | None, ray_callbacks: list | None) -> dict[str, Any]:
    plan, info = prepare_run(cfg)
    if not rd.is_finished():
        if cfg.workers > 1 or cfg.use_ray:
            from slmscale.models.ray_train import run_torch_trainer

            run_torch_trainer(cfg, plan, report=report, callbacks=ray_callbacks)
        else:
            run_worker(cfg.to_dict(), plan.to_dict(), WorkerContext(device=_local_device(cfg), report=report))
    if cfg.sync_to and not rd.is_finished():  # rank 0 ran on another node: its final model is on the store
        from slmscale.models.mirror import RunMirror

        RunMirror(cfg.sync_to, rd.path).pull()
    row = results_row(cfg, plan, rd.read_run_info(), rd.read_final())
    write_results(pd.DataFrame([row]), rd.results)
    return row


def _train_via_store(cfg: TrainConfig, report: ReportFn | None, ray_callbacks: list | None) -> dict[str, Any]:
    """`train` with object-store paths (models/mirror.py): the units staged on this node, the trunk's branch point
    pulled, and a run dir on the store trained in its node-local scratch copy (pulled first; the workers push
    every checkpoint and the final model). Returns the row with the store's run dir."""
    from slmscale.models.checkpoint import complete_steps
    from slmscale.models.mirror import RunMirror, scratch_run_dir, stage_units
    from slmscale.objstore import is_uri, location

    updates: dict[str, Any] = {}
    if is_uri(cfg.units_dir):
        updates["units_dir"] = str(stage_units(cfg.units_dir))
    vocab = read_meta(updates.get("units_dir", cfg.units_dir)).vocab_size
    plan = make_plan(cfg, vocab)
    identity = {"model": cfg.model, "n_params": plan.n_params, "vocab_size": plan.vocab_size, "context": plan.context}
    if is_uri(cfg.branch_from):
        trunk = location(cfg.branch_from)
        local_trunk = scratch_run_dir(trunk, kind="trunks")
        step = int(plan.cooldown_start)
        own = RunDir(location(cfg.out_dir))
        started = own.is_finished() or complete_steps(own.path)  # a resumed branch continues from its own checkpoint
        if not started and step not in complete_steps(local_trunk):
            if step not in complete_steps(trunk):
                raise SlmscaleError(f"{trunk}: the trunk has no checkpoint of step {step} (yet); expected the trunk to "
                                    f"have trained past its branch point {step} with keep_steps including it")
            RunMirror(trunk, local_trunk).pull_checkpoint(step, identity)
        updates["branch_from"] = str(local_trunk)
    mirror = None
    if is_uri(cfg.out_dir):
        store = location(cfg.out_dir)
        local = scratch_run_dir(store)
        updates.update(out_dir=str(local), sync_to=str(store))
        mirror = RunMirror(store, local)
    local_cfg = TrainConfig(**{**cfg.to_dict(), **updates})
    if mirror is None:
        return train(local_cfg, report, ray_callbacks=ray_callbacks)
    rd = RunDir(local_cfg.out_dir)
    with locked_folder(rd.path, rd.lock.name, what=f"run directory {rd.path} (scratch copy of {mirror.remote.path})"):
        mirror.pull(identity)
        row = _train_locked(local_cfg, rd, report, ray_callbacks)
        mirror.push_final()  # (rank 0 pushed model/ and final.json already; this adds results.parquet)
    return row


def _local_device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SlmscaleError("device: 'cuda' requested but torch sees no CUDA device")
    if cfg.device == "auto":
        use_cuda = torch.cuda.is_available() and (cfg.gpus_per_worker is None or cfg.gpus_per_worker > 0)
        return "cuda" if use_cuda else "cpu"
    return cfg.device
