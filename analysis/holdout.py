"""Can the law be trusted? Fit on the small runs, predict the large ones, and count how often the truth lands
inside the prediction interval.

- Holdout extrapolation: the top fraction of runs by compute (or every run above a compute) is held out; the
  law is fitted to the rest from the full grid of initialisations, exactly as `fit_scaling_law` fits a table.
- Prediction interval of a held-out loss: bootstrap over the training runs (parameter uncertainty) plus a
  training residual drawn at random (run-to-run noise), both in log loss, the space the law is fitted in.
- Leave-one-budget-out and leave-largest-size-out over the grid's structure (`analysis.grid`): every fold is
  a 0/1 weight vector, so all folds are refitted in one batched minimisation from the full fit's basins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from slmscale.analysis.bootstrap import bootstrap_fit, percentile_band, refit_with_weights
from slmscale.analysis.fit import (
    FitConfig,
    FitData,
    FitResult,
    best_lr_rows,
    check_enough_runs,
    fit_scaling_law,
    kept_mask,
)
from slmscale.analysis.grid import budget_groups, group_centres, size_groups
from slmscale.analysis.params import ScalingParams
from slmscale.errors import SlmscaleError

__all__ = ["HoldoutSpec", "HoldoutResult", "holdout_mask", "holdout_evaluation", "prediction_errors", "structure_cv",
           "used_runs"]

RESIDUAL_DRAWS = 25  # residual-noise draws per bootstrap replicate for the prediction interval


@dataclass(frozen=True)
class HoldoutSpec:
    """Which runs to hold out: the top `fraction` by compute, or every run with compute above `above`."""

    fraction: float | None = None
    above: float | None = None

    def validate(self) -> HoldoutSpec:
        if (self.fraction is None) == (self.above is None):
            raise SlmscaleError("--holdout-fraction / --holdout-above: give exactly one of them")
        if self.fraction is not None and not (0.0 < self.fraction < 1.0):
            raise SlmscaleError(f"--holdout-fraction: expected a fraction in (0, 1), e.g. 0.2, got {self.fraction}")
        if self.above is not None and not (math.isfinite(self.above) and self.above > 0):
            raise SlmscaleError(f"--holdout-above: expected a positive FLOP count, got {self.above}")
        return self

    def describe(self) -> str:
        return (f"top {self.fraction:.0%} of runs by compute" if self.fraction is not None
                else f"runs above C = {self.above:.3g} FLOPs")


def used_runs(df: pd.DataFrame, config: FitConfig) -> pd.DataFrame:
    """The rows a fit with `config` sees (each point at its best LR, the highest-loss exclusions removed; as
    FitData.from_frame), index reset."""
    df = best_lr_rows(df)[0]
    keep = kept_mask(pd.to_numeric(df["loss"], errors="coerce").to_numpy(float), config.exclude_highest_loss)
    return df[keep].reset_index(drop=True)


def holdout_mask(flops, spec: HoldoutSpec, source: str = "results") -> np.ndarray:
    """True for held-out runs: the ceil(F·n) runs of highest compute, or those with compute > C."""
    spec.validate()
    flops = np.asarray(flops, dtype=float)
    held = np.zeros(len(flops), dtype=bool)
    if spec.fraction is not None:
        held[np.argsort(-flops, kind="stable")[: math.ceil(spec.fraction * len(flops) - 1e-9)]] = True
    else:
        held = flops > spec.above
    if not held.any():
        raise SlmscaleError(f"{source}: {spec.describe()} holds out no run; the largest compute is {flops.max():.3g}")
    if held.all():
        raise SlmscaleError(f"{source}: {spec.describe()} holds out every run; the smallest compute is {flops.min():.3g}")
    return held


def prediction_errors(predicted, measured, lo=None, hi=None) -> dict:
    """Percent errors of predicted losses: mean absolute (MAPE), max, signed bias (+ = over-predicted);
    with an interval, its coverage (fraction of measured values inside, 0–1)."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    signed = (predicted - measured) / measured * 100.0
    out = {"n": int(len(measured)), "mape": float(np.mean(np.abs(signed))), "max_ape": float(np.max(np.abs(signed))),
           "bias": float(np.mean(signed))}
    if lo is not None:
        out["coverage"] = float(np.mean((np.asarray(lo) <= measured) & (measured <= np.asarray(hi))))
    return out


def _log_predict(params: ScalingParams, runs: pd.DataFrame) -> np.ndarray:
    unique = runs["unique_tokens"].to_numpy(float) if params.data_constrained and "unique_tokens" in runs else None
    return np.log(params.loss(runs["n_params"].to_numpy(float), runs["tokens"].to_numpy(float), unique))


