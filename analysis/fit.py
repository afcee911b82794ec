"""Parametric loss fits: the Chinchilla form and the data-constrained (Muennighoff) form.

Following Hoffmann et al. (2022) and the Epoch replication (Besiroglu et al. 2024), the model is fitted
on log loss in the log-sum-exp parametrisation
    log L̂ = LSE(a − α log N', b − β log D', e),   A = e^a, B = e^b, E = e^e,
minimising Σ_i Huber_δ(log L_i − log L̂_i) from a grid of initialisations and keeping the best optimum.
Every start is optimised independently but all at once (`batched_newton.minimize_batched`), in float64,
on the GPU when there is one. The data-constrained form adds log R_N* and log R_D* as parameters.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from slmscale.analysis.batched_newton import cpu_threads, minimize_batched
from slmscale.analysis.params import ScalingParams
from slmscale.errors import SlmscaleError
from slmscale.io import code_version

__all__ = ["FitConfig", "FitData", "FitResult", "fit_scaling_law", "epoch_grid", "kept_mask", "FORMS"]

FORMS = ("chinchilla", "data-constrained")


def epoch_grid() -> np.ndarray:
    """The Hoffmann et al. / Epoch grid of 4,500 initialisations (a, b, e, α, β).

    Besiroglu et al. (epoch-research/analyzing-chinchilla, `data_analysis.ipynb`): α, β ∈ {0, 0.5, …, 2},
    e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}.
    """
    alpha = np.arange(0, 2.5, 0.5)
    beta = np.arange(0, 2.5, 0.5)
    e = np.arange(-1, 1.5, 0.5)
    a = np.arange(0, 30, 5)
    b = np.arange(0, 30, 5)
    return np.array([(ai, bi, ei, al, be) for al, be, ei, ai, bi in itertools.product(alpha, beta, e, a, b)])


def coarse_grid() -> np.ndarray:
    """A 3^5 = 243-start grid spanning the same ranges, for quick fits and tests."""
    values = [(0.0, 10.0, 20.0), (0.0, 10.0, 20.0), (-1.0, 0.0, 1.0), (0.1, 0.5, 1.5), (0.1, 0.5, 1.5)]
    return np.array(list(itertools.product(*values)))


def with_r_star_starts(base: np.ndarray, r_star_values) -> np.ndarray:
    """Cross (a, b, e, α, β) starts with every (R_N*, R_D*) pair of `r_star_values` (in log space)."""
    logs = np.log(np.asarray(r_star_values, dtype=float))
    extra = np.array(list(itertools.product(logs, logs)))
    return np.concatenate([np.repeat(base, len(extra), 0), np.tile(extra, (len(base), 1))], axis=1)


@dataclass(frozen=True)
class FitConfig:
    form: str = "chinchilla"  # or "data-constrained"
    delta: float = 1e-3  # Huber δ on log-loss residuals (Hoffmann et al.; the speech paper used 0.03)
    exclude_highest_loss: int = 0  # drop the K highest-loss runs before fitting (Epoch drops 5)
    grid: str = "epoch"  # "epoch" (4,500 starts) or "coarse" (243 starts)
    # Data-constrained form: the grid is first fitted in the Chinchilla form; its distinct optima are then
    # crossed with these initial R_N*, R_D* values (R_D* is 15.4 for text, 25 for speech in Table 5).
    r_star_values: tuple[float, ...] = (1.0, 5.0, 25.0, 100.0)
    max_iter: int = 300
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    cpu_threads: int | None = 1  # torch threads during a CPU fit (see batched_newton.cpu_threads); None = default

    def validate(self) -> FitConfig:
        if self.form not in FORMS:
            raise SlmscaleError(f"--form: expected one of {list(FORMS)}, got '{self.form}'")
        if not (math.isfinite(self.delta) and self.delta > 0):
            raise SlmscaleError(f"--delta: the Huber δ must be a positive number, got {self.delta}")
        if self.exclude_highest_loss < 0:
            raise SlmscaleError(f"--exclude-highest-loss: expected K ≥ 0, got {self.exclude_highest_loss}")
        if self.grid not in ("epoch", "coarse"):
            raise SlmscaleError(f"--grid: expected 'epoch' or 'coarse', got '{self.grid}'")
        if not self.r_star_values or any(not (v > 0) for v in self.r_star_values):
            raise SlmscaleError(f"r_star_values: expected positive numbers, got {self.r_star_values}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise SlmscaleError(f"cpu_threads: expected ≥ 1 or None, got {self.cpu_threads}")
        if self.max_iter < 1:
            raise SlmscaleError(f"max_iter: expected ≥ 1, got {self.max_iter}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise SlmscaleError(f"--device: expected 'auto', 'cpu' or 'cuda[:i]', got '{self.device}'")
        return self

    @property
    def n_params(self) -> int:
        return 5 if self.form == "chinchilla" else 7

    def initial_grid(self) -> np.ndarray:
        """The (a, b, e, α, β) starting points."""
        return coarse_grid() if self.grid == "coarse" else epoch_grid()

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def kept_mask(loss, exclude_highest_loss: int) -> np.ndarray:
    """Rows a fit keeps: all but the `exclude_highest_loss` highest losses (ties: the earlier row goes)."""
    loss = np.asarray(loss, dtype=float)
    keep = np.ones(len(loss), dtype=bool)
    if exclude_highest_loss:
        if exclude_highest_loss >= len(loss):
            raise SlmscaleError(f"--exclude-highest-loss {exclude_highest_loss}: the table has only {len(loss)} runs")
        keep[np.argsort(-loss, kind="stable")[:exclude_highest_loss]] = False
    return keep


POINT_KEYS = ("n_params", "tokens", "unique_tokens", "seed", "schedule")


def best_lr_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A table whose points were trained at several peak LRs (an `lr` column; a grid with `lrs`) -> each point's
    lowest-loss row (the point at its tuned LR, as scaling laws and schedule comparisons are read; ties: the
    earlier row), and the run_ids of the rows left out. A table with one LR per point comes back unchanged; rows
    without a finite loss are kept for validation to name."""
    if "lr" not in df.columns or df["lr"].nunique(dropna=True) < 2:
        return df, []
    point = df[[k for k in POINT_KEYS if k in df.columns]].astype(str).agg("|".join, axis=1).to_numpy()
    loss = pd.to_numeric(df["loss"], errors="coerce").to_numpy(dtype=float)
    best = pd.Series(loss).groupby(point, sort=False).idxmin().dropna().astype(int).to_numpy()
    keep = ~np.isfinite(loss)
    keep[best] = True
    ids = df["run_id"].astype(str).to_numpy() if "run_id" in df.columns else np.array([f"row{i}" for i in range(len(df))])
    return df[keep], ids[~keep].tolist()


