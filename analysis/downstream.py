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
           "compute_multiplier", "log10_compute_multiplier", "format_multiplier", "reference_gamma",
           "metric_rows", "two_step_prediction", "downstream_analysis"]

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


# Above this the multiplier is no longer a float64: reported as infinite, with its exact log10 beside it.
MAX_LOG10_MULTIPLIER = math.log10(np.finfo(float).max)


def check_compute_factor(compute_factor: float) -> float:
    if not (isinstance(compute_factor, (int, float)) and math.isfinite(compute_factor) and compute_factor > 1):
        raise SlmscaleError(f"--compute-factor: expected a finite compute factor > 1 (e.g. 10 for ten times the "
                            f"compute), got {compute_factor!r}")
    return float(compute_factor)


def check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise SlmscaleError(f"--ci: expected a confidence level in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def log10_compute_multiplier(gamma_1: float, gamma_2: float, compute_factor: float = 10.0) -> float:
    """log10 of the compute factor modality 1 needs for the score gain modality 2 gets from `compute_factor`×.

    Kept in log space: a metric that barely moves (γ₁ ≈ 1e-4, tiny models at chance) needs 10^660×, which
    no float holds.
    """
    check_compute_factor(compute_factor)
    if not (gamma_1 > 0 and gamma_2 > 0):
        raise SlmscaleError(f"compute multiplier: both exponents must be positive, got γ₁={gamma_1}, γ₂={gamma_2}")
    return float(gamma_2 / gamma_1 * math.log10(compute_factor))


def multiplier_from_log10(log10_multiplier: float) -> float:
    """10^x as a float, or inf beyond float64's range (the JSON output turns inf into null)."""
    return 10.0**log10_multiplier if log10_multiplier < MAX_LOG10_MULTIPLIER else math.inf


def format_multiplier(log10_multiplier: float) -> str:
    """'1,412×' for printable multipliers, '10^660× (> 1e308×)' for those beyond float64."""
    if log10_multiplier < 15:
        return f"{10.0**log10_multiplier:,.4g}×"
    suffix = " (> 1e308×)" if log10_multiplier >= MAX_LOG10_MULTIPLIER else ""
    return f"10^{log10_multiplier:.4g}×{suffix}"


def compute_multiplier(gamma_1: float, gamma_2: float, compute_factor: float = 10.0) -> float:
    """Compute factor modality 1 needs for the score gain modality 2 gets from `compute_factor`× compute
    (inf when it exceeds float64; see `log10_compute_multiplier`)."""
    return multiplier_from_log10(log10_compute_multiplier(gamma_1, gamma_2, compute_factor))


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


def _positive(df: pd.DataFrame, col: str) -> np.ndarray:
    """Boolean mask of rows whose `col` is a finite positive number (False everywhere when the column is absent)."""
    if col not in df.columns:
        return np.zeros(len(df), dtype=bool)
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    return np.isfinite(values) & (values > 0)


def metric_rows(df: pd.DataFrame, metric: str, source: str = "results") -> pd.DataFrame:
    """Rows that have the metric (runs not yet evaluated are skipped), validated as positive scores with a
    positive training compute. Loss, N and D are not required (a table of released scores may lack them)."""
    if metric not in df.columns:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        raise SlmscaleError(f"{source}: missing metric column '{metric}'; numeric columns: {numeric}")
    values = pd.to_numeric(df[metric], errors="coerce")
    rows = df.assign(**{metric: values})[values.notna()]
    if rows.empty:
        raise SlmscaleError(f"{source}: column '{metric}' has no numeric values; expected scores of evaluated runs")
    bad = rows[~(rows[metric] > 0) | ~np.isfinite(rows[metric])]
    if len(bad):
        raise SlmscaleError(f"{source}: column '{metric}' must hold positive scores for Q = k·C^γ; "
                            f"rows {bad.index[:5].tolist()} have {bad[metric].head(5).tolist()}")
    if not _positive(rows, "flops").all():
        raise SlmscaleError(f"{source}: column 'flops' must hold finite positive numbers for the downstream fit")
    if rows[metric].nunique() < 2:
        raise SlmscaleError(f"{source}: column '{metric}' is constant ({rows[metric].iloc[0]:g} for every run); "
                            "expected scores that vary with compute")
    return rows


def two_step_prediction(df: pd.DataFrame, rows: pd.DataFrame, metric: str, loss_params=None,
                        level: float = 0.95, at_compute: float | None = None, source: str = "results") -> dict:
    """Predict the score in two steps: loss from the L(N, D) law, then score from the linear map score ~ loss.

    Step 2 is fitted on measured losses. `loss_params` is a fitted law; without one, L(N, D) is fitted here
    (Chinchilla form, coarse grid) to every run of `df` with N, D and loss. Errors are in-sample absolute
    percentage errors of the predicted score, next to those of the direct law Q = k·C^γ, so one sees whether
    going through the loss helps. With `at_compute`, both predict the score of the compute-optimal model.
    """
    from slmscale.analysis.fit import FitConfig, fit_scaling_law
    from slmscale.analysis.optimal import compute_optimal

    if loss_params is None:
        with_loss = df[_positive(df, "n_params") & _positive(df, "tokens") & _positive(df, "loss")]
        loss_params = fit_scaling_law(with_loss, FitConfig(grid="coarse"), source=source).params
    lin = fit_linear(rows["loss"], rows[metric], level)
    law = fit_power_law(rows["flops"], rows[metric], level)
    unique = rows["unique_tokens"] if "unique_tokens" in rows and loss_params.data_constrained else None
    predicted_loss = loss_params.loss(rows["n_params"].to_numpy(float), rows["tokens"].to_numpy(float), unique)
    measured = rows[metric].to_numpy(float)
    two_step = lin.slope * np.asarray(predicted_loss, dtype=float) + lin.intercept
    direct = law.predict(rows["flops"].to_numpy(float))
    out = {
        "loss_law": {k: v for k, v in loss_params.to_dict().items() if k != "source"},
        "slope": lin.slope, "intercept": lin.intercept,
        "mape": float(np.mean(np.abs(two_step - measured) / measured) * 100.0),
        "direct_mape": float(np.mean(np.abs(direct - measured) / measured) * 100.0),
    }
    if at_compute is not None and loss_params.has_optimum:
        alloc = compute_optimal(at_compute, loss_params)
        out["at_compute"] = {"compute": at_compute, "N_opt": alloc.N_opt, "D_opt": alloc.D_opt, "loss": alloc.loss,
                             "two_step": lin.slope * alloc.loss + lin.intercept,
                             "direct": float(law.predict(at_compute))}
    return out


def downstream_analysis(df: pd.DataFrame, metric: str, versus: str | None = None, level: float = 0.95,
                        compute_factor: float = 10.0, source: str = "results", loss_params=None,
                        at_compute: float | None = None) -> dict:
    """Fit Q = k·C^γ (and, where losses exist, Q linear in loss and the two-step loss → score prediction)
    for one metric; compare with another modality's γ.

    Needs only compute and the metric; `loss_params` (a fitted L(N, D)) is used by the two-step prediction.
    """
    check_level(level)
    check_compute_factor(compute_factor)
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
    if at_compute is not None:
        out["at_compute"] = {"compute": at_compute, "score": float(law.predict(at_compute))}
    with_loss = rows[_positive(rows, "loss")]
    if len(with_loss) >= 3 and with_loss["loss"].nunique() >= 3:
        lin = fit_linear(with_loss["loss"], with_loss[metric], level)
        out["versus_loss"] = {"slope": lin.slope, "intercept": lin.intercept, "slope_ci": list(lin.slope_ci), "r2": lin.r2}
        sized = with_loss[_positive(with_loss, "n_params") & _positive(with_loss, "tokens")]
        if len(sized) == len(with_loss):
            try:
                out["two_step"] = two_step_prediction(df, sized, metric, loss_params, level, at_compute, source)
            except SlmscaleError as exc:  # too few runs for L(N, D): the direct law stands alone
                out["two_step_skipped"] = str(exc)
    family = metric_family(metric)
    if family:
        out["paper_gamma"] = dict(GAMMA_TABLE4[family])
    if versus is not None:
        gamma_2, where = reference_gamma(versus, metric)
        if law.gamma <= 0:
            raise SlmscaleError(f"{source}: the fitted γ for '{metric}' is {law.gamma:.4g} ≤ 0 (the score does not "
                                "grow with compute), so no compute multiplier exists")
        log10_m = log10_compute_multiplier(law.gamma, gamma_2, compute_factor)
        out["versus"] = {"gamma": gamma_2, "source": where, "compute_factor": compute_factor}
        out["compute_multiplier"] = multiplier_from_log10(log10_m)  # inf (JSON null) beyond float64
        out["log10_compute_multiplier"] = log10_m
        lo, hi = law.gamma_ci
        if lo > 0:
            log10_ci = [log10_compute_multiplier(hi, gamma_2, compute_factor),
                        log10_compute_multiplier(lo, gamma_2, compute_factor)]
            out["ci"]["compute_multiplier"] = [multiplier_from_log10(x) for x in log10_ci]
            out["ci"]["log10_compute_multiplier"] = log10_ci
    return out
