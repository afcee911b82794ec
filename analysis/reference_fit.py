"""The reference method the batched fitter is checked against: one scipy L-BFGS-B call per start.

This is the Epoch replication's procedure (Besiroglu et al. 2024, `data_analysis.ipynb`): for every point of
the initialisation grid run `scipy.optimize.minimize(huber_objective, x0, method="L-BFGS-B")`, keep the
lowest objective among the calls that report success. Slow by design (a Python loop over thousands of
starts); used by tests on a subset of starts and by `benchmarks/bench_fit.py` on the full grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from slmscale.analysis.fit import FitData

__all__ = ["ScipyFit", "scipy_fit_per_start"]


@dataclass
class ScipyFit:
    theta: np.ndarray  # (5,) best (a, b, e, α, β)
    objective: float
    n_success: int


def _objective(theta, log_n, log_d, y, delta, with_grad):
    a, b, e, alpha, beta = theta
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    pred = logsumexp(u, axis=0)
    r = y - pred
    clipped = np.clip(r, -delta, delta)
    value = float(np.sum(clipped * (r - 0.5 * clipped)))
    if not with_grad:
        return value
    share = np.exp(u - pred)
    grad = -np.array([
        np.sum(clipped * share[0]), np.sum(clipped * share[1]), np.sum(clipped * share[2]),
        -np.sum(clipped * share[0] * log_n), -np.sum(clipped * share[1] * log_d),
    ])
    return value, grad


def scipy_fit_per_start(data: FitData, starts: np.ndarray, delta: float = 1e-3, analytic_grad: bool = False) -> ScipyFit:
    """Chinchilla-form Huber fit, one L-BFGS-B minimisation per start (Epoch's loop).

    analytic_grad=False reproduces Epoch exactly (scipy's finite-difference gradient); True passes the
    analytic gradient, a stronger baseline.
    """
    log_n, log_d, y = np.log(data.n), np.log(data.d), np.log(data.loss)
    best, best_f, n_success = None, np.inf, 0
    with np.errstate(over="ignore", invalid="ignore"):
        for x0 in starts:
            result = minimize(_objective, x0, args=(log_n, log_d, y, delta, analytic_grad),
                              jac=analytic_grad, method="L-BFGS-B")
            n_success += bool(result.success)
            if result.success and result.fun < best_f:
                best, best_f = result.x, float(result.fun)
    return ScipyFit(theta=best, objective=best_f, n_success=n_success)