@dataclass
class FitData:
    """The runs a fit sees, as float64 arrays (already validated and with excluded runs removed)."""

    n: np.ndarray
    d: np.ndarray
    unique_tokens: np.ndarray
    loss: np.ndarray
    run_ids: list[str]
    excluded_run_ids: list[str] = field(default_factory=list)
    other_lr_run_ids: list[str] = field(default_factory=list)  # a point's runs at LRs other than its best

    @classmethod
    def from_frame(cls, df: pd.DataFrame, exclude_highest_loss: int = 0, source: str = "results") -> FitData:
        df, other_lr = best_lr_rows(df)
        for col in ("n_params", "tokens", "loss"):
            if col not in df.columns:
                raise SlmscaleError(f"{source}: missing column '{col}'")
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(values) | (values <= 0)
            if bad.any():
                rows = np.flatnonzero(bad)[:5].tolist()
                raise SlmscaleError(f"{source}: column '{col}' must hold finite positive numbers; rows {rows} do not")
        n = df["n_params"].to_numpy(dtype=float)
        d = df["tokens"].to_numpy(dtype=float)
        unique = df["unique_tokens"].to_numpy(dtype=float) if "unique_tokens" in df.columns else d.copy()
        unique = np.where(np.isfinite(unique) & (unique > 0), np.minimum(unique, d), d)
        loss = df["loss"].to_numpy(dtype=float)
        run_ids = [str(r) for r in df["run_id"]] if "run_id" in df.columns else [f"row{i}" for i in range(len(df))]
        keep = kept_mask(loss, exclude_highest_loss)
        excluded = [r for r, k in zip(run_ids, keep) if not k]
        return cls(n[keep], d[keep], unique[keep], loss[keep], [r for r, k in zip(run_ids, keep) if k], excluded,
                   other_lr)

    def __len__(self) -> int:
        return len(self.loss)


