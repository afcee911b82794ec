"""The training loop of one worker: build (data, model, optimizer, scheduler), resume from the newest checkpoint,
updates with reports and checkpoints, finish (test loss, final model, final.json). `run_worker` reads as that list;
each step is a method of `_Worker`, and `models.throughput.ThroughputMeter` times the updates.

`run_worker` is used unchanged by the in-process path (one worker, no process group) and by every Ray Train
worker (DDP/FSDP process group set up by TorchTrainer). Rank 0 writes checkpoints, metrics.jsonl, model/ and
final.json; all ranks take part in evaluation and state-dict gathering.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.io import atomic_write_json, code_version, json_safe
from slmscale.models import checkpoint as ckpt_io
from slmscale.models.config import RunPlan, TrainConfig
from slmscale.models.data import SequenceSampler, cached_unit_streams, eval_sequences
from slmscale.models.ladder import build_model
from slmscale.models.rundir import RunDir
from slmscale.models.throughput import ThroughputMeter, device_peak_flops, mfu

__all__ = ["WorkerContext", "WarmupCosine", "WarmupStableDecay", "lr_multiplier", "run_worker"]

ReportFn = Callable[[dict, "str | None"], None]

# The default checkpoint cadence (see checkpoint_due) writes at most one checkpoint a minute, and they may take
# at most this fraction of a session's wall time; validation is held to 2.5 % of the training compute
# (config.EVAL_TOKENS_PER_TRAINED_TOKEN): 5 % in all.
CHECKPOINT_BUDGET = 0.025
CHECKPOINT_MIN_INTERVAL_S = 60.0


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    ray: bool = False  # inside a Ray Train worker (report with ray.train.report, wrap with prepare_model)
    report: ReportFn | None = None  # rank 0's callback, in-process path


class WarmupCosine:
    """LR multiplier: linear warmup to 1, cosine decay to min_lr / lr at the last update.
    A callable object (not a closure) so LambdaLR's state_dict stays plain numbers."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + 0.5 * (1.0 - self.min_ratio) * (1.0 + math.cos(math.pi * progress))


class WarmupStableDecay:
    """LR multiplier: linear warmup to 1, 1 until `cooldown_start` updates are done, then a cooldown that reaches
    min_lr / lr at the last update (`total` - 1 is the last scheduler step) with the given shape. A constant-LR
    trunk is the same with no cooldown (`cooldown_start` None), so up to a branch point the two are equal
    update for update. A callable object for the same reason as `WarmupCosine`."""

    def __init__(self, warmup: int, total: int, min_ratio: float, cooldown_start: int | None, shape: str):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio
        self.cooldown_start, self.shape = cooldown_start, shape

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.cooldown_start is None or step <= self.cooldown_start:
            return 1.0
        progress = min(1.0, (step - self.cooldown_start) / max(1, self.total - 1 - self.cooldown_start))
        decay = {"1-sqrt": 1.0 - math.sqrt(progress), "linear": 1.0 - progress,
                 "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[self.shape]
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def lr_multiplier(cfg: TrainConfig, plan: RunPlan) -> WarmupCosine | WarmupStableDecay:
    """The LR multiplier of `cfg.schedule` for this plan (LambdaLR's lambda)."""
    min_ratio = cfg.min_lr / cfg.lr
    if plan.schedule == "cosine":
        return WarmupCosine(plan.warmup_steps, plan.total_steps, min_ratio)
    return WarmupStableDecay(plan.warmup_steps, plan.total_steps, min_ratio, plan.cooldown_start, cfg.cooldown_shape)


def _resolve_runtime(cfg: TrainConfig, device) -> dict[str, Any]:
    """Device-dependent choices: bf16 autocast, attention kernel, compile, fused AdamW, fused kernels (liger's
    linear + cross-entropy loss and RMSNorm/SwiGLU, models/kernels.py: on CUDA only). Raises SlmscaleError for
    `fused_kernels` 'on' where they cannot run."""
    import importlib.util

    import torch

    from slmscale.models.kernels import resolve_fused_kernels

    cuda = torch.device(device).type == "cuda"
    if cuda:  # TF32 for what stays in fp32 (the loss, the optimizer); bf16 autocast covers the matmuls
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    attn = cfg.attn_implementation
    if attn == "auto":
        attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    compile_ = cfg.compile if cfg.compile is not None else cuda
    if cfg.parallel == "fsdp":
        compile_ = False  # compiled FSDP1 modules change state-dict names; not worth it here
    fused = resolve_fused_kernels(cfg.fused_kernels, torch.device(device).type, fsdp=cfg.parallel == "fsdp")
    return {"bf16": bf16, "attn": attn, "compile": bool(compile_), "fused_adamw": cuda, **fused}


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices (embeddings, projections), not RMSNorm gains (as nanoGPT / Llama recipes). Chosen by
    name so it also holds for FSDP's flattened parameters (use_orig_params keeps the names)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fsdp_kwargs() -> dict:
    """Shard per decoder layer; keep parameter names for the optimizer groups and state dicts."""
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return {"use_orig_params": True,
            "auto_wrap_policy": functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})}


