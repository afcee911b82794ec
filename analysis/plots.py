"""Figures of a scaling study (matplotlib, Agg backend, PNG). Each function writes one file and returns its path.

- loss vs tokens, one colour per model size, with the fitted L(N, D) drawn through each size's runs
- isoFLOP profiles: loss vs N at fixed compute, fitted curve and its minimum
- N_opt and D_opt vs compute: the fit, its bootstrap band, and published presets for comparison
- downstream score vs compute with the fitted power law and its confidence band
- training curves: loss vs tokens seen during each run, coloured by model size
- holdout: predicted vs measured loss of held-out runs with prediction intervals
- residuals of the fitted law against log N, log D and log C
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from slmscale.analysis.bootstrap import percentile_band  # noqa: E402
from slmscale.analysis.grid import budget_groups  # noqa: E402
from slmscale.analysis.optimal import closed_form_optimal  # noqa: E402
from slmscale.analysis.params import ScalingParams  # noqa: E402
from slmscale.io import atomic_path  # noqa: E402

__all__ = ["plot_loss_vs_tokens", "plot_isoflops", "plot_optimal_vs_compute", "plot_downstream", "plot_training_curves",
           "plot_holdout", "plot_residuals"]

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 10.5, "axes.titlesize": 12, "axes.titleweight": "bold",
    "axes.labelsize": 11, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.25, "grid.linestyle": "-", "legend.frameon": False, "legend.fontsize": 9,
}
PRESET_COLOURS = {"speech": "#d62728", "text": "#1f77b4", "hoffmann": "#7f7f7f", "epoch": "#2ca02c"}


def _human(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _size_groups(n: np.ndarray, max_groups: int = 8) -> np.ndarray:
    """Group model sizes for colouring: each distinct N, or log-spaced bins when there are many (e.g. Chinchilla)."""
    distinct = np.unique(n)
    if len(distinct) <= max_groups:
        return n.copy()
    edges = np.logspace(np.log10(n.min()), np.log10(n.max()) * (1 + 1e-12), max_groups + 1)
    which = np.clip(np.digitize(n, edges) - 1, 0, max_groups - 1)
    centres = np.array([np.exp(np.log(n[which == i]).mean()) if (which == i).any() else np.nan for i in range(max_groups)])
    return centres[which]


def plot_loss_vs_tokens(df: pd.DataFrame, params: ScalingParams | None, path: Path, title: str = "Loss vs training tokens") -> Path:
    n, d, loss = (df[c].to_numpy(float) for c in ("n_params", "tokens", "loss"))
    unique = df["unique_tokens"].to_numpy(float) if "unique_tokens" in df else d
    groups = _size_groups(n)
    norm = LogNorm(vmin=groups.min(), vmax=max(groups.max(), groups.min() * 1.01))
    cmap = plt.get_cmap("viridis")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for g in np.unique(groups):
            sel = groups == g
            colour = cmap(norm(g))
            ax.scatter(d[sel], loss[sel], s=22, color=colour, edgecolor="white", linewidth=0.4, zorder=3)
            if params is not None:
                span = np.logspace(np.log10(d[sel].min()) - 0.15, np.log10(d[sel].max()) + 0.15, 120)
                # Multi-epoch runs: draw the curve for this size's smallest unique-token budget.
                u = np.minimum(np.min(unique[sel]), span) if params.data_constrained else None
                ax.plot(span, params.loss(g, span, unique_tokens=u), color=colour, lw=1.6, alpha=0.9, zorder=2)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title(title)
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        cbar = fig.colorbar(sm, ax=ax, pad=0.02)
        cbar.set_label("model parameters N")
        if params is not None:
            ax.text(0.98, 0.97, f"fit: L = {params.E:.3g} + {params.A:.3g}/N^{params.alpha:.3f} + {params.B:.3g}/D^{params.beta:.3f}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=9,
                    bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="#cccccc"))
        return _save(fig, path)


def _budget_groups(flops: np.ndarray, max_groups: int = 6) -> list[tuple[float, np.ndarray]]:
    """Runs that share a compute budget (analysis.grid), largest groups first, at most max_groups."""
    labels = budget_groups(flops)
    groups = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    groups = [g for g in groups if len(g) >= 3] or groups
    groups = sorted(groups, key=len, reverse=True)[:max_groups]
    return sorted(((float(np.exp(np.log(flops[g]).mean())), g) for g in groups), key=lambda t: t[0])


def plot_isoflops(df: pd.DataFrame, params: ScalingParams, path: Path, budgets=None) -> Path:
    """Loss vs N along fixed compute budgets (runs binned by compute), with the fitted profile and its minimum."""
    n, c, loss = (df[col].to_numpy(float) for col in ("n_params", "flops", "loss"))
    groups = _budget_groups(c) if budgets is None else [(float(b), np.array([], dtype=int)) for b in budgets]
    cmap = plt.get_cmap("plasma")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for j, (budget, members) in enumerate(groups):
            colour = cmap(0.1 + 0.75 * j / max(len(groups) - 1, 1))
            n_opt, d_opt = (float(x) for x in closed_form_optimal(budget, params))
            ends = [x for x in (n[members].min() if len(members) else None, n[members].max() if len(members) else None,
                                n_opt) if x is not None and np.isfinite(x)]
            if not ends:
                continue
            span = np.logspace(np.log10(min(ends) / 3), np.log10(max(ends) * 3), 200)
            ax.plot(span, params.loss(span, budget / (6 * span)), color=colour, lw=1.8, label=f"C = {budget:.2g} FLOPs")
            if np.isfinite(n_opt):
                ax.scatter([n_opt], [params.loss(n_opt, d_opt)], marker="*", s=140, color=colour, edgecolor="black",
                           linewidth=0.6, zorder=4)
            if len(members):
                ax.scatter(n[members], loss[members], s=24, color=colour, edgecolor="white", linewidth=0.4, zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("model parameters N")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title("IsoFLOP profiles (★ = fitted compute-optimal size)" if params.has_optimum
                     else "IsoFLOP profiles (no compute-optimal size: see the fit's exponents)")
        ax.legend(loc="upper right")
        return _save(fig, path)


def plot_optimal_vs_compute(params: ScalingParams, path: Path, compute_range=(1e17, 1e24), bootstrap=None,
                            presets: dict[str, ScalingParams] | None = None, observed: pd.DataFrame | None = None,
                            level: float = 0.95, label: str = "this fit") -> Path:
    """N_opt(C) and D_opt(C) on log-log axes: the fit, its bootstrap band, presets, observed runs."""
    compute = np.logspace(np.log10(compute_range[0]), np.log10(compute_range[1]), 80)
    n_opt, d_opt = closed_form_optimal(compute, params)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
        for ax, values, name, col in ((axes[0], n_opt, "N_opt (parameters)", 0), (axes[1], d_opt, "D_opt (tokens)", 1)):
            if bootstrap is not None:
                lo, hi = percentile_band(bootstrap.optimal_samples(compute)[col], level, axis=0)
                ax.fill_between(compute, lo, hi, color="black", alpha=0.15, lw=0, label=f"{level:.0%} bootstrap CI")
            if params.has_optimum:
                ax.plot(compute, values, color="black", lw=2.2, label=label)
            else:
                ax.text(0.98, 0.04, f"{label}: no optimum (α = {params.alpha:.3g}, β = {params.beta:.3g})",
                        transform=ax.transAxes, ha="right", va="bottom", fontsize=9, color="#b00")
            for name_p, p in (presets or {}).items():
                ax.plot(compute, closed_form_optimal(compute, p)[col], lw=1.4, ls="--",
                        color=PRESET_COLOURS.get(name_p, None), label=f"preset {name_p}")
            if observed is not None and len(observed):
                ax.scatter(observed["flops"], observed["n_params" if col == 0 else "tokens"], s=10, color="#999999",
                           alpha=0.6, label="trained runs (for scale)", zorder=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("compute C (FLOPs)")
            ax.set_ylabel(name)
            ax.set_title(name.split(" ")[0] + " vs compute")
        axes[0].legend(loc="upper left")
        return _save(fig, path)


def plot_downstream(compute, score, law, path: Path, metric: str, level: float = 0.95,
                    reference_gammas: dict[str, float] | None = None) -> Path:
    """Score vs compute (log-log), the fitted Q = k·C^γ with its confidence band, and reference slopes."""
    from scipy import stats

    x, y = np.log(np.asarray(compute, float)), np.log(np.asarray(score, float))
    grid = np.linspace(x.min() - 0.3, x.max() + 0.3, 100)
    fitted = np.log(law.k) + law.gamma * grid
    resid = y - (np.log(law.k) + law.gamma * x)
    dof = max(len(x) - 2, 1)
    s = np.sqrt(np.sum(resid**2) / dof)
    sxx = np.sum((x - x.mean()) ** 2)
    half = stats.t.ppf(0.5 + level / 2, dof) * s * np.sqrt(1 / len(x) + (grid - x.mean()) ** 2 / sxx)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.6))
        ax.fill_between(np.exp(grid), np.exp(fitted - half), np.exp(fitted + half), color="#444444", alpha=0.18, lw=0,
                        label=f"{level:.0%} CI of the mean")
        ax.plot(np.exp(grid), np.exp(fitted), color="#222222", lw=2.2,
                label=f"fit: Q = {law.k:.3g}·C^{law.gamma:.3f}  (R² {law.r2:.2f})")
        for name, g in (reference_gammas or {}).items():
            # Same anchor (the fit at the median compute), the other modality's slope.
            anchor = np.median(x)
            ref = np.log(law.k) + law.gamma * anchor + g * (grid - anchor)
            ax.plot(np.exp(grid), np.exp(ref), ls="--", lw=1.3, color=PRESET_COLOURS.get(name, "#555555"),
                    label=f"γ = {g:.3f} ({name}, paper Table 4)")
        ax.scatter(np.exp(x), np.exp(y), s=30, color="#ff7f0e", edgecolor="white", linewidth=0.5, zorder=3, label="runs")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs compute")
        ax.legend(loc="lower right")
        return _save(fig, path)


def plot_training_curves(curves: Mapping[str, pd.DataFrame], sizes: Mapping[str, float], path: str | Path,
                         column: str = "val_loss", title: str = "Training curves") -> Path:
    """`curves[run_id]` has columns `tokens` and `column`; `sizes[run_id]` is N (the colour)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        distinct = sorted(set(sizes.values()))
        cmap = plt.get_cmap("viridis")
        colour = {n: cmap(i / max(1, len(distinct) - 1) * 0.9) for i, n in enumerate(distinct)}
        labelled: set[float] = set()
        for run_id, df in sorted(curves.items(), key=lambda kv: (sizes[kv[0]], kv[0])):
            df = df[np.isfinite(pd.to_numeric(df[column], errors="coerce"))]
            if df.empty:
                continue
            n = sizes[run_id]
            ax.plot(df["tokens"], df[column], color=colour[n], lw=1.4, alpha=0.85,
                    label=f"N = {_human(n)}" if n not in labelled else None)
            ax.plot(df["tokens"].iloc[-1], df[column].iloc[-1], "o", color=colour[n], ms=4)
            labelled.add(n)
        ax.set_xscale("log")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(column.replace("_", " ") + " (nats/unit)")
        ax.set_title(title)
        ax.legend(title="model size", loc="upper right")
        return _save(fig, Path(path))