def _lse3(u1, u2, u3, with_shares: bool = False):
    """log(e^u1 + e^u2 + e^u3) elementwise (and the softmax shares); 3-way, so spelled out (faster than
    stacking for torch.logsumexp on these small trailing dimensions)."""
    m = torch.maximum(torch.maximum(u1, u2), u3)
    x1, x2, x3 = torch.exp(u1 - m), torch.exp(u2 - m), torch.exp(u3 - m)
    total = x1 + x2 + x3
    out = m + torch.log(total)
    if not with_shares:
        return out
    return out, (x1 / total, x2 / total, x3 / total)


def _chinchilla_log_pred(theta: torch.Tensor, log_n, log_d, log_u) -> torch.Tensor:
    """(S, p) parameters -> (S, n) predicted log losses."""
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
    return _lse3(a - alpha * log_n, b - beta * log_d, e)


def _log_effective(log_unique, log_total, log_r_star):
    """log(U + U·R*·(1 − exp(−R/R*))) with R = total/U − 1; the ratio is clamped so exp() cannot overflow."""
    r_star = torch.exp(log_r_star)
    repeats = torch.expm1((log_total - log_unique).clamp(0.0, 30.0))
    return log_unique + torch.log1p(r_star * -torch.expm1(-repeats / r_star))


def _data_constrained_log_pred(theta: torch.Tensor, log_n, log_d, log_u) -> torch.Tensor:
    a, b, e, alpha, beta, log_rn, log_rd = (theta[:, i : i + 1] for i in range(7))
    # U_N = min(N, N_opt(U_D)) with N_opt(D) = G^(1+β/α) D^(β/α) from the current parameters. α, β are
    # clamped here only: grid starts at α = 0 would otherwise make the allocation rule undefined.
    al, be = alpha.clamp_min(1e-3), beta.clamp_min(1e-3)
    log_g = (torch.log(al) + a - torch.log(be) - b) / (al + be)
    log_n_opt = (1.0 + be / al) * log_g + (be / al) * log_u
    log_u_n = torch.minimum(log_n.expand_as(log_n_opt), log_n_opt)
    log_n_eff = _log_effective(log_u_n, log_n, log_rn)
    log_d_eff = _log_effective(log_u, log_d, log_rd)
    return _lse3(a - alpha * log_n_eff, b - beta * log_d_eff, e)


class LogLossResiduals:
    """residuals(theta (S, p)) = log L_i − log L̂_i(θ_s), shape (S, n), for one form and one set of runs."""

    def __init__(self, form: str, data: FitData, device: torch.device):
        as_t = lambda x: torch.as_tensor(np.log(x), dtype=torch.float64, device=device)  # noqa: E731
        self.form = form
        self.log_n, self.log_d, self.log_u, self.y = (as_t(x) for x in (data.n, data.d, data.unique_tokens, data.loss))
        self._log_pred = _chinchilla_log_pred if form == "chinchilla" else _data_constrained_log_pred
        if form != "chinchilla":
            self.jacobian = None  # forward-mode autodiff (batched_newton.forward_jacobian)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return self.y - self._log_pred(theta, self.log_n, self.log_d, self.log_u)

    def jacobian(self, theta: torch.Tensor):
        """Analytic Jacobian of the Chinchilla form: the hot path of every fit, ~10x cheaper than autodiff.

        log L̂ = LSE(u), u = (a − α log N, b − β log D, e), so ∂ log L̂ / ∂θ = softmax(u) chained through u.
        """
        a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
        pred, (s_n, s_d, s_e) = _lse3(a - alpha * self.log_n, b - beta * self.log_d, e, with_shares=True)
        jac = torch.stack([s_n, s_d, s_e.expand_as(s_n), -s_n * self.log_n, -s_d * self.log_d], dim=2)
        return self.y - pred, -jac


def make_residuals(form: str, data: FitData, device: torch.device) -> LogLossResiduals:
    return LogLossResiduals(form, data, device)


def theta_to_params(theta: np.ndarray, form: str, source: str = "") -> ScalingParams:
    a, b, e, alpha, beta = (float(x) for x in theta[:5])
    extra = {}
    if form == "data-constrained":
        extra = dict(R_N_star=float(np.exp(theta[5])), R_D_star=float(np.exp(theta[6])))
    return ScalingParams(math.exp(e), math.exp(a), math.exp(b), alpha, beta, source=source, **extra)


