"""Cosine vs warmup-stable-decay on a grid that runs on a 2-CPU machine: the same points trained both ways at
each of a few peak learning rates, the per-point loss differences, both scaling-law fits side by side, and the
compute each schedule spent.

    .venv/bin/python benchmarks/bench_wsd.py            # 3 sizes x 4 budgets (100-800 updates) x 5 LRs
    .venv/bin/python benchmarks/bench_wsd.py --quick    # 3 sizes x 3 budgets x 3 LRs, fewer bootstrap resamples

The data is the demo's, more of it: children's stories spoken by espeak-ng, tokenized with the embedded MFCC
tokenizer (K = 100) on Ray Data, built once into --work (default: a temporary folder) and reused from there;
`--units DIR` trains on a unit dataset of your own, `--data pattern` on the synthetic repeated-pattern units of
the tests (whose loss falls towards 0, so relative differences there are inflated).

Every run is the sweep's own trial config (sweep.grid.expand_grid + sweep.trainable.train_config_for) of a grid
that sweeps the LRs itself (`lrs`: with wsd one trunk per LR), trained in this process one after another (trunks
first, then their branches), so within one LR the only difference between the two columns is the schedule: both
grids set the same warmup (`--warmup`; the paper gives none). The tuned rows and the fits are what `slmscale fit`
reads from such a table: each point's lowest-loss LR (analysis.fit.best_lr_rows). The comparison that counts is each schedule at its own tuned peak LR
(per point, the best of the LR grid), as Hägele et al. (2024) compare them: the goal is mean |Δloss| / loss
<= 1 % there, and each exponent (α, β) of one fit inside the other's bootstrap interval. The per-LR tables show
what a shared, untuned LR does. It also prints each run's wall-clock overhead (evaluations + checkpoints)
under the default cadences.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

MODELS = ["tiny-100K", "tiny-300K", "tiny-1M"]
TRAIN = {"context": 64, "tokens_per_update": 512}  # 512 tokens per update: the smallest budget is 100 updates


def train_grid(schedule: str, args, units: Path, root: Path):
    """Train every trial of the grid with `schedule` at each peak LR of `args.lrs` (the grid's `lrs` axis: with
    wsd one trunk per LR); returns (results rows of the points, with `lr` and `point` = the run id without its
    -lr suffix; FLOPs spent; rows of every run incl. trunks for the overhead table)."""
    import pandas as pd

    from slmscale.models.train import train
    from slmscale.sweep.grid import grid_from_dict
    from slmscale.sweep.launch import trial_settings
    from slmscale.sweep.plan import make_plan
    from slmscale.sweep.storage import SweepStorage
    from slmscale.sweep.trainable import train_config_for

    spec = grid_from_dict({
        "name": f"bench-{schedule}", "models": args.models, "tokens": args.tokens, "seeds": [0], "units": str(units),
        "schedule": schedule, "lrs": args.lrs, "train": {**TRAIN, **args.warmup_steps, "threads": args.threads},
    }, source="bench_wsd")
    storage = SweepStorage(root / schedule)
    plan = make_plan(spec, str(units))
    settings = trial_settings(spec, storage)
    rows, runs = [], []
    for trial in plan.trials:
        t0 = time.perf_counter()
        trunk = storage.run_dir(trial.trunk).path if trial.trunk else None
        cfg = train_config_for(trial.to_dict(), settings, storage.run_dir(trial.run_id).path, trunk_dir=trunk)
        row = train(cfg)
        runs.append({"run_id": trial.run_id, "lr": trial.lr, "seconds": time.perf_counter() - t0,
                     "run_dir": storage.run_dir(trial.run_id).path})
        if trial.is_point:
            rows.append({**row, "run_id": trial.run_id, "point": trial.run_id.removesuffix(f"-lr{trial.lr:g}")})
        print(f"  {schedule:6} {trial.run_id:<30} loss {row['loss']:.4f}  {runs[-1]['seconds']:.1f} s", flush=True)
    return pd.DataFrame(rows), plan.total_flops, runs


def speech_units(work: Path, stories: int) -> Path:
    """`stories` spoken stories (espeak-ng, several voices) -> the embedded MFCC tokenizer on local Ray Data, as
    `slmscale demo` does; both steps keep what an earlier run of this benchmark finished in `work`."""
    import ray

    from slmscale.tokenization.encode import encode
    from slmscale.tokenization.stories import story_items
    from slmscale.tokenization.synth import synthesize

    t0 = time.perf_counter()
    manifest = synthesize(story_items(stories, seed=0), work / "audio", progress=False)
    meta = encode(manifest, "mfcc", work / "units", progress=False)
    if ray.is_initialized():
        ray.shutdown()  # training below uses the CPUs in this process
    print(f"data: {stories} spoken stories, {meta.counts['units']:,} MFCC units (K = {meta.vocab_size}) from "
          f"{meta.counts['hours'] * 60:.0f} min of speech in {work / 'units'} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return work / "units"


def fit_table(df, n_boot: int, budget: float) -> dict:
    """The fit of a whole results table (every LR): the fitter takes each point's best LR itself (best_lr_rows)."""
    from slmscale.analysis.bootstrap import bootstrap_fit
    from slmscale.analysis.fit import FitConfig, fit_scaling_law
    from slmscale.analysis.optimal import closed_form_optimal

    fit = fit_scaling_law(df, FitConfig(grid="coarse"), source="bench")
    boot = bootstrap_fit(df, fit, n_boot=n_boot, seed=0)
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


