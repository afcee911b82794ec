"""Cosine vs warmup-stable-decay on a grid that runs on a 2-CPU machine: the same points trained both ways, the
per-point loss differences, both scaling-law fits side by side, and the compute each schedule spent.

    .venv/bin/python benchmarks/bench_wsd.py            # 3 sizes x 4 budgets, >= 100 updates per point
    .venv/bin/python benchmarks/bench_wsd.py --quick    # 3 sizes x 3 budgets, fewer bootstrap resamples

Every run is the sweep's own trial config (sweep.grid.expand_grid + sweep.trainable.train_config_for), trained
in this process one after another (trunks first, then their branches), so the only difference between the two
columns is the schedule. The goal: mean |Δloss| / loss <= 1 % and each exponent (α, β) of one fit inside the
other's bootstrap interval. It also prints each run's wall-clock overhead (evaluations + checkpoints) under
the default cadences.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def train_grid(schedule: str, args, units: Path, root: Path):
    """Train every trial of the grid with `schedule`; returns (results rows of the points, FLOPs spent, rows
    of every run incl. trunks for the overhead table)."""
    import pandas as pd

    from slmscale.models.train import train
    from slmscale.sweep.grid import grid_from_dict
    from slmscale.sweep.launch import trial_settings
    from slmscale.sweep.plan import make_plan
    from slmscale.sweep.storage import SweepStorage
    from slmscale.sweep.trainable import train_config_for

    spec = grid_from_dict({
        "name": f"bench-{schedule}", "models": args.models, "tokens": args.tokens, "seeds": [0], "units": str(units),
        "schedule": schedule, "train": {"context": 64, "tokens_per_update": 512, "lr": args.lr, "threads": args.threads},
    }, source="bench_wsd")
    storage = SweepStorage(root / schedule)
    plan = make_plan(spec, str(units))
    settings = trial_settings(spec, storage)
    rows, runs = [], []
    for trial in plan.trials:
        t0 = time.perf_counter()
        trunk = storage.run_dir(trial.trunk).path if trial.trunk else None
        cfg = train_config_for(trial.to_dict(), settings, storage.run_dir(trial.run_id).path, trunk_dir=trunk)
        if schedule == "cosine" and args.cosine_warmup:  # the warmup of this size's WSD trunk, not 1 % of the run
            cfg = cfg.model_copy(update={"warmup_steps": args.cosine_warmup[trial.model]})
        row = train(cfg)
        runs.append({"run_id": trial.run_id, "schedule": trial.schedule, "seconds": time.perf_counter() - t0,
                     "run_dir": storage.run_dir(trial.run_id).path})
        if trial.is_point:
            rows.append({**row, "run_id": trial.run_id})
        print(f"  {schedule:6} {trial.run_id:<24} loss {row['loss']:.4f}  {runs[-1]['seconds']:.1f} s", flush=True)
    return pd.DataFrame(rows).set_index("run_id"), plan.total_flops, runs


def trunk_warmups(args, units: Path) -> dict[str, int]:
    """Warmup updates of each size's WSD trunk (what every branch of that size shares)."""
    from slmscale.sweep.grid import grid_from_dict
    from slmscale.sweep.plan import make_plan

    spec = grid_from_dict({"name": "warmups", "models": args.models, "tokens": args.tokens, "seeds": [0],
                           "units": str(units), "schedule": "wsd",
                           "train": {"context": 64, "tokens_per_update": 512}}, source="bench_wsd")
    return {t.model: int(t.warmup_steps) for t in make_plan(spec, str(units)).trials if t.schedule == "constant"}


def fit_table(df, n_boot: int, budget: float) -> dict:
    from slmscale.analysis.bootstrap import bootstrap_fit
    from slmscale.analysis.fit import FitConfig, fit_scaling_law
    from slmscale.analysis.optimal import closed_form_optimal

    fit = fit_scaling_law(df.reset_index(), FitConfig(grid="coarse"), source="bench")
    boot = bootstrap_fit(df.reset_index(), fit, n_boot=n_boot, seed=0)
    n_opt, d_opt = closed_form_optimal([budget], fit.params)
    return {"params": fit.params, "ci": boot.ci(), "N_opt": float(n_opt[0]), "D_opt": float(d_opt[0]),
            "opt_ci": boot.optimal_ci(budget)}