@dataclass
class FitResult:
    params: ScalingParams
    objective: float  # Huber sum at the optimum
    theta: np.ndarray  # (p,) optimum in the optimiser's parametrisation (a, b, e, α, β[, log R*])
    local_optima: np.ndarray  # (M, p) best distinct optima of the grid, used to warm-start bootstrap refits
    config: FitConfig
    n_runs: int
    run_ids: list[str]
    excluded_run_ids: list[str]
    n_starts: int
    n_converged: int
    iterations: int
    seconds: float
    other_lr_run_ids: list[str] = field(default_factory=list)  # runs of a point at other than its best peak LR

    def to_dict(self) -> dict:
        out = self.params.to_dict()
        out.update(
            form=self.config.form,
            huber_delta=self.config.delta,
            objective=self.objective,
            n_runs=self.n_runs,
            excluded_run_ids=self.excluded_run_ids,
            other_lr_run_ids=self.other_lr_run_ids,
            n_starts=self.n_starts,
            n_converged=self.n_converged,
            grid=self.config.grid,
            code_version=code_version(),
        )
        out.pop("source", None)
        return out


def _distinct_best(theta: np.ndarray, values: np.ndarray, limit: int = 16) -> np.ndarray:
    order = np.argsort(values)
    seen, picked = set(), []
    for i in order:
        if not np.isfinite(values[i]):
            break
        key = tuple(np.round(theta[i], 3))
        if key not in seen:
            seen.add(key)
            picked.append(theta[i])
        if len(picked) == limit:
            break
    return np.array(picked)


def check_enough_runs(n_runs: int, config: FitConfig, source: str) -> None:
    if n_runs < config.n_params:
        raise SlmscaleError(
            f"{source}: {n_runs} run(s) left to fit (after excluding {config.exclude_highest_loss}) but the "
            f"{config.form} form has {config.n_params} parameters; expected at least {config.n_params} runs"
        )


def fit_scaling_law(df: pd.DataFrame, config: FitConfig = FitConfig(), source: str = "results",
                    progress: bool = False) -> FitResult:
    """Fit L(N, D) to a results table (canonical columns, see analysis.schema.read_results)."""
    import time

    config.validate()
    data = FitData.from_frame(df, config.exclude_highest_loss, source)
    check_enough_runs(len(data), config, source)
    if config.form == "data-constrained" and not (data.d > data.unique_tokens * (1 + 1e-9)).any():
        raise SlmscaleError(
            f"{source}: the data-constrained form needs runs that repeat data (tokens > unique_tokens, "
            f"i.e. epochs > 1) to identify R_D*; none of the {len(data)} runs does. Use --form chinchilla"
        )
    device = config.torch_device()
    start = time.perf_counter()
    residuals = make_residuals(config.form, data, device)
    grid = config.initial_grid()
    if config.form == "data-constrained":
        # Two stages: the whole grid in the cheap Chinchilla form (analytic Jacobian) finds the basins of
        # (a, b, e, α, β); their distinct optima, crossed with a few R_N*, R_D* values, start the 7-parameter fit.
        stage1 = fit_scaling_law(df, replace(config, form="chinchilla"), source, progress)
        grid = with_r_star_starts(stage1.local_optima, config.r_star_values)
    theta0 = torch.as_tensor(grid, dtype=torch.float64, device=device)
    weights = torch.ones(len(theta0), len(data), dtype=torch.float64, device=device)
    with cpu_threads(config.cpu_threads if device.type == "cpu" else None):
        result = minimize_batched(residuals, theta0, weights, config.delta, max_iter=config.max_iter,
                                  desc=f"fit {config.form}" if progress else None)
    values = result.value.cpu().numpy()
    theta = result.theta.cpu().numpy()
    usable = np.where(result.converged.cpu().numpy() & np.isfinite(values), values, np.inf)
    if not np.isfinite(usable).any():  # nothing converged: fall back to the best finite point
        usable = np.where(np.isfinite(values), values, np.inf)
    if not np.isfinite(usable).any():
        raise SlmscaleError(f"{source}: the fit diverged from every initialisation (non-finite objective)")
    best = int(np.argmin(usable))
    return FitResult(
        params=theta_to_params(theta[best], config.form, source=f"fit of {source}"),
        objective=float(values[best]),
        theta=theta[best],
        local_optima=_distinct_best(theta, usable),
        config=config,
        n_runs=len(data),
        run_ids=data.run_ids,
        excluded_run_ids=data.excluded_run_ids,
        n_starts=len(theta0),
        n_converged=int(result.converged.sum()),
        iterations=result.iterations,
        seconds=time.perf_counter() - start,
        other_lr_run_ids=data.other_lr_run_ids,
    )
