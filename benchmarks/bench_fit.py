"""Batched Chinchilla fit vs Epoch's per-start scipy L-BFGS-B loop, side by side in one process.

Data: the 245 Chinchilla runs extracted by Epoch (analysis/data), 5 highest-loss runs dropped, Huber δ = 1e-3,
the 4,500-start Hoffmann/Epoch grid. Prints both optima, both wall times and the speed ratio (goal ≥ 20×).

    .venv/bin/python benchmarks/bench_fit.py [--starts 4500] [--scipy-grad fd|analytic|both]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slmscale.analysis.fit import FitConfig, FitData, epoch_grid, fit_scaling_law, theta_to_params  # noqa: E402
from slmscale.analysis.reference_fit import scipy_fit_per_start  # noqa: E402
from slmscale.analysis.schema import ColumnMap, read_results  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "analysis" / "data" / "chinchilla_epoch_svg_extracted.csv"


def describe(p) -> str:
    return f"E={p.E:.4f} A={p.A:.1f} B={p.B:.1f} alpha={p.alpha:.4f} beta={p.beta:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=4500, help="use the first N starts of an evenly strided subset of the grid")
    ap.add_argument("--scipy-grad", choices=("fd", "analytic", "both"), default="both",
                    help="fd = Epoch's exact procedure (finite-difference gradient); analytic = stronger baseline")
    args = ap.parse_args()

    df = read_results(DATA, ColumnMap(n="Model Size", flops="Training FLOP"))
    data = FitData.from_frame(df, exclude_highest_loss=5)
    grid = epoch_grid()
    if args.starts < len(grid):
        grid = grid[np.linspace(0, len(grid) - 1, args.starts).round().astype(int)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()} (the fit itself uses FitConfig.cpu_threads = {FitConfig().cpu_threads}), device {'cuda' if torch.cuda.is_available() else 'cpu'}; "
          f"{len(data)} runs, {len(grid)} starts")

    config = FitConfig(exclude_highest_loss=5)
    from slmscale.analysis import fit as fit_module

    # The batched fit uses the same starts as the scipy loop.
    original = fit_module.FitConfig.initial_grid
    fit_module.FitConfig.initial_grid = lambda self: grid
    try:
        fit_scaling_law(df.head(60), FitConfig(grid="coarse", max_iter=3))  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        ours = fit_scaling_law(df, config)
        t_ours = time.perf_counter() - t0
    finally:
        fit_module.FitConfig.initial_grid = original
    print(f"batched LM (torch): {t_ours:8.2f} s  objective {ours.objective:.10e}  {describe(ours.params)}  "
          f"({ours.n_converged}/{ours.n_starts} converged)")

    for mode in (("fd", "analytic") if args.scipy_grad == "both" else (args.scipy_grad,)):
        t0 = time.perf_counter()
        ref = scipy_fit_per_start(data, grid, 1e-3, analytic_grad=(mode == "analytic"))
        t_ref = time.perf_counter() - t0
        p = theta_to_params(ref.theta, "chinchilla")
        print(f"scipy L-BFGS-B loop ({mode:8s}): {t_ref:8.2f} s  objective {ref.objective:.10e}  {describe(p)}  "
              f"({ref.n_success}/{len(grid)} success)")
        same = abs(p.E - ours.params.E) < 2e-3 and abs(p.alpha - ours.params.alpha) < 2e-3 and abs(p.beta - ours.params.beta) < 2e-3
        print(f"  speed ratio scipy({mode}) / batched = {t_ref / t_ours:6.1f}x   same optimum: {same}   "
              f"objective difference (ours - scipy) = {ours.objective - ref.objective:+.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
