"""Downstream laws: score Q = k·C^γ against compute, Q linear in the LM loss, and compute multipliers.

Cuervo & Marxer (2024, §5, Table 4) fit Q ∝ C^γ per metric for speech LMs and for text LMs (Pythia). If
modality 2 gains a score factor r from F× more compute (r = F^γ₂), modality 1 needs F^(γ₂/γ₁)× more
compute for the same gain: the "compute multiplier" (≈ 10^3 for sBLIMP, speech vs text, per decade of
text compute: the paper's "up to three orders of magnitude").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from slmscale.errors import SlmscaleError
from slmscale.io import read_json

__all__ = ["PowerLawFit", "LinearFit", "GAMMA_TABLE4", "metric_family", "fit_power_law", "fit_linear",
           "compute_multiplier", "reference_gamma", "downstream_analysis"]

# Paper Table 4: γ_q of Q ∝ C^γ. Text = Pythia (BLIMP, Topic/Spoken StoryCloze on text), speech = this paper.
GAMMA_TABLE4 = {
    "sblimp": {"text": 0.066, "speech": 0.021},
    "tsc": {"text": 0.039, "speech": 0.025},
    "ssc": {"text": 0.046, "speech": 0.017},
}
TABLE4_SOURCE = "Cuervo & Marxer 2024, Table 4 (text: Pythia; speech: this paper)"


def metric_family(metric: str) -> str | None:
    """Map a results-table metric column to its Table 4 row (sblimp_macro, sblimp_pair -> sblimp)."""
    name = metric.lower()
    for family in GAMMA_TABLE4:
        if name == family or name.startswith(family + "_"):
            return family
    return None


@dataclass(frozen=True)
class PowerLawFit:
    gamma: float
    k: float
    gamma_ci: tuple[float, float]
    k_ci: tuple[float, float]
    r2: float
    n: int
    level: float

    def predict(self, compute):
        return self.k * np.asarray(compute, dtype=float) ** self.gamma


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    r2: float
    n: int


def _t(level: float, dof: int) -> float:
    return float(stats.t.ppf(0.5 + level / 2.0, dof)) if dof > 0 else float("nan")


def fit_power_law(compute, score, level: float = 0.95) -> PowerLawFit:
    """Least squares of log Q on log C; CIs from the t distribution of the slope/intercept estimates."""
    x, y = np.log(np.asarray(compute, dtype=float)), np.log(np.asarray(score, dtype=float))
    if len(x) < 3:
        raise SlmscaleError(f"downstream fit: need at least 3 runs with the metric, got {len(x)}")
    if np.ptp(x) == 0:
        raise SlmscaleError("downstream fit: every run has the same compute; expected at least two budgets")
    res = stats.linregress(x, y)
    t = _t(level, len(x) - 2)
    g_ci = (res.slope - t * res.stderr, res.slope + t * res.stderr)
    k_ci = (math.exp(res.intercept - t * res.intercept_stderr), math.exp(res.intercept + t * res.intercept_stderr))
    return PowerLawFit(float(res.slope), float(math.exp(res.intercept)), tuple(map(float, g_ci)),
                       tuple(map(float, k_ci)), float(res.rvalue**2), len(x), level)


def fit_linear(loss, score, level: float = 0.95) -> LinearFit:
    x, y = np.asarray(loss, dtype=float), np.asarray(score, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise SlmscaleError("downstream fit: the linear fit of the metric against loss needs ≥ 3 runs with distinct losses")
    res = stats.linregress(x, y)
    t = _t(level, len(x) - 2)
    return LinearFit(float(res.slope), float(res.intercept),
                     (float(res.slope - t * res.stderr), float(res.slope + t * res.stderr)), float(res.rvalue**2), len(x))


def compute_multiplier(gamma_1: float, gamma_2: float, compute_factor: float = 10.0) -> float:
    """Compute factor modality 1 needs for the score gain modality 2 gets from `compute_factor`× compute."""
    if not (gamma_1 > 0 and gamma_2 > 0):
        raise SlmscaleError(f"compute multiplier: both exponents must be positive, got γ₁={gamma_1}, γ₂={gamma_2}")
    return float(compute_factor ** (gamma_2 / gamma_1))


def reference_gamma(versus: str, metric: str) -> tuple[float, str]:
    """γ of the comparison modality: a Table 4 column ('text' / 'speech') or a JSON file.

    The JSON file holds {"gamma": g} or {"<metric>": g} or {"<metric>": {"gamma": g}}.
    """
    if versus in ("text", "speech"):
        family = metric_family(metric)
        if family is None:
            raise SlmscaleError(
                f"--versus {versus}: paper Table 4 has γ for {sorted(GAMMA_TABLE4)} (sblimp_*, tsc, ssc), not for "
                f"metric '{metric}'; pass --versus FILE.json with a 'gamma' key instead"
            )
        return GAMMA_TABLE4[family][versus], f"{TABLE4_SOURCE}, {family}, {versus}"
    path = Path(versus)
    obj = read_json(path, what="--versus file")
    if isinstance(obj, dict) and metric in obj:
        obj = obj[metric]
    if isinstance(obj, (int, float)):
        gamma = obj
    elif isinstance(obj, dict) and "gamma" in obj:
        gamma = obj["gamma"]
    else:
        raise SlmscaleError(f"{path}: missing key 'gamma' (or '{metric}'); expected {{\"gamma\": 0.02}} or {{\"{metric}\": 0.02}}")
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise SlmscaleError(f"{path}: 'gamma' must be a positive number, got {gamma!r}")
    return float(gamma), str(path)


def metric_rows(df: pd.DataFrame, metric: str, source: str = "results") -> pd.DataFrame:
    """Rows that have the metric (runs not yet evaluated are skipped), validated as positive scores."""
    if metric not in df.columns:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        raise SlmscaleError(f"{source}: missing metric column '{metric}'; numeric columns: {numeric}")
    values = pd.to_numeric(df[metric], errors="coerce")
    rows = df.assign(**{metric: values})[values.notna()]
    bad = rows[~(rows[metric] > 0) | ~np.isfinite(rows[metric])]
    if len(bad):
        raise SlmscaleError(f"{source}: column '{metric}' must hold positive scores for Q = k·C^γ; "
                            f"rows {bad.index[:5].tolist()} have {bad[metric].head(5).tolist()}")
    for col in ("flops", "loss"):
        v = pd.to_numeric(rows[col], errors="coerce") if col in rows else None
        if v is None or (~np.isfinite(v) | (v <= 0)).any():
            raise SlmscaleError(f"{source}: column '{col}' must hold finite positive numbers for the downstream fit")
    return rows


def downstream_analysis(df: pd.DataFrame, metric: str, versus: str | None = None, level: float = 0.95,
                        compute_factor: float = 10.0, source: str = "results") -> dict:
    """Fit Q = k·C^γ and Q = slope·loss + intercept for one metric; compare with another modality's γ."""
    rows = metric_rows(df, metric, source)
    law = fit_power_law(rows["flops"], rows[metric], level)
    out = {
        "metric": metric,
        "gamma": law.gamma,
        "k": law.k,
        "ci": {"gamma": list(law.gamma_ci), "k": list(law.k_ci), "level": level},
        "r2": law.r2,
        "n_runs": law.n,
    }
    if rows["loss"].nunique() >= 3:
        lin = fit_linear(rows["loss"], rows[metric], level)
        out["versus_loss"] = {"slope": lin.slope, "intercept": lin.intercept, "slope_ci": list(lin.slope_ci), "r2": lin.r2}
    family = metric_family(metric)
    if family:
        out["paper_gamma"] = dict(GAMMA_TABLE4[family])
    if versus is not None:
        gamma_2, where = reference_gamma(versus, metric)
        if law.gamma <= 0:
            raise SlmscaleError(f"{source}: the fitted γ for '{metric}' is {law.gamma:.4g} ≤ 0 (the score does not "
                                "grow with compute), so no compute multiplier exists")
        out["versus"] = {"gamma": gamma_2, "source": where, "compute_factor": compute_factor}
        out["compute_multiplier"] = compute_multiplier(law.gamma, gamma_2, compute_factor)
        lo, hi = law.gamma_ci
        if lo > 0:
            out["ci"]["compute_multiplier"] = [compute_multiplier(hi, gamma_2, compute_factor),
                                               compute_multiplier(lo, gamma_2, compute_factor)]
    return out
