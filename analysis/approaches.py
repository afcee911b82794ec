"""The compute-optimal allocation by Hoffmann et al.'s three approaches, side by side.

Every approach ends in the same shape, N_opt = k·C^a, with D_opt = C / (6 N_opt) (so b = 1 − a):
- Approach 1 (final-loss envelope): the runs on the lower envelope of loss against compute (no run of at
  most the same compute has a lower loss); regress log N on log C over them. Hoffmann et al. take the
  envelope of whole training curves; a results table has one final loss per run, so this is its analogue
  and needs at least three envelope runs at distinct compute.
- Approach 2 (isoFLOP parabolas): runs grouped by budget (`analysis.grid`); in each budget with ≥ 3 model
  sizes a parabola of loss in log N, fitted robustly (scipy `least_squares`, soft-L1 loss scaled by the
  residuals' MAD, so one diverged run cannot drag the vertex); its vertex is N_opt(C). Vertices outside the
  sampled sizes (more than half the budget's log-span beyond them) are extrapolations and are dropped.
- Approach 3 (parametric): a = β/(α+β) and N_opt(C) from the fitted L(N, D) (`analysis.optimal`).
Intervals are percentile bootstraps: Approaches 1 and 2 resample runs (within each budget for Approach 2),
Approach 3 reuses the fit's bootstrap replicates. The comparison flags approaches whose intervals for a, or for
N_opt at the asked budget, do not overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from slmscale.analysis.bootstrap import percentile_band
from slmscale.analysis.grid import budget_groups, group_centres, size_groups
from slmscale.analysis.optimal import closed_form_optimal
from slmscale.errors import SlmscaleError

__all__ = ["AllocationLaw", "Parabola", "isoflop_parabolas", "approach1", "approach2", "approach3", "compare_approaches"]

MIN_SIZES_PER_BUDGET = 3


@dataclass
class AllocationLaw:
    """N_opt = exp(log_k)·C^a from one approach, with bootstrap replicates of (a, log_k)."""

    approach: str
    a: float
    log_k: float
    a_samples: np.ndarray
    log_k_samples: np.ndarray
    n_points: int  # budgets (Approach 2), envelope runs (1) or runs (3) the law rests on
    note: str = ""
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  # (compute, N_opt) the law was regressed on

    def n_opt(self, compute) -> np.ndarray:
        return np.exp(self.log_k + self.a * np.log(np.asarray(compute, dtype=float)))

    def row(self, compute: float, level: float) -> dict:
        """One line of the comparison table at budget `compute`."""
        a_lo, a_hi = percentile_band(self.a_samples, level)
        n_samples = np.exp(self.log_k_samples + self.a_samples * math.log(compute))
        n_lo, n_hi = percentile_band(n_samples, level)
        n_opt = float(self.n_opt(compute))
        return {"approach": self.approach, "a": self.a, "a_ci": [float(a_lo), float(a_hi)],
                "b": 1.0 - self.a, "b_ci": [float(1.0 - a_hi), float(1.0 - a_lo)],
                "N_opt": n_opt, "N_opt_ci": [float(n_lo), float(n_hi)],
                "D_opt": compute / (6.0 * n_opt), "D_opt_ci": [compute / (6.0 * float(n_hi)), compute / (6.0 * float(n_lo))],
                "n_points": self.n_points, "note": self.note}


def _regress(log_c: np.ndarray, log_n: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of log N on log C; NaN when fewer than two distinct budgets."""
    if len(log_c) < 2 or np.ptp(log_c) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(log_c, log_n, 1)
    return float(slope), float(intercept)


# ---------------------------------------------------------------------------------------------- Approach 1


