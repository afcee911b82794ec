"""`TrainConfig` (one training run) and `RunPlan` (the exact numbers derived from it before any compute).

`TrainConfig` is the one schema of a run's settings: field types, defaults, constraints and a description per
field live here, and `slmscale train`'s flags are generated from it (models/cli.py).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slmscale.errors import SlmscaleError, explain_validation_error
from slmscale.io import read_json
from slmscale.models.ladder import LADDER, count_params, flops_per_token, get_size, lm_vocab_size
from slmscale.models.rundir import RunDir
from slmscale.typed import TypedConfig

__all__ = ["TrainConfig", "RunPlan", "make_plan", "update_size", "cooldown_start", "RESUME_MAY_CHANGE", "field_type",
           "expected_value"]

Parallel = Literal["ddp", "fsdp"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]
Attention = Literal["auto", "sdpa", "eager", "flash_attention_2"]
FusedKernels = Literal["auto", "on", "off"]
# cosine: the paper's warmup + cosine to min_lr over the whole run. wsd: warmup, constant LR, then a cooldown to
# min_lr over the last `cooldown_fraction` of the updates (Hägele et al. 2024). constant: warmup then constant LR
# (a WSD trunk: every D's cooldown branches from one of its checkpoints).
Schedule = Literal["cosine", "wsd", "constant"]
CooldownShape = Literal["1-sqrt", "linear", "cosine"]

# Fields that may differ when a run is resumed: they change where/how fast it runs, not what it computes.
RESUME_MAY_CHANGE = frozenset(
    {"units_dir", "out_dir", "workers", "gpus_per_worker", "use_ray", "micro_batch", "device", "compile",
     "attn_implementation", "fused_kernels", "peak_tflops", "threads", "progress", "report_every", "eval_every",
     "checkpoint_every", "keep_checkpoints", "cpus_per_worker", "max_failures", "data_cache",
     # Where the trunk lives (a moved sweep storage); what is loaded from it is checked by identity and checksums.
     "branch_from",
     # Where the run dir's store copy is (set with out_dir for object-store runs).
     "sync_to"}
)


def _path_to_str(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _absolute(value: str) -> str:
    """A local path made absolute against the working directory it was given in (config.json must mean the
    same from any other directory: `train --resume` elsewhere, a sweep worker); a URI (scheme://) is kept."""
    return value if "://" in value else os.path.abspath(os.path.expanduser(value))


# A path given as str or os.PathLike, stored as an absolute str (config.json stays plain JSON).
PathStr = Annotated[str, BeforeValidator(_path_to_str), AfterValidator(_absolute)]


def _count(default: int | None, description: str) -> Any:
    """An optional positive integer (None: what the description names)."""
    return Field(default, gt=0, description=description)


class TrainConfig(TypedConfig):
    """One training run. Defaults are the paper's (AdamW 0.9/0.95, wd 0.1, peak LR 5e-4 cosine to 5e-5,
    clip 1.0, tokens per update per model size); every field can be overridden.

    Keyword construction validates every field (SlmscaleError naming the field); attribute assignment does
    not, `validate()` checks the current values again."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    config_name: ClassVar[str] = "train config"

    units_dir: PathStr = Field(min_length=1, description="unit dataset directory (tokenization/schema.py layout), "
                                                         "or its object-store URI (s3://..., staged once per node)")
    model: str = Field(description=f"ladder size (models/ladder.py): {' '.join(LADDER)}")
    tokens: int = Field(gt=0, description="token budget D (rounded down to whole updates; the exact count is "
                                          "recorded)")
    out_dir: PathStr = Field(min_length=1, description="run directory (RUN_DIR) to create or continue, or its "
                                                       "object-store URI (s3://...: trained in a node-local scratch "
                                                       "copy, pushed at every checkpoint)")
    sync_to: PathStr | None = Field(None, description="internal: the run dir's object-store URI when out_dir is its "
                                                      "node-local scratch copy (set by train for -o s3://...)")
    unique_tokens: int | None = _count(None, "cap U on distinct training tokens: D/U epochs over them; "
                                             "None: all the training data")
    tokens_per_update: int | None = _count(None, "tokens per optimizer update, a multiple of the context; "
                                                 "None: the size's (paper: 131,200 for 20M)")
    micro_batch: int | None = _count(None, "sequences per forward pass per worker (memory only, not the maths); "
                                           "None: the size's")
    context: int | None = Field(None, ge=2, description="sequence length in tokens; None: the size's (paper: 2050)")
    lr: float = Field(5e-4, gt=0, description="peak learning rate")
    min_lr: float = Field(5e-5, ge=0, description="final learning rate of the cosine (at most lr)")
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup updates; None: 1% of the updates "
                                                             "(at least 1)")
    schedule: Schedule = Field("cosine", description="LR schedule after warmup: cosine (paper), wsd (constant, then "
                                                     "a cooldown), or constant (a WSD trunk)")
    cooldown_fraction: float = Field(0.2, gt=0, lt=1, description="wsd: fraction of the updates spent in the "
                                                                  "cooldown to min_lr")
    cooldown_shape: CooldownShape = Field("1-sqrt", description="wsd: cooldown multiplier 1-sqrt(progress), "
                                                                "linear or cosine")
    branch_from: PathStr | None = Field(None, description="wsd: a constant-LR trunk's run directory; the run starts "
                                                          "from its checkpoint at the cooldown's first update")
    keep_steps: tuple[Annotated[int, Field(gt=0)], ...] = Field(
        (), description="updates that always get a checkpoint which is never pruned (a trunk's branch points)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices; none on RMSNorm gains)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clipping threshold")
    seed: int = Field(0, ge=0, description="seed of the initial weights, the data order and the splits' shuffle")
    val_fraction: float = Field(0.02, gt=0, lt=0.5, description="fraction of utterances (by utt_id hash) held "
                                                                "out for validation")
    test_fraction: float = Field(0.02, gt=0, lt=0.5, description="fraction of utterances (by utt_id hash) held "
                                                                 "out for the final test loss")
    eval_tokens: int | None = _count(262_144, "validation tokens per evaluation (at most: with the default "
                                              "eval_every a run too short to afford them evaluates fewer); None: all")
    test_tokens: int | None = _count(4_194_304, "held-out tokens for the final test loss; None: all")
    report_every: int | None = _count(None, "updates between reports (metrics.jsonl); None: ~50 reports per run")
    eval_every: int | None = _count(None, "updates between validation losses (and the last update); None: ~10 "
                                          "per run, fewer when they would cost over 2.5% of the training compute")
    checkpoint_every: int | None = _count(None, "updates between checkpoints (and the last update); None: ~10 "
                                                "per run but at most one a minute and within 2.5% of the wall "
                                                "time, none at the last update (model/ holds its weights)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    workers: int = Field(1, ge=1, description="Ray Train workers; > 1 runs a TorchTrainer with DDP (or FSDP)")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per worker; None: 1 when this machine "
                                                                  "has CUDA, else 0")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray Train worker")
    use_ray: bool = Field(False, description="run through Ray Train's TorchTrainer even for one worker")
    max_failures: int = Field(0, ge=-1, description="Ray Train restarts of a failed worker group (each resumes "
                                                    "from the last checkpoint); -1: retry forever")
    parallel: Parallel = Field("ddp", description="Ray Train strategy: ddp, or fsdp (large models; GPUs, Ray path)")
    device: Device = Field("auto", description="device of the one-worker, in-process path; auto: cuda when "
                                               "available")
    precision: Precision = Field("auto", description="training precision; auto: bf16 autocast on CUDA (fp32 "
                                                     "master weights), fp32 on CPU")
    compile: bool | None = Field(None, description="torch.compile the model: true, false, or None: on CUDA only")
    attn_implementation: Attention = Field("auto", description="attention kernel; auto: flash_attention_2 when "
                                                               "installed on CUDA, else SDPA")
    fused_kernels: FusedKernels = Field("auto", description="liger-kernel's fused linear + cross-entropy loss (no "
                                                            "logits materialised) and fused RMSNorm/SwiGLU "
                                                            "(models/kernels.py; same maths up to bf16 rounding); "
                                                            "auto: on with CUDA when liger-kernel imports, except "
                                                            "FSDP; off: the plain PyTorch path")
    peak_tflops: float | None = Field(None, gt=0, description="device peak TFLOP/s for MFU when the built-in "
                                                              "table does not know the device")
    threads: int | None = _count(None, "torch CPU threads; None: torch's default")
    data_cache: PathStr | None = Field(None, description="where packed splits are cached (a sweep may share one); "
                                                         "None: RUN_DIR/data")
    progress: bool = Field(True, description="show a tqdm progress bar")

    @classmethod
    def explain(cls, exc: ValidationError, where: str) -> str:
        """One line naming each bad field and what it accepts (`expected_value`)."""
        return explain_validation_error(exc, where, expected=expected_value, known=lambda loc: cls.model_fields)

    @field_validator("model")
    @classmethod
    def check_model_size(cls, name: str) -> str:
        try:
            get_size(name)
        except SlmscaleError:
            raise ValueError(f"unknown model size {name!r}, expected one of {list(LADDER)}") from None
        return name

    @model_validator(mode="after")
    def check_cross_field(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"field 'min_lr' = {self.min_lr!r}, expected in [0, lr={self.lr}]")
        if self.branch_from is not None and self.schedule != "wsd":
            raise ValueError(f"field 'branch_from' is set but 'schedule' = {self.schedule!r}; expected schedule "
                             f"'wsd' (a branch is a cooldown)")
        if self.branch_from is not None and self.warmup_steps is None:
            raise ValueError("field 'branch_from' needs an explicit 'warmup_steps', the trunk's (1% of the branch's "
                             "own updates would not match the trunk's warmup)")
        return self

    def validate(self) -> TrainConfig:  # type: ignore[override]
        """Check the current values (after attribute assignments) against the schema; returns self."""
        checked = type(self)(**{name: getattr(self, name) for name in type(self).model_fields})
        for name in type(self).model_fields:
            object.__setattr__(self, name, getattr(checked, name))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, one key per field (the content of RUN_DIR/config.json)."""
        return {k: _path_to_str(v) for k, v in self.model_dump().items()}

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names of every field (what a grid's `train:` section may set)."""
        return frozenset(cls.model_fields)

    def data_cache_dir(self) -> Path:
        return Path(self.data_cache) if self.data_cache else RunDir(self.out_dir).data

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config.json") -> TrainConfig:
        """Validate `raw` (e.g. a loaded config.json); errors name `where` and the field."""
        if not isinstance(raw, dict):
            raise SlmscaleError(f"{where}: expected a mapping of TrainConfig fields, got {type(raw).__name__}")
        unknown = sorted(set(raw) - cls.field_names())
        if unknown:
            raise SlmscaleError(f"{where}: unknown field(s) {unknown}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SlmscaleError(cls.explain(exc, where)) from None

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        path = RunDir(run_dir).config
        if not path.is_file():
            raise SlmscaleError(f"{run_dir}: no config.json — not a training run directory")
        return cls.from_dict(read_json(path, what="train config"), str(path))

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ and would change what the run computes."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RESUME_MAY_CHANGE and a[k] != b[k]}


def field_type(name: str) -> tuple[type, tuple[Any, ...] | None, bool]:
    """(base type, choices or None, whether None is allowed) of a TrainConfig field."""
    annotation = TrainConfig.model_fields[name].annotation
    nullable = False
    if get_origin(annotation) in (Union, type(int | None)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        nullable, annotation = True, args[0]
    if get_origin(annotation) is Annotated:  # e.g. PathStr
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return str, get_args(annotation), nullable
    return annotation, None, nullable


def expected_value(name: str) -> str:
    """What field `name` accepts, in words, from its type and constraints (for error messages)."""
    base, choices, nullable = field_type(name)
    info = TrainConfig.model_fields[name]
    if choices is not None:
        text = f"one of {choices}"
    else:
        nonempty = any(getattr(m, "min_length", 0) for m in info.metadata)
        text = {int: "an integer", float: "a finite number", bool: "true or false",
                tuple: "a list of positive integers"}.get(
            base, "a non-empty string" if nonempty else "a string")
        bounds = {key: getattr(m, key) for m in info.metadata for key in ("gt", "ge", "lt", "le") if hasattr(m, key)}
        low = (f"({bounds['gt']}" if "gt" in bounds else f"[{bounds['ge']}" if "ge" in bounds else None)
        high = (f"{bounds['lt']})" if "lt" in bounds else f"{bounds['le']}]" if "le" in bounds else None)
        if low and high:
            text += f" in {low}, {high}"
        elif low:
            text += f" {'>' if low[0] == '(' else '>='} {low[1:]}"
        elif high:
            text += f" {'<' if high[-1] == ')' else '<='} {high[:-1]}"
    return f"{text} or None" if nullable else text


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
    eval_tokens: int | None  # validation tokens per evaluation (at most; None: the whole validation split)
    checkpoint_every: int
    schedule: str
    cooldown_start: int | None  # wsd: updates done when the cooldown starts (a branch's trunk checkpoint)
    keep_steps: tuple[int, ...]  # checkpoints written and never pruned
    flops_per_token_6n: int
    flops_per_token: int  # with the attention term

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def update_size(model: str, context: int | None = None, tokens_per_update: int | None = None) -> tuple[int, int]:
    """(context, tokens per update) of a run of ladder size `model` with these TrainConfig overrides (None: the
    size's; a custom context keeps the size's sequences per update)."""
    size = get_size(model)
    if context is None:
        return size.context, tokens_per_update or size.tokens_per_update
    return context, tokens_per_update or context * max(1, round(size.tokens_per_update / size.context))


def cooldown_start(total_steps: int, fraction: float) -> int:
    """Updates done before a WSD run's cooldown: the last round(fraction * T) updates (at least one) decay."""
    return total_steps - max(1, round(fraction * total_steps))


# The default cadence's validation may cost at most 2.5 % of what a run trains on itself; a validation token is
# a forward pass, ~1/3 of a training token, so each trained token affords this many validation tokens.
EVAL_TOKENS_PER_TRAINED_TOKEN = 0.025 * 3
# The default cadence never shrinks an evaluation below this many sequences (a run too short to afford even that
# spends more than 2.5 % of its compute on its one evaluation at the end).
MIN_EVAL_SEQUENCES = 16


def _default_eval_every(total: int, report: int, tokens: int, eval_tokens: int | None) -> int:
    """Updates between validation losses: ~10 per run, and no more than cost 2.5 % of the training compute (a
    validation token is a forward pass, about a third of a training token's cost; `tokens`: what this run trains
    on itself), on report steps. Every 2 % of the run (the reports), as before, made validation most of a short
    run's wall time. A run too short to afford one evaluation of `eval_tokens` (there is always one, at the end)
    evaluates fewer tokens (make_plan; at least MIN_EVAL_SEQUENCES sequences)."""
    affordable = 10 if eval_tokens is None else int(EVAL_TOKENS_PER_TRAINED_TOKEN * tokens / eval_tokens)
    evaluations = max(1, min(10, affordable))
    return report * max(1, total // (evaluations * report))


def make_plan(cfg: TrainConfig, n_units: int) -> RunPlan:
    """Derive the exact schedule; refuses (SlmscaleError) a budget smaller than one update."""
    context, tpu = update_size(cfg.model, cfg.context, cfg.tokens_per_update)
    if tpu % context:
        raise SlmscaleError(f"tokens_per_update: {tpu} is not a multiple of the context length {context}")
    seqs = tpu // context
    if seqs % cfg.workers:
        raise SlmscaleError(f"tokens_per_update: {seqs} sequences per update do not split evenly over {cfg.workers} workers")
    per_worker = seqs // cfg.workers
    micro = _largest_divisor_at_most(per_worker, cfg.micro_batch or get_size(cfg.model).micro_batch)
    total = cfg.tokens // tpu
    if total < 1:
        raise SlmscaleError(
            f"tokens: the budget D={cfg.tokens} is smaller than one optimizer update ({tpu} tokens per update); "
            f"expected tokens >= {tpu} (or a smaller --tokens-per-update)"
        )
    warmup = min(cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.01 * total)), total)
    start = None
    if cfg.schedule == "wsd":
        start = cooldown_start(total, cfg.cooldown_fraction)
        if start < warmup:
            raise SlmscaleError(
                f"cooldown_fraction: with {total} updates the cooldown starts after update {start}, inside the "
                f"{warmup}-update warmup; expected more tokens, a smaller cooldown_fraction or fewer warmup_steps"
            )
    late = [s for s in cfg.keep_steps if s > total]
    if late:
        raise SlmscaleError(f"keep_steps: {late} are past the run's last update ({total}); expected steps <= {total}")
    report = cfg.report_every or max(1, total // 50)
    own = total - (start if cfg.branch_from and start is not None else 0)  # updates this run trains (a branch: its cooldown)
    eval_tokens = cfg.eval_tokens
    if cfg.eval_every is None and eval_tokens is not None:  # the default cadence also sizes each evaluation
        eval_tokens = min(eval_tokens, max(int(EVAL_TOKENS_PER_TRAINED_TOKEN * own * tpu) // context, MIN_EVAL_SEQUENCES) * context)
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
        warmup_steps=warmup,
        report_every=report,
        eval_every=cfg.eval_every or _default_eval_every(total, report, own * tpu, eval_tokens),
        eval_tokens=eval_tokens,
        checkpoint_every=cfg.checkpoint_every or max(1, total // 10),
        schedule=cfg.schedule,
        cooldown_start=start,
        keep_steps=tuple(sorted(set(cfg.keep_steps))),
        flops_per_token_6n=six_n,
        flops_per_token=exact,
    )