def _all_reduce_sum(t, ctx: WorkerContext):
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _eval_loss(model, ids: np.ndarray, mask: np.ndarray, micro: int, ctx: WorkerContext, bf16: bool) -> float:
    """Token-weighted mean next-unit cross-entropy over the masked targets; sequences split over ranks and
    padded to whole batches so every rank runs the same number of identical-shape forwards."""
    import torch
    import torch.nn.functional as F

    per_batch = micro * ctx.world_size
    n = -(-len(ids) // per_batch) * per_batch
    ids = np.concatenate([ids, np.zeros((n - len(ids), ids.shape[1]), ids.dtype)])
    mask = np.concatenate([mask, np.zeros((n - len(mask), mask.shape[1]), bool)])
    ids, mask = ids[ctx.rank::ctx.world_size], mask[ctx.rank::ctx.world_size]
    dev = torch.device(ctx.device)
    total = torch.zeros(2, dtype=torch.float64, device=dev)
    model.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(ids), micro):
            x = torch.from_numpy(ids[i:i + micro]).to(dev)
            m = torch.from_numpy(mask[i:i + micro, 1:]).to(dev)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            ce = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none")
            total[0] += (ce * m.flatten()).sum(dtype=torch.float64)
            total[1] += m.sum()
    model.train()
    total = _all_reduce_sum(total, ctx)
    return float(total[0] / total[1])