def envelope(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of runs no cheaper-or-equal run beats: the lower envelope of loss against compute."""
    order = np.lexsort((loss, flops))
    best, picked = math.inf, []
    for i in order:
        if loss[i] < best:
            best = loss[i]
            picked.append(i)
    return np.array(picked, dtype=int)


def _approach1_point(n, c, loss) -> tuple[float, float, np.ndarray]:
    idx = envelope(c, loss)
    slope, intercept = _regress(np.log(c[idx]), np.log(n[idx]))
    return slope, intercept, idx


def approach1(df: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> AllocationLaw:
    n, c, loss = (df[col].to_numpy(float) for col in ("n_params", "flops", "loss"))
    a, log_k, idx = _approach1_point(n, c, loss)
    if len(np.unique(c[idx])) < 3:
        raise SlmscaleError(f"approach 1: the loss-vs-compute envelope has {len(idx)} run(s) at "
                            f"{len(np.unique(c[idx]))} distinct compute(s); expected at least 3")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(n), len(n))
        samples.append(_approach1_point(n[pick], c[pick], loss[pick])[:2])
    a_s, k_s = np.array(samples).T
    points = pd.DataFrame({"compute": c[idx], "N_opt": n[idx]})
    return AllocationLaw("1: loss envelope", a, log_k, a_s, k_s, len(idx),
                         "final-loss analogue of Hoffmann et al.'s training-curve envelope", points)


# ---------------------------------------------------------------------------------------------- Approach 2


@dataclass(frozen=True)
class Parabola:
    budget: float  # geometric mean compute of the budget's runs
    n_runs: int
    log_n_opt: float  # vertex; NaN when the parabola opens downwards or the vertex lies far outside the runs
    coef: tuple[float, float, float]  # loss = c0 + c1·x + c2·x², x = log N − centre
    centre: float
    why_not: str = ""


def _robust_parabola(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(c0, c1, c2) of y ≈ c0 + c1 x + c2 x² minimising scipy's soft-L1 loss, scaled by the residuals' MAD."""
    design = np.stack([np.ones_like(x), x, x**2], axis=1)
    start = np.linalg.lstsq(design, y, rcond=None)[0]
    residuals = y - design @ start
    scale = 1.4826 * np.median(np.abs(residuals - np.median(residuals)))
    if not scale > 1e-9 * np.abs(y).mean():  # an exact parabola: nothing to down-weight
        return start
    fit = least_squares(lambda c: design @ c - y, start, jac=lambda c: design, loss="soft_l1", f_scale=scale)
    return fit.x


def _parabola(budget: float, log_n: np.ndarray, loss: np.ndarray) -> Parabola:
    centre = float(log_n.mean())
    x = log_n - centre
    c0, c1, c2 = (float(v) for v in _robust_parabola(x, loss))
    span = float(np.ptp(x))
    if not c2 > 0:
        return Parabola(budget, len(x), math.nan, (c0, c1, c2), centre, "opens downwards (no minimum)")
    vertex = -c1 / (2.0 * c2)
    if not (x.min() - 0.5 * span <= vertex <= x.max() + 0.5 * span):
        return Parabola(budget, len(x), math.nan, (c0, c1, c2), centre, "minimum far outside the sampled sizes")
    return Parabola(budget, len(x), centre + vertex, (c0, c1, c2), centre)


def _budget_members(df: pd.DataFrame) -> list[tuple[float, np.ndarray]]:
    """(budget, row indices) for every budget with at least MIN_SIZES_PER_BUDGET distinct model sizes."""
    c = df["flops"].to_numpy(float)
    labels = budget_groups(c)
    sizes = size_groups(df["n_params"].to_numpy(float))
    centres = group_centres(c, labels)
    return [(float(centres[g]), np.flatnonzero(labels == g)) for g in range(labels.max() + 1)
            if len(np.unique(sizes[labels == g])) >= MIN_SIZES_PER_BUDGET]


def isoflop_parabolas(df: pd.DataFrame) -> list[Parabola]:
    log_n, loss = np.log(df["n_params"].to_numpy(float)), df["loss"].to_numpy(float)
    return [_parabola(budget, log_n[idx], loss[idx]) for budget, idx in _budget_members(df)]


def _law_from_vertices(parabolas: list[Parabola]) -> tuple[float, float]:
    ok = [p for p in parabolas if np.isfinite(p.log_n_opt)]
    return _regress(np.log([p.budget for p in ok]), np.array([p.log_n_opt for p in ok]))


def approach2(df: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> AllocationLaw:
    members = _budget_members(df)
    log_n, loss = np.log(df["n_params"].to_numpy(float)), df["loss"].to_numpy(float)
    parabolas = [_parabola(budget, log_n[idx], loss[idx]) for budget, idx in members]
    usable = [p for p in parabolas if np.isfinite(p.log_n_opt)]
    if len(usable) < 2:
        raise SlmscaleError(f"approach 2: {len(usable)} budget(s) with ≥ {MIN_SIZES_PER_BUDGET} model sizes and an "
                            "isoFLOP minimum inside the sampled sizes; expected at least 2")
    a, log_k = _law_from_vertices(parabolas)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):  # resample runs within each budget, so every replicate keeps the grid's budgets
        replicate = []
        for budget, idx in members:
            pick = rng.choice(idx, len(idx))
            if len(np.unique(np.round(log_n[pick], 6))) >= MIN_SIZES_PER_BUDGET:
                replicate.append(_parabola(budget, log_n[pick], loss[pick]))
        samples.append(_law_from_vertices(replicate))
    a_s, k_s = np.array(samples).T
    dropped = [f"C = {p.budget:.2g}: {p.why_not}" for p in parabolas if not np.isfinite(p.log_n_opt)]
    note = f"{len(usable)} isoFLOP parabolas" + (f"; dropped {'; '.join(dropped)}" if dropped else "")
    points = pd.DataFrame({"compute": [p.budget for p in usable], "N_opt": np.exp([p.log_n_opt for p in usable])})
    return AllocationLaw("2: isoFLOP parabolas", a, log_k, a_s, k_s, len(usable), note, points)


# ---------------------------------------------------------------------------------------------- Approach 3


def approach3(params, boot=None, label: str = "3: parametric L(N, D)", n_runs: int = 0) -> AllocationLaw:
    """The allocation implied by fitted parameters (and their bootstrap replicates, when given)."""
    if not params.has_optimum:
        raise SlmscaleError(f"approach 3: {params.why_no_optimum()}")

    def a_and_log_k(p) -> tuple[float, float]:
        if not p.has_optimum:
            return math.nan, math.nan
        n1 = float(closed_form_optimal(1.0, p)[0])  # N_opt at C = 1 FLOP is k
        return p.beta / (p.alpha + p.beta), math.log(n1)

    a, log_k = a_and_log_k(params)
    samples = np.array([a_and_log_k(p) for p in boot.params]) if boot is not None else np.full((1, 2), np.nan)
    return AllocationLaw(label, a, log_k, samples[:, 0], samples[:, 1], n_runs,
                         "closed form of the fitted law" + ("" if boot is not None else "; no bootstrap, no interval"))


# ---------------------------------------------------------------------------------------------- comparison


def _overlap(x: list[float], y: list[float]) -> bool:
    if not all(np.isfinite(x + y)):
        return True  # no interval: no evidence of disagreement
    return x[0] <= y[1] and y[0] <= x[1]


def compare_approaches(laws: list[AllocationLaw], compute: float, level: float = 0.95) -> list[dict]:
    """One row per approach at budget `compute`; `disagrees` names the approaches whose interval of a or of
    N_opt does not overlap this one's."""
    rows = [law.row(compute, level) for law in laws]
    for row in rows:
        clashes = []
        for other in rows:
            if other is row:
                continue
            keys = [k for k in ("a", "N_opt") if not _overlap(row[f"{k}_ci"], other[f"{k}_ci"])]
            if keys:
                clashes.append(f"{other['approach'].split(':')[0]} ({', '.join(keys)})")
        row["disagrees"] = clashes
    return rows