@dataclass
class HoldoutResult:
    spec: HoldoutSpec
    fit: FitResult  # fitted to the training runs only
    runs: pd.DataFrame  # held-out runs: measured and predicted loss, interval, percent error
    train: pd.DataFrame  # training runs with their in-sample predictions
    level: float
    n_boot: int
    structure: dict  # leave-one-budget-out / leave-largest-size-out (see structure_cv)

    def summary(self) -> dict:
        r = self.runs
        out = prediction_errors(r["predicted"], r["loss"], r["lo"], r["hi"])
        out.update(
            held_out=self.spec.describe(), n_train=int(len(self.train)), level=self.level, n_boot=self.n_boot,
            min_heldout_compute=float(r["flops"].min()), max_train_compute=float(self.train["flops"].max()),
            fit={k: v for k, v in self.fit.params.to_dict().items() if k != "source"},
            runs=[{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                  for row in r[["run_id", "n_params", "tokens", "flops", "loss", "predicted", "lo", "hi", "ape"]]
                  .to_dict("records")],
            structure=self.structure,
        )
        return out


def holdout_evaluation(df: pd.DataFrame, config: FitConfig, spec: HoldoutSpec, n_boot: int = 100, seed: int = 0,
                       level: float = 0.95, source: str = "results", progress: bool = False,
                       full_fit: FitResult | None = None) -> HoldoutResult:
    """Fit on the runs below the held-out compute, predict the held-out losses with intervals (module doc).

    `full_fit`, the same config's fit of the whole table when the caller has one, seeds the structural folds.
    """
    config.validate()
    used = used_runs(df, config)  # `--exclude-highest-loss` first: the same outliers as the full fit drops
    held = holdout_mask(used["flops"].to_numpy(float), spec, source)
    train, test = used[~held].reset_index(drop=True), used[held].reset_index(drop=True)
    train_config = replace(config, exclude_highest_loss=0)
    check_enough_runs(len(train), train_config, f"{source} (training runs of the holdout)")
    fit = fit_scaling_law(train, train_config, source=f"{source} (training runs)", progress=progress)
    boot = bootstrap_fit(train, fit, n_boot, seed, level, source=source, progress=progress)
    residuals = np.log(train["loss"].to_numpy(float)) - _log_predict(fit.params, train)
    rng = np.random.default_rng(seed + 1)
    replicate_preds = np.stack([_log_predict(p, test) for p in boot.params])  # (B, m)
    noise = rng.choice(residuals, size=(len(boot.params), RESIDUAL_DRAWS, len(test)))
    samples = np.exp(replicate_preds[:, None, :] + noise).reshape(-1, len(test))
    lo, hi = percentile_band(samples, level, axis=0)
    predicted = np.exp(_log_predict(fit.params, test))
    runs = test.assign(predicted=predicted, lo=lo, hi=hi,
                       ape=np.abs(predicted - test["loss"]) / test["loss"] * 100.0,
                       inside=(lo <= test["loss"]) & (test["loss"] <= hi))
    train = train.assign(predicted=np.exp(_log_predict(fit.params, train)))
    full = full_fit or fit_scaling_law(df, config, source=source)
    return HoldoutResult(spec, fit, runs, train, level, n_boot, structure_cv(used, full, source))


def structure_cv(used: pd.DataFrame, fit: FitResult, source: str = "results") -> dict:
    """Leave-one-budget-out and leave-largest-size-out errors of `fit`'s law over the runs it used.

    Each fold refits the law without the left-out group (from `fit`'s local optima, all folds batched) and
    predicts that group's losses. A fold whose remaining runs cannot pin the law (fewer runs than
    parameters) is skipped.
    """
    data = FitData.from_frame(used, 0, source)
    budgets = budget_groups(used["flops"].to_numpy(float))
    sizes = size_groups(used["n_params"].to_numpy(float))
    folds: list[tuple[str, float, np.ndarray]] = []
    if budgets.max() >= 2:  # at least three budgets, so a fold leaves two to fit
        centres = group_centres(used["flops"], budgets)
        folds += [("budget", float(centres[g]), budgets == g) for g in range(budgets.max() + 1)]
    if sizes.max() >= 1:
        largest = sizes == sizes.max()
        folds.append(("largest_size", float(group_centres(used["n_params"], sizes)[-1]), largest))
    folds = [f for f in folds if (~f[2]).sum() >= fit.config.n_params]
    out: dict = {}
    if not folds:
        return out
    weights = np.stack([(~held).astype(float) for _, _, held in folds])
    params = refit_with_weights(data, fit, weights)
    budget_rows = []
    for (kind, centre, held), p in zip(folds, params):
        runs = used[held]
        errors = prediction_errors(np.exp(_log_predict(p, runs)), runs["loss"])
        if kind == "budget":
            budget_rows.append({"budget": centre, **errors})
        else:
            out["leave_largest_size_out"] = {"n_params": centre, **errors}
    if budget_rows:
        n = np.array([r["n"] for r in budget_rows])
        out["leave_one_budget_out"] = {
            "folds": budget_rows,
            "mape": float(np.sum(n * np.array([r["mape"] for r in budget_rows])) / n.sum()),
            "max_ape": float(max(r["max_ape"] for r in budget_rows)),
            "bias": float(np.sum(n * np.array([r["bias"] for r in budget_rows])) / n.sum()),
        }
    return out
