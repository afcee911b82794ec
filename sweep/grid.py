"""The grid spec: a YAML file naming model sizes x token budgets x seeds, expanded into one `Trial` per point.

    name: tiny
    units: /data/units/librispeech-k500    # unit dataset (overridable with --units)
    n_units: 500                           # K for parameter counts when the unit dataset is not at hand
    models: [tiny-1, tiny-2, tiny-3]       # names from models.ladder
    d_over_n: [2, 8, 32]                   # exactly one of d_over_n / flops (isoFLOP budgets) / tokens
    unique_tokens: [null, 2.0e5]           # optional caps on unique tokens (multi-epoch runs); null = single epoch
    seeds: [0]
    eval: [embedded:sblimp,                # benchmarks for models.evaluation.evaluate, run after training:
           {benchmark: /data/sblimp/syntactic/dev, units: /data/sblimp-units}]   # a folder, or a folder +
                                           # its already-encoded unit dataset (same tokenizer hash as the model)
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    model_resources: {tiny-3M: {workers: 2}}   # optional per-size overrides of `resources`
    train: {checkpoint_every: 50}          # further models.train.TrainConfig fields, the same for every trial
    max_failures: 3
    plan: {mfu: 0.4, gpu_peak_tflops: 312}  # assumptions for the GPU-hour estimate of `sweep plan`

Every invalid value raises SlmscaleError naming the file and the field. Compute is C = 6 N D (paper §Grid).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError

__all__ = ["TrialResources", "PlanAssumptions", "GridSpec", "Trial", "grid_from_dict", "load_grid", "with_changes", "expand_grid", "format_count"]


def _number(where: str, value: Any, *, integer: bool = False, positive: bool = True, allow_zero: bool = False) -> float:
    """Parse a YAML scalar as a number (YAML 1.1 reads `1e9` as a string, so strings are parsed too)."""
    if isinstance(value, bool):
        raise SlmscaleError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            raise SlmscaleError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SlmscaleError(f"{where}: expected a finite number, got {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise SlmscaleError(f"{where}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise SlmscaleError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _sub_field(where: str, name: str) -> str:
    """"g.yaml: field 'resources'" + "workers" -> "g.yaml: field 'resources.workers'"."""
    return f"{where[:-1]}.{name}'" if where.endswith("'") else f"{where}.{name}"


def _number_list(where: str, value: Any, **kw) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        value = [value]
    # "g.yaml: field 'seeds'" -> "g.yaml: field 'seeds[2]'" for the bad element
    item = (lambda i: f"{where[:-1]}[{i}]'") if where.endswith("'") else (lambda i: f"{where}[{i}]")
    out = tuple(_number(item(i), v, **kw) for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise SlmscaleError(f"{where}: values must be distinct, got {list(value)}")
    return out


@dataclass(frozen=True)
class TrialResources:
    """What one trial asks the cluster for: `workers` data-parallel training workers, each with
    `cpus_per_worker` CPUs and `gpus_per_worker` GPUs (0 = CPU training)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def validate(self, where: str = "resources") -> TrialResources:
        _number(_sub_field(where, "workers"), self.workers, integer=True)
        _number(_sub_field(where, "cpus_per_worker"), self.cpus_per_worker, allow_zero=True)
        _number(_sub_field(where, "gpus_per_worker"), self.gpus_per_worker, allow_zero=True)
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise SlmscaleError(f"{where}: a worker needs at least one CPU or GPU (cpus_per_worker and gpus_per_worker are both 0)")
        return self

    @property
    def total_gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    @property
    def total_cpus(self) -> float:
        return self.workers * self.cpus_per_worker


@dataclass(frozen=True)
class PlanAssumptions:
    """Throughput assumptions for the compute plan: GPU-hours = C / (mfu * peak FLOP/s) / 3600."""

    mfu: float = 0.4  # paper: 32-62% on A100 depending on size
    gpu_peak_tflops: float = 312.0  # A100 bf16 dense

    def validate(self, where: str = "plan") -> PlanAssumptions:
        _number(_sub_field(where, "mfu"), self.mfu)
        if self.mfu > 1:
            raise SlmscaleError(f"{_sub_field(where, 'mfu')}: expected a fraction in (0, 1], got {self.mfu}")
        _number(_sub_field(where, "gpu_peak_tflops"), self.gpu_peak_tflops)
        return self


