"""Diagnostics of a fitted law: residuals against log N, log D and log C, and warnings for designs that
cannot pin the law down.

A trend of the residuals along one axis means the functional form misses something there (e.g. the
largest models doing better than the law says) — the extrapolation the law is wanted for goes along
exactly those axes. The design warnings are about the grid, not the fit: they hold for any law fitted
to that table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from slmscale.analysis.grid import budget_groups, size_groups
from slmscale.analysis.params import ScalingParams

__all__ = ["residual_frame", "residual_trends", "design_warnings", "MIN_SIZES", "MIN_TOKEN_COUNTS", "MIN_BUDGETS"]

MIN_SIZES = 4  # distinct model sizes to pin α (and the size term's curvature)
MIN_TOKEN_COUNTS = 4  # distinct token counts to pin β
MIN_BUDGETS = 3  # isoFLOP budgets for Approach 2's exponent
COLLINEAR = 0.95  # |corr(log N, log D)| above which α and β trade off against each other
WIDE = 0.5  # an exponent's interval wider than half its value is flagged


def residual_frame(runs: pd.DataFrame, params: ScalingParams) -> pd.DataFrame:
    """Per run: log N, log D, log C and the residual log L − log L̂ (positive: the run did worse than the law)."""
    n, d, c = (runs[col].to_numpy(float) for col in ("n_params", "tokens", "flops"))
    unique = runs["unique_tokens"].to_numpy(float) if params.data_constrained and "unique_tokens" in runs else None
    residual = np.log(runs["loss"].to_numpy(float)) - np.log(params.loss(n, d, unique))
    return pd.DataFrame({"run_id": runs["run_id"].astype(str).to_numpy(), "log_n": np.log(n), "log_d": np.log(d),
                         "log_c": np.log(c), "residual": residual})


def residual_trends(frame: pd.DataFrame) -> dict:
    """RMS of the residuals and the least-squares slope of residual on each of log N, log D, log C
    (per e-fold; 0 when the axis does not vary)."""
    out = {"rms": float(np.sqrt(np.mean(frame["residual"] ** 2)))}
    for axis in ("log_n", "log_d", "log_c"):
        x = frame[axis].to_numpy(float)
        out[f"slope_vs_{axis}"] = float(np.polyfit(x, frame["residual"], 1)[0]) if np.ptp(x) > 0 else 0.0
    return out


def design_warnings(runs: pd.DataFrame, ci: dict[str, list[float]] | None = None,
                    params: ScalingParams | None = None, level: float = 0.95) -> list[str]:
    """Plain-language warnings about a grid (and, given bootstrap intervals `ci`, about wide exponents)."""
    warnings = []
    n, d, c = (runs[col].to_numpy(float) for col in ("n_params", "tokens", "flops"))
    n_sizes = int(size_groups(n).max() + 1)
    n_tokens = int(size_groups(d).max() + 1)
    n_budgets = int(budget_groups(c).max() + 1)
    if n_sizes < MIN_SIZES:
        warnings.append(f"only {n_sizes} distinct model size(s); expected at least {MIN_SIZES} to pin the size "
                        "exponent α")
    if n_tokens < MIN_TOKEN_COUNTS:
        warnings.append(f"only {n_tokens} distinct token count(s); expected at least {MIN_TOKEN_COUNTS} to pin the "
                        "data exponent β")
    if n_budgets < MIN_BUDGETS:
        warnings.append(f"only {n_budgets} compute budget(s); expected at least {MIN_BUDGETS} for the allocation "
                        "exponents (isoFLOP approach)")
    configs = pd.DataFrame({"n": size_groups(n), "d": size_groups(d)})
    if not configs.duplicated().any():
        warnings.append("every (N, D) configuration was trained once (no repeated seeds): run-to-run noise cannot be "
                        "told apart from misfit, and prediction intervals treat all residual as noise")
    if np.ptp(np.log(n)) > 0 and np.ptp(np.log(d)) > 0:
        r = float(np.corrcoef(np.log(n), np.log(d))[0, 1])
        if abs(r) > COLLINEAR:
            shape = ("as on a single isoFLOP budget" if r < 0 else "as with a fixed tokens-per-parameter ratio")
            warnings.append(f"log N and log D are nearly collinear (r = {r:+.3f}), {shape}: the size and data terms "
                            "trade off against each other and α, β are not separately identified")
    else:
        warnings.append("N or D takes a single value: the law's other term is not identified")
    if ci and params is not None:
        for key in ("alpha", "beta"):
            lo, hi = ci.get(key, (np.nan, np.nan))
            value = getattr(params, key)
            if np.isfinite([lo, hi]).all() and value > 0 and (hi - lo) > WIDE * value:
                warnings.append(f"{key} = {value:.3g} has a wide {level:.0%} interval [{lo:.3g}, {hi:.3g}] (wider than "
                                f"{WIDE:.0%} of its value): allocations extrapolated from it are uncertain")
    return warnings
