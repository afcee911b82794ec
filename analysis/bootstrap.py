"""Bootstrap confidence intervals for the fitted parameters and for N_opt / D_opt.

Runs are resampled with replacement (a seeded numpy Generator, so a seed reproduces the intervals
exactly). A resample is a vector of per-run counts, i.e. per-run weights for the same objective, so all
B replicates are refitted in ONE batched minimisation: each replicate restarts from the distinct local
optima of the full-grid fit (its basins), not from the whole grid.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from slmscale.analysis.batched_newton import cpu_threads, minimize_batched
from slmscale.analysis.fit import FitData, FitResult, make_residuals, theta_to_params
from slmscale.analysis.optimal import closed_form_optimal
from slmscale.analysis.params import ScalingParams
from slmscale.errors import SlmscaleError

__all__ = ["BootstrapResult", "bootstrap_fit", "refit_with_weights", "percentile_band", "PARAM_KEYS"]

PARAM_KEYS = ("E", "A", "B", "alpha", "beta")


def percentile_band(values: np.ndarray, level: float, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Central `level` percentile interval of `values`, ignoring NaN replicates (a replicate without an optimum).
    Where every replicate is NaN the interval is NaN, which is the answer, not a warning."""
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        lo, hi = np.nanpercentile(values, [tail, 100.0 - tail], axis=axis)
    return lo, hi


@dataclass
class BootstrapResult:
    params: list[ScalingParams]  # one per replicate
    level: float
    seed: int
    n_boot: int

    def samples(self, key: str) -> np.ndarray:
        return np.array([getattr(p, key) for p in self.params], dtype=float)

    def interval(self, values: np.ndarray) -> list[float]:
        lo, hi = percentile_band(values, self.level)
        return [float(lo), float(hi)]

    def ci(self) -> dict[str, list[float]]:
        keys = PARAM_KEYS + (("R_N_star", "R_D_star") if self.params[0].data_constrained else ())
        return {k: self.interval(self.samples(k)) for k in keys}

    def optimal_samples(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """(B, len(compute)) arrays of N_opt and D_opt, one row per replicate."""
        rows = [closed_form_optimal(compute, p) for p in self.params]
        return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])

    def optimal_ci(self, compute: float) -> dict[str, list[float]]:
        n, d = self.optimal_samples([compute])
        return {"N_opt": self.interval(n[:, 0]), "D_opt": self.interval(d[:, 0])}


def refit_with_weights(data: FitData, fit: FitResult, weights: np.ndarray, progress: str | None = None) -> list[ScalingParams]:
    """Refit `fit`'s form to the same runs under each row of per-run `weights` (R, n), all in one batched
    minimisation, every row restarting from the distinct local optima of `fit` (its basins).

    A bootstrap resample is a row of counts; a cross-validation fold is a row of 0/1 (0 = held out).
    """
    config = fit.config
    device = config.torch_device()
    starts = fit.local_optima if len(fit.local_optima) else fit.theta[None]
    m, n_rows = len(starts), len(weights)
    theta0 = torch.as_tensor(np.tile(starts, (n_rows, 1)), dtype=torch.float64, device=device)
    w = torch.as_tensor(np.repeat(np.asarray(weights, dtype=float), m, axis=0), dtype=torch.float64, device=device)
    with cpu_threads(config.cpu_threads if device.type == "cpu" else None):
        result = minimize_batched(make_residuals(config.form, data, device), theta0, w, config.delta,
                                  max_iter=config.max_iter, desc=progress)
    values = result.value.cpu().numpy().reshape(n_rows, m)
    values = np.where(np.isfinite(values), values, np.inf)
    thetas = result.theta.cpu().numpy().reshape(n_rows, m, -1)
    best = thetas[np.arange(n_rows), values.argmin(1)]
    return [theta_to_params(t, config.form, source=f"refit {i}") for i, t in enumerate(best)]


def bootstrap_fit(df: pd.DataFrame, fit: FitResult, n_boot: int = 200, seed: int = 0, level: float = 0.95,
                  source: str = "results", progress: bool = False) -> BootstrapResult:
    """Refit `n_boot` resamples of the runs `fit` used (same form, δ and exclusions)."""
    if n_boot < 2:
        raise SlmscaleError(f"--bootstrap: expected at least 2 resamples, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise SlmscaleError(f"--ci: expected a confidence level in (0, 1), got {level}")
    data = FitData.from_frame(df, fit.config.exclude_highest_loss, source)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(data), len(data)), minlength=len(data)) for _ in range(n_boot)])
    params = refit_with_weights(data, fit, counts, "bootstrap" if progress else None)
    params = [replace(p, source=f"bootstrap {i}") for i, p in enumerate(params)]
    return BootstrapResult(params=params, level=level, seed=seed, n_boot=n_boot)