@dataclass(frozen=True)
class GridSpec:
    """A validated grid spec. Token budgets come from exactly one of `d_over_n`, `flops` or `tokens`."""

    name: str
    models: tuple[str, ...]
    d_over_n: tuple[float, ...] = ()
    flops: tuple[float, ...] = ()  # isoFLOP budgets: D = C / (6 N) for every model
    tokens: tuple[int, ...] = ()  # explicit D for every model
    unique_tokens: tuple[int | None, ...] = (None,)  # None = single epoch over fresh data
    seeds: tuple[int, ...] = (0,)
    units: str | None = None
    n_units: int = 500  # K, for parameter counts when the unit dataset is not at hand (paper: 500)
    eval: tuple[dict[str, str], ...] = ()  # {"benchmark": folder or embedded:<name>, "units": dir (optional), "task"}
    resources: TrialResources = field(default_factory=TrialResources)
    model_resources: dict[str, TrialResources] = field(default_factory=dict)  # per-size overrides of `resources`
    train: dict[str, Any] = field(default_factory=dict)
    max_failures: int = 3
    max_concurrent: int | None = None
    plan: PlanAssumptions = field(default_factory=PlanAssumptions)
    source: str = "<grid>"  # the file it came from, for error messages

    def resources_for(self, model: str) -> TrialResources:
        return self.model_resources.get(model, self.resources)

    def validate(self) -> GridSpec:
        w = self.source
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise SlmscaleError(f"{w}: field 'name' must be a word of letters, digits, '_', '.', '-', got {self.name!r}")
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise SlmscaleError(f"{w}: field 'models' must be a non-empty list of model names, got {list(self.models)!r}")
        if len(set(self.models)) != len(self.models):
            raise SlmscaleError(f"{w}: field 'models' lists a model twice: {list(self.models)}")
        given = [k for k in ("d_over_n", "flops", "tokens") if getattr(self, k)]
        if len(given) != 1:
            raise SlmscaleError(
                f"{w}: give exactly one of the fields 'd_over_n', 'flops' (isoFLOP budgets) or 'tokens', got {given or 'none'}"
            )
        if not self.seeds:
            raise SlmscaleError(f"{w}: field 'seeds' must list at least one seed")
        if not self.unique_tokens:
            raise SlmscaleError(f"{w}: field 'unique_tokens' must list at least one entry (null = single epoch)")
        for i, e in enumerate(self.eval):
            if not isinstance(e, dict) or not isinstance(e.get("benchmark"), str) or not e["benchmark"] \
                    or set(e) - {"benchmark", "units", "task"} or not all(isinstance(v, str) for v in e.values()):
                raise SlmscaleError(
                    f"{w}: field 'eval[{i}]' must be a benchmark folder, embedded:<name>, or a mapping with 'benchmark' "
                    f"and optional 'units' / 'task' paths, got {e!r}"
                )
        if not isinstance(self.train, dict):
            raise SlmscaleError(f"{w}: field 'train' must be a mapping of TrainConfig fields, got {self.train!r}")
        reserved = {"units_dir", "model", "tokens", "out_dir", "unique_tokens", "seed", "workers", "gpus_per_worker"}
        clash = sorted(reserved & set(self.train))
        if clash:
            raise SlmscaleError(
                f"{w}: field 'train' may not set {clash}: they come from the grid (models, token budgets, seeds, units, resources)"
            )
        _number(f"{w}: field 'n_units'", self.n_units, integer=True)
        _number(f"{w}: field 'max_failures'", self.max_failures, integer=True, allow_zero=True)
        if self.max_concurrent is not None:
            _number(f"{w}: field 'max_concurrent'", self.max_concurrent, integer=True)
        self.resources.validate(f"{w}: field 'resources'")
        for name, res in self.model_resources.items():
            if name not in self.models:
                raise SlmscaleError(f"{w}: field 'model_resources' names {name!r}, which is not in 'models' {list(self.models)}")
            res.validate(f"{w}: field 'model_resources.{name}'")
        self.plan.validate(f"{w}: field 'plan'")
        return self


_TOP_FIELDS = {f.name for f in fields(GridSpec)} - {"source"}


