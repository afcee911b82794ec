"""`make demo` for the analysis stage: refit the shipped Chinchilla data and compare with the paper's presets.

Until the end-to-end pipeline exists, `slmscale demo` calls `demo_report(out_dir)`: it fits the 245 runs
Epoch extracted from Hoffmann et al.'s Figure 4 (5 highest-loss runs dropped, as Epoch did), bootstraps
the fit, and writes report.md / report.html with the figures, next to the speech/text/Hoffmann/Epoch presets.
"""
from __future__ import annotations

from pathlib import Path

from .fit import FitConfig
from .schema import ColumnMap, read_results

__all__ = ["CHINCHILLA_CSV", "demo_report"]

CHINCHILLA_CSV = Path(__file__).resolve().parent / "data" / "chinchilla_epoch_svg_extracted.csv"


def demo_report(out_dir: str | Path, n_boot: int = 40, seed: int = 0, grid: str = "epoch", progress: bool = True) -> dict:
    """Write the analysis demo report into out_dir; returns build_report's summary (paths, fit, CIs)."""
    from .optimal import compute_optimal
    from .params import PRESETS
    from .report import Report, build_report

    df = read_results(CHINCHILLA_CSV, ColumnMap(n="Model Size", flops="Training FLOP"))
    report = Report(
        "slmscale demo: Chinchilla refit and the paper's scaling presets",
        "Fits L(N, D) = E + A/N^α + B/D^β to the Chinchilla runs (Epoch's SVG extraction of Hoffmann et al. 2022, "
        "Fig. 4) and compares compute-optimal allocations with the speech (Cuervo & Marxer 2024) and text presets.",
    )
    sec = report.section("Presets")
    sec.text("Published parameter sets shipped with `slmscale optimal --preset NAME`.")
    sec.table([{"preset": k, **p.to_dict()} for k, p in PRESETS.items()],
              ["preset", "E", "A", "B", "alpha", "beta", "source"])
    rows = []
    for name, p in PRESETS.items():
        for c in (1e20, 1e22):
            a = compute_optimal(c, p)
            rows.append({"preset": name, "compute": c, "N_opt": a.N_opt, "D_opt": a.D_opt, "D/N": a.D_opt / a.N_opt})
    sec.table(rows)
    sec.text("Speech LMs on HuBERT units (α = 0.25, β = 0.24) scale both N and D more slowly than text, and the "
             "compute-optimal D/N ratio is far larger than Chinchilla's ~20.")
    return build_report(df, out_dir, results_path=CHINCHILLA_CSV, fit_config=FitConfig(exclude_highest_loss=5, grid=grid),
                        n_boot=n_boot, seed=seed, budgets=[1e19, 1e21, 1e23], report=report, progress=progress)
