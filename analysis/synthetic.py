"""Synthetic results tables generated from known scaling-law parameters (for tests, demos and sanity checks).

A fit should recover the parameters a table was generated from; this module makes such tables with
controlled multiplicative noise, optional multi-epoch runs, and optional downstream metric columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from slmscale.analysis.params import ScalingParams

__all__ = ["synthetic_results"]


def synthetic_results(params: ScalingParams, sizes=(2e7, 6e7, 2e8, 6e8, 2e9), ratios=(2, 4, 8, 10, 20, 32, 64, 100),
                      noise: float = 0.005, seed: int = 0, epochs=(1,), unique_tokens: float | None = None,
                      metrics: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """One run per (size, tokens-per-parameter ratio, epochs): loss = L(N, D, U)·exp(noise·ε), ε ~ N(0, 1).

    epochs > 1 repeat `unique_tokens` (default: D / epochs) unique tokens. `metrics` maps a column name to
    (k, γ) and adds Q = k·C^γ·exp(noise·ε) for each run.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for ratio in ratios:
            for ep in epochs:
                d = float(n * ratio)
                u = d / ep if unique_tokens is None else min(unique_tokens, d)
                rows.append({"run_id": f"n{n:.3g}-r{ratio}-e{ep}", "model": f"{n / 1e6:.0f}M", "n_params": float(n),
                             "tokens": d, "unique_tokens": u, "epochs": d / u, "flops": 6.0 * n * d})
    df = pd.DataFrame(rows)
    clean = params.loss(df["n_params"], df["tokens"], unique_tokens=df["unique_tokens"] if params.data_constrained else None)
    df["loss"] = clean * np.exp(noise * rng.standard_normal(len(df)))
    for name, (k, gamma) in (metrics or {}).items():
        df[name] = k * df["flops"] ** gamma * np.exp(noise * rng.standard_normal(len(df)))
    return df
