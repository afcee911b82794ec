"""`TrainConfig` (one training run) and `RunPlan` (the exact numbers derived from it before any compute)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError
from slmscale.models.ladder import count_params, flops_per_token, get_size, lm_vocab_size

__all__ = ["TrainConfig", "RunPlan", "make_plan", "RESUME_MAY_CHANGE"]

PARALLEL = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")

# Fields that may differ when a run is resumed: they change where/how fast it runs, not what it computes.
RESUME_MAY_CHANGE = frozenset(
    {"units_dir", "out_dir", "workers", "gpus_per_worker", "use_ray", "micro_batch", "device", "compile",
     "attn_implementation", "peak_tflops", "threads", "progress", "report_every", "eval_every",
     "checkpoint_every", "keep_checkpoints", "cpus_per_worker", "max_failures", "data_cache"}
)


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's (AdamW 0.9/0.95, wd 0.1, peak LR 5e-4 cosine to 5e-5,
    clip 1.0, tokens per update per model size); every field can be overridden."""

    units_dir: str  # unit dataset (tokenization/schema.py layout)
    model: str  # ladder size, e.g. "20M" or "tiny-1M" (models/ladder.py)
    out_dir: str  # RUN_DIR
    tokens: int  # token budget D (rounded down to whole updates; the exact count is recorded)
    unique_tokens: int | None = None  # cap U on distinct training tokens: D / U epochs over them
    tokens_per_update: int | None = None  # default: the size's (paper: 131,200 for 20M); multiple of context
    micro_batch: int | None = None  # sequences per forward pass per worker (memory knob only)
    context: int | None = None  # sequence length; default the size's (paper 2050)
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup_steps: int | None = None  # default: 1% of the updates (at least 1)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.02  # of utterances (by utt_id hash)
    test_fraction: float = 0.02
    eval_tokens: int | None = 262_144  # validation tokens per evaluation (None: all)
    test_tokens: int | None = 4_194_304  # test tokens for the final loss (None: all)
    report_every: int | None = None  # updates between reports; default ~50 reports per run
    eval_every: int | None = None  # updates between validation losses; default = report_every
    checkpoint_every: int | None = None  # updates between checkpoints; default ~10 per run (and the last)
    keep_checkpoints: int = 2
    workers: int = 1  # > 1 runs Ray Train TorchTrainer with DDP
    gpus_per_worker: float | None = None  # None: 1 if this machine has CUDA else 0
    cpus_per_worker: float = 1.0
    use_ray: bool = False  # run through TorchTrainer even for one worker
    max_failures: int = 0  # Ray Train restarts of a failed worker group (each resumes from the last checkpoint)
    parallel: str = "ddp"  # "ddp" or "fsdp" (large models, Ray path)
    device: str = "auto"  # in-process path: auto = cuda when available
    precision: str = "auto"  # auto = bf16 autocast on CUDA (fp32 master weights), fp32 on CPU
    compile: bool | None = None  # torch.compile; None = on CUDA only
    attn_implementation: str = "auto"  # auto = flash_attention_2 if installed on CUDA, else sdpa
    peak_tflops: float | None = None  # device peak for MFU when the table does not know the device
    threads: int | None = None  # torch CPU threads (None: torch's default)
    data_cache: str | None = None  # where packed splits are cached (None: RUN_DIR/data); a sweep may share one
    progress: bool = True  # tqdm progress bar

    def validate(self) -> TrainConfig:
        def bad(field: str, expected: str):
            raise SlmscaleError(f"train config: field '{field}' = {getattr(self, field)!r}, expected {expected}")

        get_size(self.model)
        if not self.units_dir:
            bad("units_dir", "a unit dataset directory")
        if not self.out_dir:
            bad("out_dir", "a run directory")
        for name in ("tokens",):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                bad(name, "a positive integer number of tokens")
        for name in ("unique_tokens", "tokens_per_update", "micro_batch", "context", "report_every", "eval_every",
                     "checkpoint_every", "eval_tokens", "test_tokens", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                bad(name, "a positive integer or None")
        if self.context is not None and self.context < 2:
            bad("context", "at least 2 tokens")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            bad("warmup_steps", "a non-negative integer or None")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", "a positive learning rate")
        if not (0 <= self.min_lr <= self.lr):
            bad("min_lr", f"in [0, lr={self.lr}]")
        if self.weight_decay < 0:
            bad("weight_decay", ">= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                bad(name, "in [0, 1)")
        if not self.grad_clip > 0:
            bad("grad_clip", "> 0")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                bad(name, "in (0, 0.5)")
        if not isinstance(self.workers, int) or self.workers < 1:
            bad("workers", "an integer >= 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            bad("gpus_per_worker", ">= 0 or None")
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            bad("max_failures", "an integer >= -1 (-1: retry forever)")
        if self.cpus_per_worker <= 0:
            bad("cpus_per_worker", "> 0")
        if self.keep_checkpoints < 1:
            bad("keep_checkpoints", ">= 1")
        if self.parallel not in PARALLEL:
            bad("parallel", f"one of {PARALLEL}")
        if self.device not in DEVICES:
            bad("device", f"one of {DEVICES}")
        if self.precision not in PRECISIONS:
            bad("precision", f"one of {PRECISIONS}")
        if self.attn_implementation not in ATTENTION:
            bad("attn_implementation", f"one of {ATTENTION}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            bad("peak_tflops", "> 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names of every field (what a grid's `train:` section may set)."""
        return frozenset(f.name for f in fields(cls))

    def data_cache_dir(self) -> Path:
        return Path(self.data_cache) if self.data_cache else Path(self.out_dir) / "data"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config.json") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SlmscaleError(f"{where}: unknown field(s) {unknown}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise SlmscaleError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise SlmscaleError(f"{run_dir}: no config.json — not a training run directory")
        return cls.from_dict(json.loads(path.read_text()), str(path))

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ and would change what the run computes."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RESUME_MAY_CHANGE and a[k] != b[k]}


@dataclass(frozen=True)
class RunPlan:
    """Every count of the run, fixed before training starts. Token counts are exact."""

    model: str
    n_units: int
    vocab_size: int
    n_params: int
    context: int
    tokens_per_update: int
    seqs_per_update: int
    seqs_per_worker: int
    micro_batch: int
    grad_accum: int
    workers: int
    total_steps: int
    tokens: int  # exact tokens the run trains on = total_steps * tokens_per_update
    warmup_steps: int
    report_every: int
    eval_every: int
    checkpoint_every: int
    flops_per_token_6n: int
    flops_per_token: int  # with the attention term

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def make_plan(cfg: TrainConfig, n_units: int) -> RunPlan:
    """Derive the exact schedule; refuses (SlmscaleError) a budget smaller than one update."""
    size = get_size(cfg.model)
    context = cfg.context or size.context
    tpu = cfg.tokens_per_update or (size.tokens_per_update if cfg.context is None
                                    else context * max(1, round(size.tokens_per_update / size.context)))
    if tpu % context:
        raise SlmscaleError(f"tokens_per_update: {tpu} is not a multiple of the context length {context}")
    seqs = tpu // context
    if seqs % cfg.workers:
        raise SlmscaleError(f"tokens_per_update: {seqs} sequences per update do not split evenly over {cfg.workers} workers")
    per_worker = seqs // cfg.workers
    micro = _largest_divisor_at_most(per_worker, cfg.micro_batch or size.micro_batch)
    total = cfg.tokens // tpu
    if total < 1:
        raise SlmscaleError(
            f"tokens: the budget D={cfg.tokens} is smaller than one optimizer update ({tpu} tokens per update); "
            f"expected tokens >= {tpu} (or a smaller --tokens-per-update)"
        )
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.01 * total))
    report = cfg.report_every or max(1, total // 50)
    six_n, exact = flops_per_token(cfg.model, n_units, context)
    return RunPlan(
        model=cfg.model,
        n_units=n_units,
        vocab_size=lm_vocab_size(n_units),
        n_params=count_params(cfg.model, n_units),
        context=context,
        tokens_per_update=tpu,
        seqs_per_update=seqs,
        seqs_per_worker=per_worker,
        micro_batch=micro,
        grad_accum=per_worker // micro,
        workers=cfg.workers,
        total_steps=total,
        tokens=total * tpu,
        warmup_steps=min(warmup, total),
        report_every=report,
        eval_every=cfg.eval_every or report,
        checkpoint_every=cfg.checkpoint_every or max(1, total // 10),
        flops_per_token_6n=six_n,
        flops_per_token=exact,
    )