def compare(cosine, wsd, title: str) -> float:
    """Print the per-point table of two results frames (index run_id); returns mean |Δloss| / loss."""
    import numpy as np

    print(f"\n{title}\n{'point':<24} {'N':>8} {'D':>8} {'cosine':>8} {'lr':>7} {'wsd':>8} {'lr':>7} {'Δloss/loss':>10}")
    rel = []
    for run_id in cosine.index:
        a, b = cosine.loc[run_id], wsd.loc[run_id]
        rel.append((b["loss"] - a["loss"]) / a["loss"])
        print(f"{run_id:<24} {a['n_params']:>8.3g} {a['tokens']:>8.3g} {a['loss']:>8.4f} {a['lr']:>7g} "
              f"{b['loss']:>8.4f} {b['lr']:>7g} {rel[-1]:>+10.2%}")
    rel = np.array(rel)
    print(f"mean |Δloss|/loss {np.abs(rel).mean():.2%} (max {np.abs(rel).max():.2%}, mean signed {rel.mean():+.2%})")
    return float(np.abs(rel).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 x 3 grid, LRs 2e-3,4e-3,8e-3, 50 bootstrap resamples")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    ap.add_argument("--lrs", default=None,
                    help="comma-separated peak LRs (default 1e-3,2e-3,4e-3,8e-3,1.6e-2; --quick 2e-3,4e-3,8e-3)")
    ap.add_argument("--boot", type=int, default=None, help="bootstrap resamples (default 200, --quick 50)")
    ap.add_argument("--warmup", choices=["shared", "per-run"], default="shared",
                    help="shared (default): every run warms up for 1 %% of the longest point's updates, what the WSD "
                    "trunk does by default (the grid's train.warmup_steps); per-run: each cosine run for 1 %% of its "
                    "own updates (the default of a cosine grid: 1 update at 100 updates)")
    ap.add_argument("--data", choices=["speech", "pattern"], default="speech",
                    help="speech: spoken stories, MFCC units (default); pattern: the tests' synthetic patterns")
    ap.add_argument("--stories", type=int, default=600, help="spoken stories for --data speech (600: ~450k units, "
                                                             "about one epoch at the largest budget)")
    ap.add_argument("--units", type=Path, default=None, help="train on this unit dataset instead")
    ap.add_argument("--work", type=Path, default=None, help="where the data and runs go (default: a temp folder)")
    args = ap.parse_args()
    args.models = MODELS
    args.tokens = [51200, 102400, 204800] if args.quick else [51200, 102400, 204800, 409600]
    lrs = [float(x) for x in (args.lrs or ("2e-3,4e-3,8e-3" if args.quick else "1e-3,2e-3,4e-3,8e-3,1.6e-2")).split(",")]
    n_boot = args.boot or (50 if args.quick else 200)

    from slmscale.models.synthetic_units import write_pattern_units

    with tempfile.TemporaryDirectory(prefix="bench-wsd-") as tmp:
        work = args.work or Path(tmp)
        if args.units:
            units = args.units
        elif args.data == "pattern":
            units = write_pattern_units(work / "pattern-units", n_units=50, n_utterances=12000, seed=0)
        else:
            units = speech_units(work, args.stories)
        longest = max(args.tokens) // TRAIN["tokens_per_update"]
        args.warmup_steps = {"warmup_steps": max(1, round(0.01 * longest))} if args.warmup == "shared" else {}
        args.lrs = lrs
        results, spent, seconds, runs = {}, {}, {}, {}
        for schedule in ("cosine", "wsd"):
            t0 = time.perf_counter()
            results[schedule], spent[schedule], runs[schedule] = train_grid(schedule, args, units, work / "runs")
            seconds[schedule] = time.perf_counter() - t0

        from slmscale.analysis.fit import best_lr_rows

        def at(df, lr=None):  # one LR's rows, or (None) each point's best, indexed by point
            return (best_lr_rows(df)[0] if lr is None else df[df["lr"] == lr]).set_index("point")

        fixed = {lr: compare(at(results["cosine"], lr), at(results["wsd"], lr), f"peak LR {lr:g} for both schedules")
                 for lr in lrs}
        cosine, wsd = at(results["cosine"]), at(results["wsd"])
        headline = compare(cosine, wsd, f"each schedule at its tuned peak LR (per point, best of {lrs})")
        edge = [f"{s} {rid} ({df.loc[rid, 'lr']:g})" for s, df in (("cosine", cosine), ("wsd", wsd))
                for rid in df.index if df.loc[rid, "lr"] in (min(lrs), max(lrs))]
        if edge:
            print(f"  (at the edge of the LR grid, so possibly not its optimum: {', '.join(edge)})")
        print("\nmean |Δloss|/loss: " + ", ".join(f"LR {lr:g} {v:.2%}" for lr, v in fixed.items())
              + f"; tuned {headline:.2%}  goal <= 1 % (tuned)")
        per_lr = {k: v / len(lrs) for k, v in spent.items()}
        print(f"compute spent per LR: cosine {per_lr['cosine']:.3g} FLOPs, wsd {per_lr['wsd']:.3g} FLOPs: "
              f"{per_lr['cosine'] / per_lr['wsd']:.2f}x less for WSD (wall: cosine {seconds['cosine']:.0f} s, "
              f"wsd {seconds['wsd']:.0f} s over {len(lrs)} LRs)")

        budget = float(cosine["flops"].max())
        fits = {k: fit_table(results[k], n_boot, budget) for k in ("cosine", "wsd")}
        print(f"\nfits at the tuned LRs (Chinchilla form, {n_boot} bootstrap resamples, 95 % intervals; "
              f"optimum at C = {budget:.3g}):")
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

        import numpy as np

        print(f"\nwall-clock overhead (validation + checkpoints) per run, default cadences (LR {lrs[0]:g}):")
        table = overhead([r for r in runs["cosine"] + runs["wsd"] if r["lr"] == lrs[0]])
        for run_id, wall, frac in table:
            print(f"  {run_id:<24} wall {wall:6.2f} s  overhead {frac:6.2%}")
        fracs = np.array([f for _, _, f in table])
        print(f"overhead: mean {fracs.mean():.2%}, max {fracs.max():.2%}  goal <= 5 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