def overhead(runs: list[dict]) -> list[tuple[str, float, float]]:
    """(run_id, wall seconds of the training session, fraction spent evaluating and checkpointing)."""
    from slmscale.models.rundir import RunDir

    out = []
    for run in runs:
        sec = RunDir(run["run_dir"]).read_final()["seconds"]
        out.append((run["run_id"], sec["wall"], (sec["validation"] + sec["checkpoints"]) / sec["wall"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 x 3 grid, 50 bootstrap resamples")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak LR (tiny models at 512 tokens per update)")
    ap.add_argument("--boot", type=int, default=None, help="bootstrap resamples (default 200, --quick 50)")
    ap.add_argument("--same-warmup", action="store_true",
                    help="give the cosine runs the warmup of their size's WSD trunk (1 %% of the longest run) instead "
                    "of the paper's 1 %% of each run: separates the schedules' shapes from their warmups")
    args = ap.parse_args()
    args.models = ["tiny-100K", "tiny-300K", "tiny-1M"]
    # 512 tokens per update: the smallest budget is 100 updates.
    args.tokens = [51200, 102400, 204800] if args.quick else [51200, 102400, 204800, 409600]
    n_boot = args.boot or (50 if args.quick else 200)

    import numpy as np

    from slmscale.models.synthetic_units import write_pattern_units

    with tempfile.TemporaryDirectory(prefix="bench-wsd-") as tmp:
        tmp = Path(tmp)
        units = write_pattern_units(tmp / "units", n_units=50, n_utterances=12000, seed=0)
        args.cosine_warmup = trunk_warmups(args, units) if args.same_warmup else None
        t0 = time.perf_counter()
        cosine, cosine_flops, cosine_runs = train_grid("cosine", args, units, tmp)
        t_cos = time.perf_counter() - t0
        t0 = time.perf_counter()
        wsd, wsd_flops, wsd_runs = train_grid("wsd", args, units, tmp)
        t_wsd = time.perf_counter() - t0

        print(f"\n{'point':<24} {'N':>8} {'D':>8} {'cosine':>8} {'wsd':>8} {'Δloss/loss':>10}")
        rel = []
        for run_id in cosine.index:
            a, b = cosine.loc[run_id, "loss"], wsd.loc[run_id, "loss"]
            rel.append((b - a) / a)
            print(f"{run_id:<24} {cosine.loc[run_id, 'n_params']:>8.3g} {cosine.loc[run_id, 'tokens']:>8.3g} "
                  f"{a:>8.4f} {b:>8.4f} {rel[-1]:>+10.2%}")
        rel = np.array(rel)
        print(f"mean |Δloss|/loss {np.abs(rel).mean():.2%} (max {np.abs(rel).max():.2%}, mean signed {rel.mean():+.2%})"
              f"  goal <= 1 %")
        print(f"compute spent: cosine {cosine_flops:.3g} FLOPs ({t_cos:.0f} s), wsd {wsd_flops:.3g} FLOPs ({t_wsd:.0f} s):"
              f" {cosine_flops / wsd_flops:.2f}x less for WSD")

        budget = float(cosine["flops"].max())
        fits = {"cosine": fit_table(cosine, n_boot, budget), "wsd": fit_table(wsd, n_boot, budget)}
        print(f"\nfits (Chinchilla form, {n_boot} bootstrap resamples, 95 % intervals; optimum at C = {budget:.3g}):")
        print(f"{'':10} {'cosine':>30} {'wsd':>30}")
        for key in ("alpha", "beta", "E", "A", "B"):
            cells = [f"{getattr(f['params'], key):.3g} [{f['ci'][key][0]:.3g}, {f['ci'][key][1]:.3g}]"
                     for f in fits.values()]
            print(f"{key:10} {cells[0]:>30} {cells[1]:>30}")
        for key in ("N_opt", "D_opt"):
            cells = [f"{f[key]:.3g} [{f['opt_ci'][key][0]:.3g}, {f['opt_ci'][key][1]:.3g}]" for f in fits.values()]
            print(f"{key:10} {cells[0]:>30} {cells[1]:>30}")
        for key in ("alpha", "beta"):
            a, b = getattr(fits["cosine"]["params"], key), getattr(fits["wsd"]["params"], key)
            a_in = fits["wsd"]["ci"][key][0] <= a <= fits["wsd"]["ci"][key][1]
            b_in = fits["cosine"]["ci"][key][0] <= b <= fits["cosine"]["ci"][key][1]
            print(f"{key}: cosine's inside wsd's interval: {a_in}; wsd's inside cosine's: {b_in}")

        print("\nwall-clock overhead (validation + checkpoints) per run, default cadences:")
        table = overhead(cosine_runs + wsd_runs)
        for run_id, wall, frac in table:
            print(f"  {run_id:<24} wall {wall:6.2f} s  overhead {frac:6.2%}")
        fracs = np.array([f for _, _, f in table])
        print(f"overhead: mean {fracs.mean():.2%}, max {fracs.max():.2%}  goal <= 5 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
