"""Compute-optimal allocation of a FLOP budget C = 6 N D between parameters N and tokens D.

Chinchilla form (and the data-constrained form when data is not repeated), closed form (Hoffmann et al.,
Appendix D): G = (αA / βB)^(1/(α+β)), N_opt = G (C/6)^(β/(α+β)), D_opt = G⁻¹ (C/6)^(α/(α+β)).
With a cap U on unique tokens the data-constrained loss is minimised numerically over N (D = C / 6N,
repeating the U unique tokens D/U times).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from slmscale.analysis.params import ScalingParams
from slmscale.errors import SlmscaleError

__all__ = ["Allocation", "closed_form_optimal", "compute_optimal"]


@dataclass(frozen=True)
class Allocation:
    compute: float
    N_opt: float
    D_opt: float
    loss: float
    method: str  # "closed-form" or "numeric (unique tokens capped at U)"
    unique_tokens: float | None = None

    def to_dict(self) -> dict:
        out = {"compute": self.compute, "N_opt": self.N_opt, "D_opt": self.D_opt, "loss": self.loss,
               "method": self.method}
        if self.unique_tokens is not None:
            out["unique_tokens"] = self.unique_tokens
            out["epochs"] = self.D_opt / self.unique_tokens
        return out


def closed_form_optimal(compute, params: ScalingParams):
    """(N_opt, D_opt) arrays for budget(s) C under C = 6 N D; NaN where the parameters have no optimum
    (alpha or beta <= 0), so bootstrap bands and plots skip such replicates instead of taking complex powers."""
    c = np.asarray(compute, dtype=float) / 6.0
    if not params.has_optimum:
        return np.full_like(c, np.nan), np.full_like(c, np.nan)
    al, be = params.alpha, params.beta
    g = (al * params.A / (be * params.B)) ** (1.0 / (al + be))
    return g * c ** (be / (al + be)), c ** (al / (al + be)) / g


def _check_compute(compute: float) -> None:
    if not (isinstance(compute, (int, float)) and math.isfinite(compute) and compute > 0):
        raise SlmscaleError(f"--compute: expected a finite positive FLOP budget, got {compute!r}")


def compute_optimal(compute: float, params: ScalingParams, unique_tokens: float | None = None) -> Allocation:
    """The loss-minimising (N, D) for a budget C, optionally with at most `unique_tokens` unique tokens."""
    _check_compute(compute)
    if not params.has_optimum:
        raise SlmscaleError(f"{params.source or 'params'}: {params.why_no_optimum()}")
    n_cf, d_cf = (float(x) for x in closed_form_optimal(compute, params))
    if unique_tokens is None or d_cf <= unique_tokens:
        loss = float(params.loss(n_cf, d_cf))
        return Allocation(compute, n_cf, d_cf, loss, "closed-form", unique_tokens)
    if not (math.isfinite(unique_tokens) and unique_tokens > 0):
        raise SlmscaleError(f"--unique-tokens: expected a finite positive token count, got {unique_tokens!r}")
    if not params.data_constrained:
        raise SlmscaleError(
            "--unique-tokens needs data-constrained parameters (keys R_N_star, R_D_star: a preset such as "
            "'speech' or 'text', or a `fit --form data-constrained` result); the Chinchilla form has no "
            "model of repeated data"
        )

    def loss_at(log_n: float) -> float:
        n = math.exp(log_n)
        d = compute / (6.0 * n)
        return float(params.loss(n, d, unique_tokens=min(unique_tokens, d)))

    # A dense scan over ±6 decades around the unconstrained optimum, then a bounded refinement: the
    # capped loss has a kink at D = U, so a local search alone could stop on the wrong side of it.
    grid = np.linspace(math.log(n_cf) - 6 * math.log(10), math.log(n_cf) + 6 * math.log(10), 2401)
    values = np.array([loss_at(x) for x in grid])
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    log_n = best.x if best.fun <= values[i] else grid[i]
    n = math.exp(log_n)
    return Allocation(compute, n, compute / (6.0 * n), loss_at(log_n), "numeric (unique tokens capped at U)", unique_tokens)