def _gather_state(model, unwrapped, optimizer, fsdp: bool):
    """Full (unsharded, CPU) model and optimizer state on every rank."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrapped.state_dict().items()}, optimizer.state_dict()


def _set_state(model, unwrapped, optimizer, loaded: dict, where: Path, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = dict(loaded["model_state"])
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        set_state_dict(model, optimizer, model_state_dict=state, optim_state_dict=loaded["optimizer_state"],
                       options=StateDictOptions(full_state_dict=True))
        return
    ckpt_io.load_model_state(unwrapped, loaded["model_state"], where)
    optimizer.load_state_dict(loaded["optimizer_state"])


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop report lines written after the checkpoint we resume from (they will be produced again)."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if ln.strip() and json.loads(ln).get("step", 0) <= after_step:
                keep.append(ln)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
    from slmscale.io import atomic_write_text

    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


class _Worker:
    """One worker's run: built once (data, model, optimizer, scheduler), then driven by `run_worker` through
    `resume`, `update`, `record` and `finish`."""

    def __init__(self, cfg: TrainConfig, plan: RunPlan, ctx: WorkerContext):
        import torch

        from slmscale.tokenization.schema import meta_hash

        self.cfg, self.plan, self.ctx = cfg, plan, ctx
        self.run_dir = RunDir(cfg.out_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(ctx.device)
        self.rt = _resolve_runtime(cfg, self.device)
        self.fsdp = cfg.parallel == "fsdp" and ctx.ray
        self.peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else device_peak_flops(self.device)

        self.streams = cached_unit_streams(cfg.units_dir, cfg.data_cache_dir(), cfg.val_fraction, cfg.test_fraction,
                                           cfg.seed, meta_hash(cfg.units_dir))
        self.sampler = SequenceSampler(self.streams.train, plan.context, cfg.seed, cfg.unique_tokens)
        self.val_ids, self.val_mask = eval_sequences(self.streams.val, plan.context, plan.eval_tokens,
                                                     self.streams.pad_id)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every fresh start
        self.unwrapped = build_model(cfg.model, plan.n_units, plan.context, attn_implementation=self.rt["attn"])
        if not ctx.ray:
            self.unwrapped.to(self.device)  # (on Ray, prepare_model moves it to the worker's device)
        model = self.unwrapped
        self.fused_loss = self.rt["fused_kernels"]  # liger's linear + CE loss: the model returns the loss itself
        if self.fused_loss:
            from slmscale.models.kernels import build_fused

            model = build_fused(self.unwrapped, compile_=self.rt["compile"])  # compiles the decoder body in place
        elif self.rt["compile"]:
            model = torch.compile(model)
        if ctx.ray:
            import ray.train.torch

            model = ray.train.torch.prepare_model(model, parallel_strategy=cfg.parallel,
                                                  parallel_strategy_kwargs=_fsdp_kwargs() if self.fsdp else None)
        self.model = model
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.unwrapped if not self.fsdp else model, cfg.weight_decay),
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=self.rt["fused_adamw"] or None,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(cfg, plan))
        self.identity = {"model": plan.model, "n_params": plan.n_params, "vocab_size": plan.vocab_size,
                         "context": plan.context}
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)  # train loss since the last report
        # Wall-clock seconds of this session spent outside the updates (what update-only tokens/s leaves out): the
        # periodic validation losses and checkpoints (their cadence is eval_every / checkpoint_every), and the
        # one-off end of the run (test loss, final model).
        self.seconds = {"validation": 0.0, "checkpoints": 0.0, "final": 0.0}
        if cfg.sync_to:  # an object-store run: seconds the loop waited for a background checkpoint upload (models/
            self.seconds["upload_wait"] = 0.0  # mirror.py), already inside "checkpoints" / "final"
        self._last_checkpoint_s = 0.0  # what this session's last checkpoint took, and when it ended (0: none yet)
        self._last_checkpoint_at = 0.0
        self._pusher = None  # the background uploader of an object-store run's checkpoints
        self._pending = None

    def resume(self) -> int:
        """Load the newest checkpoint, if any (weights, optimizer, scheduler, RNG); returns the updates done.
        A WSD branch without a checkpoint of its own starts from its trunk's checkpoint of the cooldown's first
        update. Rank 0 also removes half-written checkpoints and the metrics.jsonl lines after the checkpoint."""
        start_step = 0
        if self.cfg.sync_to and self.ctx.ray:  # a Ray Train worker, maybe on another node: bring the store's state
            from slmscale.models.mirror import RunMirror

            RunMirror(self.cfg.sync_to, self.run_dir.path).pull(self.identity)
        latest = ckpt_io.latest_checkpoint(self.run_dir.path)
        if latest is not None:
            loaded = ckpt_io.read_checkpoint(latest, self.identity)
            _set_state(self.model, self.unwrapped, self.optimizer, loaded, latest, self.fsdp)
            self.scheduler.load_state_dict(loaded["scheduler_state"])
            ckpt_io.restore_rng(loaded)
            start_step = int(loaded["trainer_state"]["step"])
            del loaded
        elif self.cfg.branch_from is not None:
            start_step = self.start_from_trunk()
        if self.ctx.rank == 0:
            ckpt_io.clean_stale_tmp(self.run_dir.path)
            _truncate_metrics(self.run_dir.metrics, start_step)
        return start_step

    def start_from_trunk(self) -> int:
        """Load the trunk's checkpoint of step S = plan.cooldown_start (weights, optimizer, RNG; the data position is
        the update index) and set the schedule to step S; returns S. The trunk's scheduler state is not loaded:
        LambdaLR saves its lambda object's fields, which would replace this run's cooldown with the trunk's
        constant LR."""
        import torch

        step = int(self.plan.cooldown_start)
        ckpt = ckpt_io.branch_point(self.cfg.branch_from, step, self.identity)
        loaded = ckpt_io.read_checkpoint(ckpt, self.identity)
        _set_state(self.model, self.unwrapped, self.optimizer, loaded, ckpt, self.fsdp)
        ckpt_io.restore_rng(loaded)
        # The optimizer state holds each group's 'initial_lr' (the peak LR): the scheduler rebuilt at step S gives
        # the LR of update S + 1 exactly as a run that stepped it S times.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(self.cfg, self.plan),
                                                           last_epoch=step - 1)
        return step

    def update(self, step: int) -> float:
        """Optimizer update `step` (1-based): this worker's micro-batches of it with gradient accumulation, clipping,
        AdamW and scheduler steps; the loss is added to `loss_sum`. Returns the learning rate the update used."""
        import torch
        import torch.nn.functional as F

        plan, model, device = self.plan, self.model, self.device
        base = (step - 1) * plan.seqs_per_update + self.ctx.rank * plan.seqs_per_worker
        for micro in range(plan.grad_accum):
            x = torch.from_numpy(self.sampler.batch(base + micro * plan.micro_batch, plan.micro_batch))
            x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x
            sync = micro == plan.grad_accum - 1 or not hasattr(model, "no_sync")
            with model.no_sync() if not sync else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.rt["bf16"]):
                    if self.fused_loss:  # (models/kernels.py) the same mean next-unit loss, logits never made
                        loss = model(input_ids=x, labels=x) / plan.grad_accum
                    else:
                        logits = model(input_ids=x, use_cache=False).logits
                if not self.fused_loss:
                    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()) / plan.grad_accum
                loss.backward()
            self.loss_sum += loss.detach()
        if self.fsdp:
            model.clip_grad_norm_(self.cfg.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.unwrapped.parameters(), self.cfg.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def take_loss_sum(self) -> float:
        """Summed train loss of every worker since the last call (waits for the device), then reset to 0."""
        total = float(_all_reduce_sum(self.loss_sum.clone(), self.ctx))
        self.loss_sum.zero_()
        return total

    def val_loss(self) -> float:
        t0 = time.perf_counter()
        loss = _eval_loss(self.model, self.val_ids, self.val_mask, self.plan.micro_batch, self.ctx, self.rt["bf16"])
        self.seconds["validation"] += time.perf_counter() - t0
        return loss

    def metrics(self, step: int, train_loss: float, val_loss: float | None, lr: float, tokens_per_s: float) -> dict:
        """One report (a metrics.jsonl line)."""
        plan = self.plan
        tokens_seen = step * plan.tokens_per_update
        return {
            "step": step,
            "tokens": tokens_seen,
            "epochs": tokens_seen / self.sampler.unique_tokens,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": lr,
            "flops_6nd": plan.flops_per_token_6n * tokens_seen,
            "flops_exact": plan.flops_per_token * tokens_seen,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(plan.flops_per_token, tokens_per_s, self.peak, self.ctx.world_size),
            "time": time.time(),
        }

    def record(self, step: int, metrics: dict, checkpoint: bool) -> None:
        """Append the report to metrics.jsonl (rank 0), write a checkpoint if asked, then report to Ray Train or to
        the in-process callback with the checkpoint's path (`metrics["checkpoint_dir"]`, None without one)."""
        if self.ctx.rank == 0:
            with open(self.run_dir.metrics, "a") as f:  # before the checkpoint: see _truncate_metrics
                f.write(json.dumps(json_safe(metrics)) + "\n")  # NaN -> null: MFU on a CPU is unknown
        ckpt_path = self.save_checkpoint(step) if checkpoint else None
        metrics["checkpoint_dir"] = ckpt_path
        if self.ctx.ray:
            # Ray Train v2 holds one pending report per worker and drains it every ~2 s, so reporting every
            # update would stall training: Ray (and Tune through it) hears about checkpoints and the end;
            # every report still goes to metrics.jsonl.
            if checkpoint:
                import ray.train

                ray.train.report(metrics)
        elif self.ctx.report is not None:
            self.ctx.report(metrics, ckpt_path)

    def checkpoint_due(self, step: int, is_last: bool, session: _Session) -> bool:
        """Whether update `step` ends with a checkpoint. Always at `keep_steps` (a WSD trunk's branch points). A
        cadence set in the config (`checkpoint_every`) is kept exactly, with a checkpoint at the last update too.
        The default cadence (~10 per run) skips a checkpoint less than CHECKPOINT_MIN_INTERVAL_S after the
        session's start or its last checkpoint, or one that would take the session's checkpoint time over
        CHECKPOINT_BUDGET of its wall time so far (the next one is assumed to cost what the last one did), and
        writes none at the last update, whose weights go to model/ with final.json. On a GPU run of hours every
        tenth of the run gets its checkpoint; a CPU run of seconds, which a preemption costs seconds, writes none
        (ten took 12-50 % of such runs' wall time). Ranks agree: rank 0's clock decides."""
        if step in self.plan.keep_steps:
            return True
        if self.cfg.checkpoint_every is not None:
            return step % self.plan.checkpoint_every == 0 or is_last
        if step % self.plan.checkpoint_every or is_last:
            return False
        now = time.perf_counter()
        due = (now - max(session.start, self._last_checkpoint_at) >= CHECKPOINT_MIN_INTERVAL_S
               and self.seconds["checkpoints"] + self._last_checkpoint_s <= CHECKPOINT_BUDGET * (now - session.start))
        if self.ctx.world_size > 1:
            import torch

            flag = torch.tensor(float(due and self.ctx.rank == 0), device=self.device)
            due = bool(_all_reduce_sum(flag, self.ctx) > 0)
        return due

    def save_checkpoint(self, step: int) -> str | None:
        """Gather the full state (every rank takes part); rank 0 writes checkpoints/step-N and prunes old ones.
        Returns the checkpoint's path on rank 0, None elsewhere."""
        t0 = time.perf_counter()
        try:
            return self._save_checkpoint(step)
        finally:
            self._last_checkpoint_at = time.perf_counter()
            self._last_checkpoint_s = self._last_checkpoint_at - t0
            self.seconds["checkpoints"] += self._last_checkpoint_s

    def _save_checkpoint(self, step: int) -> str | None:
        plan = self.plan
        model_state, optim_state = _gather_state(self.model, self.unwrapped, self.optimizer, self.fsdp)
        if self.ctx.rank != 0:
            return None
        tokens_seen = step * plan.tokens_per_update
        trainer_state = {
            **self.identity,
            "step": step,
            "tokens_seen": tokens_seen,
            "sequences_read": step * plan.seqs_per_update,
            "epochs": tokens_seen / self.sampler.unique_tokens,
            "seed": self.cfg.seed,
            "code_version": code_version(),
        }
        path = ckpt_io.write_checkpoint(self.run_dir.path, step, self.unwrapped, model_state, optim_state,
                                        self.scheduler.state_dict(), trainer_state)
        if self.cfg.sync_to:
            self.wait_for_push()  # (the previous checkpoint's upload: its files must stay until it is on the store)
        ckpt_io.prune_checkpoints(self.run_dir.path, self.cfg.keep_checkpoints, protected=plan.keep_steps)
        if self.cfg.sync_to:
            self.push_in_background(step)
        return str(path)

    def push_in_background(self, step: int) -> None:
        """An object-store run: upload checkpoint `step` while training goes on (one upload at a time; see
        models/mirror.py). Its trainer_state.json goes last, so a node lost mid-upload leaves the store with the
        previous checkpoint as the newest complete one, never a partial one."""
        from concurrent.futures import ThreadPoolExecutor

        from slmscale.models.mirror import RunMirror

        mirror = RunMirror(self.cfg.sync_to, self.run_dir.path)
        keep = set(ckpt_io.complete_steps(self.run_dir.path)) | set(self.plan.keep_steps)
        if self._pusher is None:
            self._pusher = ThreadPoolExecutor(1, thread_name_prefix="slmscale-push")
        self._pending = self._pusher.submit(mirror.push_checkpoint, step, keep, mirror.snapshot_records())

    def wait_for_push(self) -> None:
        """Block until the last background upload is on the store; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            t0 = time.perf_counter()
            pending.result()
            self.seconds["upload_wait"] += time.perf_counter() - t0

    def finish(self, last_val: float, tokens_per_s: float, session: _Session) -> dict | None:
        """Test loss (and the validation loss if this session evaluated none), then on rank 0 the final model
        (model/) and final.json, written last. Returns final.json's content on rank 0, None elsewhere.

        final.json has two throughputs: `tokens_per_s` / `mfu` of the updates alone, and `wall_tokens_per_s` /
        `wall_mfu` over the session's wall time (updates, reports, validation, checkpoints, test loss, final
        model), with `seconds` splitting that wall time (wall, updates, validation, checkpoints, final)."""
        import torch

        plan, ctx = self.plan, self.ctx
        t0 = time.perf_counter()
        test_ids, test_mask = eval_sequences(self.streams.test, plan.context, self.cfg.test_tokens, self.streams.pad_id)
        test_loss = _eval_loss(self.model, test_ids, test_mask, plan.micro_batch, ctx, self.rt["bf16"])
        self.seconds["final"] += time.perf_counter() - t0
        if last_val != last_val:  # resumed after the last report: nothing evaluated in this session
            last_val = self.val_loss()
        model_state = _gather_state(self.model, self.unwrapped, self.optimizer, self.fsdp)[0] if self.fsdp else None
        if ctx.rank != 0:
            return None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        t0 = time.perf_counter()
        ckpt_io.save_model(self.unwrapped, self.run_dir.model, model_state)
        if self.cfg.sync_to:
            self.wait_for_push()  # the last checkpoint on the store before the run's end is
            if self._pusher is not None:
                self._pusher.shutdown()
        self.seconds["final"] += time.perf_counter() - t0
        wall = time.perf_counter() - session.start
        wall_tokens_per_s = (plan.total_steps - session.start_step) * plan.tokens_per_update / wall if wall > 0 else 0.0
        final = {
            "test_loss": test_loss,
            "val_loss": last_val,
            "tokens": plan.tokens,
            "unique_tokens": self.sampler.unique_tokens,
            "epochs": plan.tokens / self.sampler.unique_tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(plan.flops_per_token, tokens_per_s, self.peak, ctx.world_size),
            "wall_tokens_per_s": wall_tokens_per_s,
            "wall_mfu": mfu(plan.flops_per_token, wall_tokens_per_s, self.peak, ctx.world_size),
            "seconds": {"wall": wall, "updates": session.update_seconds, **self.seconds},
            "resumed_from_step": session.start_step,
            "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "runtime": self.rt,
            "split_utterances": self.streams.utterances,
        }
        atomic_write_json(self.run_dir.final, json_safe(final))  # standard JSON: an unknown MFU is null, not NaN
        if self.cfg.sync_to:
            from slmscale.models.mirror import RunMirror

            RunMirror(self.cfg.sync_to, self.run_dir.path).push_final()
        return final


def _progress_bar(cfg: TrainConfig, plan: RunPlan, ctx: WorkerContext, start_step: int):
    """tqdm bar of the updates on rank 0 (None when off or on other ranks)."""
    if ctx.rank != 0 or not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=plan.total_steps, initial=start_step, desc=f"train {cfg.model}", unit="update")


@dataclass
class _Session:
    """This start (or resume) of the run: when its first update began and the seconds its updates took."""

    start_step: int
    start: float
    update_seconds: float = 0.0

    def add_update(self, meter: ThroughputMeter, seconds: float) -> None:
        meter.add(seconds)
        self.update_seconds += seconds


def run_worker(cfg_dict: dict, plan_dict: dict, ctx: WorkerContext) -> dict | None:
    """Train (or resume) to the end of the plan; returns the final metrics on rank 0 (None elsewhere).

    Every update is timed (the update-only throughput), and so is the whole session (the wall-clock one); a
    report after every `report_every` updates and at every checkpoint, a validation loss every `eval_every`
    updates and at the end, a checkpoint every `checkpoint_every` updates (`_Worker.checkpoint_due`: a default
    cadence within a wall-time budget) and at each of `keep_steps`."""
    cfg, plan = TrainConfig(**cfg_dict), RunPlan(**plan_dict)
    worker = _Worker(cfg, plan, ctx)
    start_step = worker.resume()
    session = _Session(start_step, time.perf_counter())
    meter = ThroughputMeter(plan.tokens_per_update)
    pbar = _progress_bar(cfg, plan, ctx, start_step)
    last_val = float("nan")
    worker.model.train()
    for step in range(start_step + 1, plan.total_steps + 1):
        t0 = time.perf_counter()
        lr = worker.update(step)
        is_last = step == plan.total_steps
        is_ckpt = worker.checkpoint_due(step, is_last, session)
        if not (step % plan.report_every == 0 or is_ckpt or is_last):
            session.add_update(meter, time.perf_counter() - t0)
            if pbar:
                pbar.update(1)
            continue
        loss_sum = worker.take_loss_sum()  # waits for the device, so the update's time below is complete
        session.add_update(meter, time.perf_counter() - t0)
        train_loss = loss_sum / (meter.updates * ctx.world_size)
        tokens_per_s = meter.end_interval()
        evaluated = step % plan.eval_every == 0 or is_last
        if evaluated:
            last_val = worker.val_loss()
        worker.record(step, worker.metrics(step, train_loss, last_val if evaluated else None, lr, tokens_per_s),
                      checkpoint=is_ckpt)
        if pbar:
            pbar.update(1)
            pbar.set_postfix(loss=f"{train_loss:.3f}", val=f"{last_val:.3f}")
    if pbar:
        pbar.close()
    return worker.finish(last_val, meter.session_rate(), session)
