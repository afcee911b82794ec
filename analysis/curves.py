"""Training curves: loss vs tokens seen during each run, one line per run, coloured by model size.

Every point of a scaling curve is a separate completed run (paper: its own cosine schedule); this figure
shows the whole trajectory of each run so a reader can see under-training or instability at a glance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import STYLE, _human, _save  # noqa: E402

__all__ = ["plot_training_curves"]


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
