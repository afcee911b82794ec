"""The grid spec: a YAML file naming model sizes x token budgets x seeds, expanded into one `Trial` per point.

    name: tiny
    units: /data/units/librispeech-k500    # unit dataset (overridable with --units)
    n_units: 500                           # K for parameter counts when the unit dataset is not at hand
    models: [tiny-1, tiny-2, tiny-3]       # names from models.ladder
    d_over_n: [2, 8, 32]                   # exactly one of d_over_n / flops (isoFLOP budgets) / tokens
    unique_tokens: [null, 200k]            # optional caps on unique tokens (multi-epoch runs); null = single epoch
    seeds: [0]
    lrs: [1e-3, 2e-3, 4e-3]                # optional: every point at each peak LR (else train.lr, the paper's 5e-4);
                                           # fits take each point's best (schedules compare at tuned LRs)
    eval: [embedded:sblimp,                # benchmarks for models.evaluation.evaluate, run after training:
           {benchmark: /data/sblimp/syntactic/dev, units: /data/sblimp-units}]   # a folder, or a folder +
                                           # its already-encoded unit dataset (same tokenizer hash as the model)
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    model_resources: {tiny-3M: {workers: 2}}   # optional per-size overrides of `resources`
    train: {checkpoint_every: 50}          # further models.train.TrainConfig fields, the same for every trial
    schedule: wsd                          # cosine (default, the paper's: one full run per point) or wsd
    cooldown: {fraction: 0.2, shape: 1-sqrt}   # wsd: one constant-LR trunk per (size, seed, unique-token cap);
                                           # each D is a cooldown branch over its last 20 % (Hägele et al. 2024)
    max_failures: 3
    plan: {mfu: 0.4, gpu_peak_tflops: 312}  # assumptions for the GPU-hour estimate of `sweep plan`

Token counts (`tokens`, `unique_tokens`, `flops`) may be written 410000000, 4.1e8 or 410M (k, M, B/G, T).

The schema is one set of pydantic models (`GridSpec`, `TrialResources`, `PlanAssumptions`, `EvalEntry`);
`grid_from_dict` turns every validation error into one SlmscaleError naming the file and the field, e.g.
"grid.yaml: field 'tokens[2]': expected a positive whole number, got -3". Compute is C = 6 N D (paper §Grid).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from slmscale.errors import SlmscaleError, explain_validation_error
from slmscale.typed import parse_count

__all__ = ["TrialResources", "PlanAssumptions", "EvalEntry", "Cooldown", "GridSpec", "Trial", "grid_from_dict", "load_grid",
           "with_changes", "expand_grid", "format_count"]

# Fields of models.train.TrainConfig that every trial gets from the grid itself, so `train` may not set them.
RESERVED_TRAIN_FIELDS = frozenset({"units_dir", "model", "tokens", "out_dir", "unique_tokens", "seed", "workers",
                                   "gpus_per_worker", "schedule", "cooldown_fraction", "cooldown_shape",
                                   "branch_from", "keep_steps"})


# --- scalar parsers (used as pydantic BeforeValidators; a ValueError's text becomes the error message) ----------

def _parse_number(value: Any, *, integer: bool = False, positive: bool = True, allow_zero: bool = False,
                  count: bool = False) -> int | float:
    """A YAML scalar as a number. YAML 1.1 reads `1e9` as a string, so strings are parsed too; `count` also
    accepts a k/M/B/G/T suffix (410M = 4.1e8)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = parse_count(value) if count else float(value.strip().replace("_", "").replace(",", ""))
        except ValueError:
            like = " like 410M, 4.1e8 or 410000000" if count else ""
            raise ValueError(f"expected a number{like}, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        kind = "whole number" if integer else "number"
        raise ValueError(f"expected a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _number(**kw) -> BeforeValidator:
    return BeforeValidator(lambda v: _parse_number(v, **kw))


def _optional_number(**kw) -> BeforeValidator:
    return BeforeValidator(lambda v: None if v is None else _parse_number(v, **kw))


def _as_list(value: Any) -> Any:
    """A single value stands for a one-element list; null for an empty one."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _distinct(values: tuple) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError(f"values must be distinct, got {list(values)}")
    return values


def _non_empty(what: str) -> AfterValidator:
    def check(values: tuple) -> tuple:
        if not values:
            raise ValueError(f"must list at least one {what}")
        return values

    return AfterValidator(check)


def _path(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a path, got {value!r}")
    return value


def _mapping_or_empty(what: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of {what}, got {value!r}")
        return value

    return BeforeValidator(check)


PositiveInt = Annotated[int, _number(integer=True)]
NonNegativeInt = Annotated[int, _number(integer=True, allow_zero=True)]
PositiveFloat = Annotated[float, _number()]
NonNegativeFloat = Annotated[float, _number(allow_zero=True)]
TokenCount = Annotated[int, _number(integer=True, count=True)]
FlopCount = Annotated[float, _number(count=True)]
UniqueCap = Annotated[int | None, _optional_number(integer=True, count=True)]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class TrialResources(BaseModel):
    """What one trial asks the cluster for: `workers` data-parallel training workers, each with
    `cpus_per_worker` CPUs and `gpus_per_worker` GPUs (0 = CPU training)."""

    model_config = _STRICT

    workers: PositiveInt = Field(1, description="data-parallel training workers of one trial")
    cpus_per_worker: NonNegativeFloat = Field(1.0, description="CPUs per worker")
    gpus_per_worker: NonNegativeFloat = Field(0.0, description="GPUs per worker (0 = CPU training)")

    def __init__(self, *args: Any, **data: Any) -> None:
        """Also positionally: TrialResources(workers, cpus_per_worker, gpus_per_worker)."""
        names = ("workers", "cpus_per_worker", "gpus_per_worker")
        if len(args) > len(names):
            raise TypeError(f"TrialResources takes at most {len(names)} positional arguments ({', '.join(names)})")
        super().__init__(**dict(zip(names, args)), **data)

    @model_validator(mode="after")
    def _needs_a_device(self) -> TrialResources:
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ValueError("a worker needs at least one CPU or GPU (cpus_per_worker and gpus_per_worker are both 0)")
        return self

    @property
    def total_gpus(self) -> float:
        return self.workers * self.gpus_per_worker


class PlanAssumptions(BaseModel):
    """Throughput assumptions for the compute plan: GPU-hours = C / (mfu * peak FLOP/s) / 3600."""

    model_config = _STRICT

    mfu: PositiveFloat = Field(0.4, description="model FLOPs utilisation, a fraction in (0, 1] (paper: 32-62% on A100)")
    gpu_peak_tflops: PositiveFloat = Field(312.0, description="peak TFLOP/s of one GPU (A100 bf16 dense: 312)")

    @field_validator("mfu")
    @classmethod
    def _fraction(cls, mfu: float) -> float:
        if mfu > 1:
            raise ValueError(f"expected a fraction in (0, 1], got {mfu}")
        return mfu


class EvalEntry(BaseModel):
    """One benchmark every trial is scored on after training (models.evaluation.evaluate)."""

    model_config = _STRICT

    benchmark: str = Field(min_length=1, description="a benchmark folder (official layout) or embedded:<name>")
    units: Annotated[str | None, BeforeValidator(_path)] = Field(
        None, description="its unit dataset, already encoded with the model's tokenizer (optional)")
    task: str | None = Field(None, description="the benchmark's task when its folder does not say (optional)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"benchmark": value}
        if not isinstance(value, (dict, EvalEntry)):
            raise ValueError(f"expected a benchmark folder, embedded:<name>, or a mapping with 'benchmark' and "
                             f"optional 'units' / 'task', got {value!r}")
        return value

    @field_validator("benchmark")
    @classmethod
    def _known_embedded(cls, value: str) -> str:
        """An unknown embedded:<name> is refused with the grid, not found after a trial has trained."""
        if value.startswith("embedded:"):
            from slmscale.models.evaluation.evaluator import EMBEDDED

            if value not in EMBEDDED:
                raise ValueError(f"unknown embedded benchmark {value!r}, expected one of {list(EMBEDDED)} or a "
                                 f"benchmark folder")
        return value

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler) -> dict[str, Any]:
        """{"benchmark": ...} plus only the keys that are set (this dict also keys the trials' evaluation index)."""
        return {k: v for k, v in handler(self).items() if v is not None}

    def to_dict(self) -> dict[str, str]:
        return self.model_dump()


class Cooldown(BaseModel):
    """The cooldown of a `schedule: wsd` grid: its share of each point's updates and the LR multiplier's shape."""

    model_config = _STRICT

    fraction: PositiveFloat = Field(0.2, description="fraction of each point's updates spent cooling down, in (0, 1)")
    shape: Literal["1-sqrt", "linear", "cosine"] = Field("1-sqrt", description="the cooldown's LR shape")

    @field_validator("fraction")
    @classmethod
    def _below_one(cls, fraction: float) -> float:
        if fraction >= 1:
            raise ValueError(f"expected a fraction in (0, 1), got {fraction}")
        return fraction


def _models(value: Any) -> Any:
    names = _as_list(value)
    if not names:
        raise ValueError(f"expected a non-empty list of model names, got {value!r}")
    out = []
    for name in names:
        if isinstance(name, bool) or not isinstance(name, (str, int, float)) or not str(name):
            raise ValueError(f"expected a non-empty list of model names, got {value!r}")
        out.append(str(name))
    if len(set(out)) != len(out):
        raise ValueError(f"lists a model twice: {out}")
    return out


def _name(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"expected a word of letters, digits, '_', '.', '-', got {value!r}")
    return value


def _unique_caps(value: Any) -> Any:
    return [None] if value is None else _as_list(value)


class GridSpec(BaseModel):
    """A validated grid spec. Token budgets come from exactly one of `d_over_n`, `flops` or `tokens`.

    Build it with `grid_from_dict` / `load_grid` (which name the file in every error); `source` is that file."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: Annotated[str, BeforeValidator(_name)] = Field(description="the grid's name: letters, digits, _ . -")
    models: Annotated[tuple[str, ...], BeforeValidator(_models)] = Field(
        description="model sizes, names from models.ladder")
    d_over_n: Annotated[tuple[PositiveFloat, ...], BeforeValidator(_as_list), AfterValidator(_distinct)] = Field(
        (), description="token budgets as ratios D/N, the same for every size")
    flops: Annotated[tuple[FlopCount, ...], BeforeValidator(_as_list), AfterValidator(_distinct)] = Field(
        (), description="isoFLOP budgets C: D = C / (6 N) for every size")
    tokens: Annotated[tuple[TokenCount, ...], BeforeValidator(_as_list), AfterValidator(_distinct)] = Field(
        (), description="explicit token budgets D, the same for every size")
    unique_tokens: Annotated[tuple[UniqueCap, ...], BeforeValidator(_unique_caps),
                             _non_empty("entry (null = single epoch)")] = Field(
        (None,), description="caps on distinct training tokens (multi-epoch runs); null = single epoch")
    seeds: Annotated[tuple[NonNegativeInt, ...], BeforeValidator(_as_list), AfterValidator(_distinct),
                     _non_empty("seed")] = Field((0,), description="training seeds")
    lrs: Annotated[tuple[PositiveFloat, ...], BeforeValidator(_as_list), AfterValidator(_distinct)] = Field(
        (), description="peak learning rates: every point is trained at each (run ids end in -lr<value>; with wsd "
                        "one trunk per LR) and fits take each point's lowest loss; empty: train.lr (paper: 5e-4)")
    units: Annotated[str | None, BeforeValidator(_path)] = Field(
        None, description="unit dataset (relative to the YAML file); --units overrides it")
    n_units: PositiveInt = Field(500, description="K for parameter counts when the unit dataset is not at hand")
    eval: Annotated[tuple[EvalEntry, ...], BeforeValidator(_as_list)] = Field(
        (), description="benchmarks every trial is scored on after training")
    resources: Annotated[TrialResources, BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=TrialResources, description="what each trial asks the cluster for")
    model_resources: Annotated[dict[str, TrialResources], _mapping_or_empty("model names to resources")] = Field(
        default_factory=dict, description="per-size overrides of `resources`")
    train: Annotated[dict[str, Any], _mapping_or_empty("TrainConfig fields")] = Field(
        default_factory=dict, description="further models.train.TrainConfig fields, the same for every trial")
    max_failures: NonNegativeInt = Field(3, description="Tune retries per trial (each resumes from a checkpoint)")
    max_concurrent: Annotated[int | None, _optional_number(integer=True)] = Field(
        None, description="trials at once; null = as many as the cluster fits")
    plan: Annotated[PlanAssumptions, BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=PlanAssumptions, description="assumptions for the GPU-hour estimate of `sweep plan`")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="cosine: every point a full run with its own cosine (paper); wsd: one constant-LR "
                              "trunk per size, seed and unique-token cap, every point a cooldown branch of it")
    cooldown: Annotated[Cooldown, BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=Cooldown, description="wsd: the cooldown's fraction of each point's updates and its shape")

    _source: str = PrivateAttr("<grid>")

    @property
    def source(self) -> str:
        """The file this spec came from, for error messages."""
        return self._source

    @field_validator("model_resources")
    @classmethod
    def _known_models(cls, value: dict[str, TrialResources], info: ValidationInfo) -> dict[str, TrialResources]:
        models = info.data.get("models")
        for name in value:
            if models is not None and name not in models:
                raise ValueError(f"names {name!r}, which is not in 'models' {list(models)}")
        return value

    @field_validator("train")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(RESERVED_TRAIN_FIELDS & set(value))
        if clash:
            raise ValueError(f"may not set {clash}: they come from the grid (models, token budgets, seeds, units, "
                             f"resources)")
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> GridSpec:
        given = [k for k in ("d_over_n", "flops", "tokens") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of the fields 'd_over_n', 'flops' (isoFLOP budgets) or 'tokens', got "
                             f"{given or 'none'}")
        return self

    @model_validator(mode="after")
    def _one_lr_source(self) -> GridSpec:
        if self.lrs and "lr" in self.train:
            raise ValueError("give the peak LR in 'lrs' (several) or in train.lr (one), not both")
        from slmscale.models.config import TrainConfig

        min_lr = float(self.train.get("min_lr", TrainConfig.model_fields["min_lr"].default))
        low = [lr for lr in self.lrs if lr < min_lr]
        if low:
            raise ValueError(f"'lrs' {low} are below the final LR train.min_lr = {min_lr:g}; expected peak LRs >= it")
        return self

    def resources_for(self, model: str) -> TrialResources:
        return self.model_resources.get(model, self.resources)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON types (what sweep.json records; `grid_from_dict` reads it back)."""
        return self.model_dump(mode="json")


_SECTIONS: dict[str, type[BaseModel]] = {"resources": TrialResources, "model_resources": TrialResources,
                                         "plan": PlanAssumptions, "eval": EvalEntry, "cooldown": Cooldown}


def _known_fields(loc: tuple) -> Iterable[str]:
    """The fields allowed where an unknown one was found (a section's own, or the top level's)."""
    section = _SECTIONS.get(str(loc[0])) if len(loc) > 1 else None
    return (section or GridSpec).model_fields


def grid_from_dict(raw: Any, source: str = "<grid>") -> GridSpec:
    """Build and validate a GridSpec from parsed YAML (or from `GridSpec.to_dict()`); errors name `source`."""
    if not isinstance(raw, dict):
        raise SlmscaleError(f"{source}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise SlmscaleError(explain_validation_error(exc, source, known=_known_fields)) from None
    spec._source = source
    return spec


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid YAML file. Relative `units` and `eval` paths are taken relative to the YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SlmscaleError(f"grid spec not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SlmscaleError(f"{path}: not valid YAML: {exc}") from None
    spec = grid_from_dict(raw, source=str(path))

    def near_yaml(p: str | None) -> str | None:
        if not p or p.startswith("embedded:") or Path(p).expanduser().is_absolute():
            return p
        return str((path.parent / p).resolve())

    return with_changes(
        spec,
        units=near_yaml(spec.units),
        eval=[{**e.to_dict(), "benchmark": near_yaml(e.benchmark), "units": near_yaml(e.units)} for e in spec.eval],
    )


def with_changes(spec: GridSpec, **changes) -> GridSpec:
    """A copy of `spec` with `changes` (field name = new value), validated again."""
    return grid_from_dict({**spec.model_dump(), **changes}, source=spec.source)


@dataclass(frozen=True)
class Trial:
    """One training run of the sweep. With `schedule: cosine` every trial is a grid point: a complete run with
    its own schedule (paper: not an intermediate checkpoint). With `schedule: wsd` a grid point ("wsd") is a
    cooldown branch that starts from its trunk's checkpoint of update `branch_step`; a trunk ("constant") is
    a trial too, but no grid point: it gives no results row."""

    run_id: str
    model: str
    n_params: int
    tokens: int  # D (a trunk: the tokens up to its last branch point)
    unique_tokens: int | None  # U_D cap; None = single epoch (unique = D)
    seed: int
    budget: str  # how D was chosen, e.g. "d_over_n=20" or "flops=1e+18"
    schedule: str = "cosine"  # cosine | wsd (a branch) | constant (a trunk)
    trunk: str | None = None  # a branch: the run_id of its trunk
    branch_step: int = 0  # a branch: the trunk's update it starts from (0: from scratch)
    branch_tokens: int = 0  # ... and the tokens trained up to it, which the branch does not pay for again
    warmup_steps: int | None = None  # wsd: the trunk's warmup, shared by its branches; None: the run's own 1 %
    keep_steps: tuple[int, ...] = ()  # a trunk: its branch points (checkpoints never pruned)
    lr: float | None = None  # the grid's `lrs` entry of this trial; None: train.lr

    @property
    def flops(self) -> float:
        """C = 6 N D of the run's D (a branch's includes the trunk's share: fits compare across schedules)."""
        return 6.0 * self.n_params * self.tokens

    @property
    def spent_flops(self) -> float:
        """What running this trial costs: a branch's cooldown only (its trunk is paid once, by the trunk)."""
        return 6.0 * self.n_params * (self.tokens - self.branch_tokens)

    @property
    def is_point(self) -> bool:
        """Gives a results row (every trial but a WSD trunk)."""
        return self.schedule != "constant"

    @property
    def epochs(self) -> float:
        return self.tokens / self.unique_tokens if self.unique_tokens else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_count(x: float) -> str:
    """1234567 -> '1.23M' (for run ids and tables)."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def expand_grid(spec: GridSpec, param_count: Callable[[str], int]) -> list[Trial]:
    """Every (model, token budget, unique-token cap, seed, peak LR) combination as a Trial, sorted by compute; with
    `schedule: wsd` these are branches, preceded by one trunk per (model, unique-token cap, seed, LR) (`wsd_trials`).

    `param_count(model_name) -> N` comes from models.ladder. A unique-token cap at or above D is a
    single-epoch run and is dropped when the grid also has the uncapped run (it would duplicate it).
    """
    points = _grid_points(spec, param_count)
    return wsd_trials(spec, points) if spec.schedule == "wsd" else points


def _grid_points(spec: GridSpec, param_count: Callable[[str], int]) -> list[Trial]:
    trials: list[Trial] = []
    seen: set[tuple] = set()
    for model in spec.models:
        n = int(param_count(model))
        budgets: list[tuple[int, str]] = []
        for r in spec.d_over_n:
            budgets.append((int(round(r * n)), f"d_over_n={r:g}"))
        for c in spec.flops:
            budgets.append((int(round(c / (6.0 * n))), f"flops={c:.3g}"))
        for d in spec.tokens:
            budgets.append((int(d), f"tokens={format_count(d)}"))
        for tokens, budget in budgets:
            if tokens < 1:
                raise SlmscaleError(f"{spec.source}: budget {budget} gives fewer than one training token for model {model} (N={n})")
            for cap in spec.unique_tokens:
                unique = None if cap is None or cap >= tokens else int(cap)
                for seed in spec.seeds:
                    for lr in spec.lrs or (None,):
                        key = (model, tokens, unique, seed, lr)
                        if key in seen:
                            continue
                        seen.add(key)
                        run_id = (f"{model}-D{format_count(tokens)}" + (f"-U{format_count(unique)}" if unique else "")
                                  + f"-s{seed}" + _lr_suffix(lr))
                        trials.append(Trial(run_id, model, n, tokens, unique, int(seed), budget, lr=lr))
    ids = [t.run_id for t in trials]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:  # two budgets rounding to the same 3-significant-digit label: make ids exact
        trials = [
            Trial(f"{t.model}-D{t.tokens}" + (f"-U{t.unique_tokens}" if t.unique_tokens else "") + f"-s{t.seed}"
                  + _lr_suffix(t.lr), t.model, t.n_params, t.tokens, t.unique_tokens, t.seed, t.budget, lr=t.lr)
            for t in trials
        ]
    return sorted(trials, key=lambda t: (t.flops, t.model, t.tokens, t.unique_tokens or 0, t.seed, t.lr or 0.0))


def _lr_suffix(lr: float | None) -> str:
    return "" if lr is None else f"-lr{lr:g}"


def _train_int(spec: GridSpec, name: str) -> int | None:
    value = spec.train.get(name)
    return None if value is None else int(value)


def wsd_trials(spec: GridSpec, points: list[Trial]) -> list[Trial]:
    """The WSD sweep of `points`: per (model, unique-token cap, seed, peak LR) one constant-LR trunk up to the latest
    branch point, checkpointed at every branch point, then each point as a branch that cools down over its last
    `cooldown.fraction` of updates from the trunk's checkpoint where that cooldown starts. All share the trunk's
    warmup: the grid's train.warmup_steps, else 1 % of the longest point's updates. Trunks come first, longest
    first, so they start before their branches can."""
    from slmscale.models.config import cooldown_start, update_size

    groups: dict[tuple, list[Trial]] = {}
    for t in points:
        groups.setdefault((t.model, t.unique_tokens, t.seed, t.lr), []).append(t)
    trunks, branches = [], []
    for (model, unique, seed, lr), group in groups.items():
        _, tpu = update_size(model, _train_int(spec, "context"), _train_int(spec, "tokens_per_update"))
        updates = {t.run_id: t.tokens // tpu for t in group}
        starts = {run_id: cooldown_start(n, spec.cooldown.fraction) for run_id, n in updates.items()}
        warmup = _train_int(spec, "warmup_steps")
        warmup = max(1, round(0.01 * max(updates.values()))) if warmup is None else warmup
        trunk_id = f"{model}-trunk" + (f"-U{format_count(unique)}" if unique else "") + f"-s{seed}" + _lr_suffix(lr)
        for t in group:
            if updates[t.run_id] < 2 or starts[t.run_id] < warmup:
                raise SlmscaleError(
                    f"{spec.source}: point {t.run_id} has {updates[t.run_id]} updates, so its cooldown would start at "
                    f"update {starts[t.run_id]}, before the end of the trunk's {warmup}-update warmup; expected "
                    f"larger token budgets, a smaller cooldown.fraction or a smaller train.warmup_steps"
                )
            branches.append(Trial(t.run_id, model, t.n_params, t.tokens, unique, seed, t.budget, schedule="wsd",
                                  trunk=trunk_id, branch_step=starts[t.run_id], branch_tokens=starts[t.run_id] * tpu,
                                  warmup_steps=warmup, lr=lr))
        keep = tuple(sorted(set(starts.values())))
        trunks.append(Trial(trunk_id, model, group[0].n_params, keep[-1] * tpu, unique, seed, "trunk",
                            schedule="constant", warmup_steps=warmup, keep_steps=keep, lr=lr))
    return sorted(trunks, key=lambda t: -t.flops) + branches