def _sub(cls, where: str, raw: Any):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise SlmscaleError(f"{where}: expected a mapping, got {raw!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SlmscaleError(f"{where}: unknown field(s) {unknown}, expected some of {sorted(known)}")
    return cls(**raw)


def _model_resources(source: str, raw: Any) -> dict[str, TrialResources]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SlmscaleError(f"{source}: field 'model_resources' must map model names to resources, got {raw!r}")
    return {str(k): _sub(TrialResources, f"{source}: field 'model_resources.{k}'", v) for k, v in raw.items()}


def grid_from_dict(raw: Any, source: str = "<grid>") -> GridSpec:
    """Build and validate a GridSpec from parsed YAML."""
    if not isinstance(raw, dict):
        raise SlmscaleError(f"{source}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_FIELDS)
    if unknown:
        raise SlmscaleError(f"{source}: unknown field(s) {unknown}, expected some of {sorted(_TOP_FIELDS)}")
    if "name" not in raw:
        raise SlmscaleError(f"{source}: missing field 'name'")
    if "models" not in raw:
        raise SlmscaleError(f"{source}: missing field 'models'")
    models = raw["models"]
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list):
        raise SlmscaleError(f"{source}: field 'models' must be a list of model names, got {models!r}")
    uniques = raw.get("unique_tokens", [None])
    if not isinstance(uniques, list):
        uniques = [uniques]
    uniques = tuple(
        None if u is None else _number(f"{source}: field 'unique_tokens[{i}]'", u, integer=True) for i, u in enumerate(uniques)
    )
    evals = raw.get("eval") or []
    if not isinstance(evals, list):
        evals = [evals]
    evals = [{"benchmark": e} if isinstance(e, str) else e for e in evals]
    units = raw.get("units")
    if units is not None and not isinstance(units, str):
        raise SlmscaleError(f"{source}: field 'units' must be a path, got {units!r}")
    spec = GridSpec(
        name=raw["name"],
        models=tuple(str(m) for m in models),
        d_over_n=_number_list(f"{source}: field 'd_over_n'", raw.get("d_over_n")),
        flops=_number_list(f"{source}: field 'flops'", raw.get("flops")),
        tokens=_number_list(f"{source}: field 'tokens'", raw.get("tokens"), integer=True),
        unique_tokens=uniques,
        seeds=_number_list(f"{source}: field 'seeds'", raw.get("seeds", [0]), integer=True, allow_zero=True),
        units=units,
        n_units=_number(f"{source}: field 'n_units'", raw.get("n_units", 500), integer=True),
        eval=tuple(evals),
        resources=_sub(TrialResources, f"{source}: field 'resources'", raw.get("resources")),
        model_resources=_model_resources(source, raw.get("model_resources")),
        train=raw.get("train") or {},
        max_failures=raw.get("max_failures", 3),
        max_concurrent=raw.get("max_concurrent"),
        plan=_sub(PlanAssumptions, f"{source}: field 'plan'", raw.get("plan")),
        source=source,
    )
    return spec.validate()


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

    def near_yaml(p: str) -> str:
        return p if p.startswith("embedded:") or Path(p).expanduser().is_absolute() else str((path.parent / p).resolve())

    return with_changes(
        spec,
        units=near_yaml(spec.units) if spec.units else None,
        eval=tuple({k: (near_yaml(v) if k != "task" else v) for k, v in e.items()} for e in spec.eval),
    )


def with_changes(spec: GridSpec, **changes) -> GridSpec:
    """A copy of `spec` with `changes`, validated again."""
    from dataclasses import replace

    return replace(spec, **changes).validate()


@dataclass(frozen=True)
class Trial:
    """One grid point: one complete training run with its own schedule (paper: not an intermediate checkpoint)."""

    run_id: str
    model: str
    n_params: int
    tokens: int  # D
    unique_tokens: int | None  # U_D cap; None = single epoch (unique = D)
    seed: int
    budget: str  # how D was chosen, e.g. "d_over_n=20" or "flops=1e+18"

    @property
    def flops(self) -> float:
        return 6.0 * self.n_params * self.tokens

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
    """Every (model, token budget, unique-token cap, seed) combination as a Trial, sorted by compute.

    `param_count(model_name) -> N` comes from models.ladder. A unique-token cap at or above D is a
    single-epoch run and is dropped when the grid also has the uncapped run (it would duplicate it).
    """
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
                    key = (model, tokens, unique, seed)
                    if key in seen:
                        continue
                    seen.add(key)
                    run_id = f"{model}-D{format_count(tokens)}" + (f"-U{format_count(unique)}" if unique else "") + f"-s{seed}"
                    trials.append(Trial(run_id, model, n, tokens, unique, int(seed), budget))
    ids = [t.run_id for t in trials]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:  # two budgets rounding to the same 3-significant-digit label: make ids exact
        trials = [
            Trial(f"{t.model}-D{t.tokens}" + (f"-U{t.unique_tokens}" if t.unique_tokens else "") + f"-s{t.seed}",
                  t.model, t.n_params, t.tokens, t.unique_tokens, t.seed, t.budget)
            for t in trials
        ]
    return sorted(trials, key=lambda t: (t.flops, t.model, t.tokens, t.unique_tokens or 0, t.seed))