def plot_holdout(holdout, path: Path) -> Path:
    """Predicted vs measured loss: training runs in grey, held-out runs with their prediction intervals."""
    runs, train = holdout.runs, holdout.train
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
        ax.scatter(train["loss"], train["predicted"], s=12, color="#aaaaaa", label=f"training runs ({len(train)})", zorder=2)
        inside = runs["inside"].to_numpy(bool)
        for mask, colour, label in ((inside, "#1f77b4", "held out, inside interval"),
                                    (~inside, "#d62728", "held out, outside interval")):
            if mask.any():
                r = runs[mask]
                ax.errorbar(r["loss"], r["predicted"], yerr=[r["predicted"] - r["lo"], r["hi"] - r["predicted"]],
                            fmt="o", ms=4, color=colour, ecolor=colour, elinewidth=1, capsize=2, label=label, zorder=3)
        every = np.concatenate([train["loss"], runs["loss"], runs["lo"], runs["hi"]])
        lo, hi = every.min() * 0.98, every.max() * 1.02
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="predicted = measured")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("measured loss")
        ax.set_ylabel("predicted loss (fit on the other runs)")
        summary = holdout.summary()
        ax.set_title(f"Holdout: MAPE {summary['mape']:.2f} %, {holdout.level:.0%} interval coverage "
                     f"{summary['coverage']:.0%}")
        ax.legend(loc="upper left")
        return _save(fig, path)


def plot_residuals(frame: pd.DataFrame, path: Path) -> Path:
    """Residuals log L − log L̂ against log N, log D and log C (a trend = the form misses something there)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
        for ax, axis, label in zip(axes, ("log_n", "log_d", "log_c"), ("parameters N", "tokens D", "compute C")):
            x = np.exp(frame[axis].to_numpy(float))
            ax.scatter(x, frame["residual"], s=14, color="#1f77b4", alpha=0.75)
            ax.axhline(0.0, color="black", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel(label)
        axes[0].set_ylabel("residual log L − log L̂")
        fig.suptitle("Residuals of the fitted law", fontweight="bold")
        return _save(fig, path)
