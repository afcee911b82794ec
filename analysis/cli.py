"""`slmscale fit | optimal | downstream | report` — thin wrappers over analysis library functions.

Handlers import numpy/torch/matplotlib lazily so `slmscale --help` stays instant. With `--json` the last
line printed is exactly one JSON object (human-readable lines come before it).
"""
from __future__ import annotations

import argparse
import json
import math

RESULTS_HELP = "results table (.csv, .tsv or .parquet); one row per training run"


def _add_columns(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("columns of the results table (to read other people's tables)")
    g.add_argument("--n-col", default="n_params", help="column with the model size N (parameters)")
    g.add_argument("--d-col", default="tokens", help="column with training tokens D; if absent, D = C / (6 N)")
    g.add_argument("--loss-col", default="loss", help="column with the held-out loss")
    g.add_argument("--flops-col", default="flops", help="column with training compute C; if absent, C = 6 N D")


def _read(args, require_loss: bool = True):
    from slmscale.analysis.schema import ColumnMap, read_results

    return read_results(args.results, ColumnMap(args.n_col, args.d_col, args.loss_col, args.flops_col), require_loss)


def _emit_json(obj: dict) -> None:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    print(json.dumps(clean(obj), sort_keys=True, default=float))


def _fit_config(args):
    from slmscale.analysis.fit import FitConfig

    return FitConfig(form=args.form, delta=args.delta, exclude_highest_loss=args.exclude_highest_loss,
                     grid=args.grid, device=args.device).validate()


def cmd_fit(args) -> int:
    from slmscale.analysis.bootstrap import bootstrap_fit
    from slmscale.analysis.diagnostics import design_warnings, residual_frame, residual_trends
    from slmscale.analysis.fit import fit_scaling_law
    from slmscale.analysis.holdout import HoldoutSpec, used_runs

    df = _read(args)
    config = _fit_config(args)
    holdout_spec = None
    if args.holdout_fraction is not None or args.holdout_above is not None:
        holdout_spec = HoldoutSpec(args.holdout_fraction, args.holdout_above).validate()  # before the slow fit
    fit = fit_scaling_law(df, config, source=str(args.results), progress=not args.json)
    out = fit.to_dict()
    boot = None
    if args.bootstrap:
        boot = bootstrap_fit(df, fit, args.bootstrap, args.seed, args.ci, source=str(args.results), progress=not args.json)
        out["ci"] = boot.ci()
        out["ci_level"] = args.ci
        out["bootstrap"] = {"n": args.bootstrap, "seed": args.seed}
    used = used_runs(df, config)
    frame = residual_frame(used, fit.params)
    out["diagnostics"] = {"warnings": design_warnings(used, out.get("ci"), fit.params, args.ci),
                          "residuals": residual_trends(frame)}
    holdout = None
    if holdout_spec is not None:
        from slmscale.analysis.holdout import holdout_evaluation

        holdout = holdout_evaluation(df, config, holdout_spec, n_boot=args.bootstrap or 100, seed=args.seed,
                                     level=args.ci, source=str(args.results), progress=not args.json, full_fit=fit)
        out["holdout"] = holdout.summary()
    if args.approaches:
        out["approaches"] = _approach_table(args, used, fit, boot)
    if args.plot_dir:
        from pathlib import Path

        from slmscale.analysis.plots import (
            plot_holdout,
            plot_isoflops,
            plot_loss_vs_tokens,
            plot_optimal_vs_compute,
            plot_residuals,
        )

        d = Path(args.plot_dir)
        lo, hi = float(df["flops"].min()), float(df["flops"].max())
        out["plots"] = [str(p) for p in (
            plot_loss_vs_tokens(used, fit.params, d / "loss_vs_tokens.png"),
            plot_isoflops(used, fit.params, d / "isoflops.png"),
            plot_optimal_vs_compute(fit.params, d / "optimal_vs_compute.png", (lo / 10, hi * 1000), boot,
                                    observed=used, level=args.ci),
            plot_residuals(frame, d / "residuals.png"),
        )]
        if holdout is not None:
            out["plots"].append(str(plot_holdout(holdout, d / "holdout.png")))
    p = fit.params
    print(f"{config.form} fit of {fit.n_runs} runs ({fit.n_starts} starts, {fit.n_converged} converged, {fit.seconds:.1f} s): "
          f"E={p.E:.4g} A={p.A:.4g} B={p.B:.4g} alpha={p.alpha:.4g} beta={p.beta:.4g}"
          + (f" R_N*={p.R_N_star:.4g} R_D*={p.R_D_star:.4g}" if p.data_constrained else ""))
    if not p.has_optimum:
        print(f"  note: {p.why_no_optimum()}")
    if boot is not None:
        for k, (lo, hi) in out["ci"].items():
            print(f"  {k:9s} {args.ci:.0%} CI [{lo:.4g}, {hi:.4g}]")
    for warning in out["diagnostics"]["warnings"]:
        print(f"  warning: {warning}")
    if holdout is not None:
        h = out["holdout"]
        print(f"holdout ({h['held_out']}, {h['n']} runs; fitted to {h['n_train']}): MAPE {h['mape']:.3g} %, "
              f"max {h['max_ape']:.3g} %, bias {h['bias']:+.3g} %, {args.ci:.0%} interval coverage {h['coverage']:.2f}")
        for name, s_ in h["structure"].items():
            print(f"  {name.replace('_', ' ')}: MAPE {s_['mape']:.3g} %, max {s_['max_ape']:.3g} %, bias {s_['bias']:+.3g} %")
    if args.approaches:
        _print_approaches(out["approaches"], args.ci)
    if args.json:
        _emit_json(out)
    return 0


def _approach_table(args, used, fit, boot) -> dict:
    """Approaches 1, 2, 3 (+ the data-constrained form when the table repeats data) at --at-compute."""
    from dataclasses import replace

    from slmscale.analysis.approaches import approach1, approach2, approach3, compare_approaches
    from slmscale.analysis.bootstrap import bootstrap_fit
    from slmscale.analysis.fit import fit_scaling_law
    from slmscale.errors import SlmscaleError

    n_boot = args.bootstrap or 100
    if boot is None:
        boot = bootstrap_fit(_read(args), fit, n_boot, args.seed, args.ci, source=str(args.results))
    compute = args.at_compute or float(used["flops"].max())
    laws, notes = [], []
    builders = [lambda: approach1(used, n_boot, args.seed), lambda: approach2(used, n_boot, args.seed),
                lambda: approach3(fit.params, boot, f"3: parametric ({fit.config.form})", fit.n_runs)]
    if fit.config.form == "chinchilla" and (used["tokens"] > used["unique_tokens"] * (1 + 1e-9)).any():
        def data_constrained():
            dc_config = replace(fit.config, form="data-constrained", exclude_highest_loss=0)
            dc = fit_scaling_law(used, dc_config, source=str(args.results))
            return approach3(dc.params, bootstrap_fit(used, dc, n_boot, args.seed, args.ci), "3: data-constrained", dc.n_runs)
        builders.append(data_constrained)
    for build in builders:
        try:
            laws.append(build())
        except SlmscaleError as exc:
            notes.append(str(exc))
    return {"compute": compute, "level": args.ci, "rows": compare_approaches(laws, compute, args.ci), "not_available": notes}


def _print_approaches(table: dict, level: float) -> None:
    print(f"allocation N_opt ~ C^a, D_opt ~ C^b by approach ({level:.0%} bootstrap intervals), at C = {table['compute']:.3g}:")
    print(f"  {'approach':34s} {'a':>22s} {'b':>22s} {'N_opt':>26s} {'D_opt':>26s}  disagrees")
    for r in table["rows"]:
        def cell(value, ci, spec):
            return f"{value:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]"
        print(f"  {r['approach']:34s} {cell(r['a'], r['a_ci'], '.3f'):>22s} {cell(r['b'], r['b_ci'], '.3f'):>22s} "
              f"{cell(r['N_opt'], r['N_opt_ci'], '.2e'):>26s} {cell(r['D_opt'], r['D_opt_ci'], '.2e'):>26s}  "
              f"{', '.join(r['disagrees']) or '-'}")
    for note in table["not_available"]:
        print(f"  not available: {note}")


def cmd_optimal(args) -> int:
    from slmscale.analysis.optimal import compute_optimal
    from slmscale.analysis.params import load_params, preset

    boot = None
    if args.results:
        from slmscale.analysis.bootstrap import bootstrap_fit
        from slmscale.analysis.fit import fit_scaling_law

        df = _read(args)
        fit = fit_scaling_law(df, _fit_config(args), source=str(args.results), progress=not args.json)
        params = fit.params
        if args.bootstrap:
            boot = bootstrap_fit(df, fit, args.bootstrap, args.seed, args.ci, source=str(args.results), progress=not args.json)
    else:
        params = preset(args.preset) if args.preset else load_params(args.params)
    alloc = compute_optimal(args.compute, params, args.unique_tokens)
    out = alloc.to_dict()
    out["params"] = params.to_dict()
    print(f"C={alloc.compute:.3g} FLOPs: N_opt={alloc.N_opt:.4g} params, D_opt={alloc.D_opt:.4g} tokens "
          f"(D/N={alloc.D_opt / alloc.N_opt:.3g}), predicted loss {alloc.loss:.4g} [{alloc.method}]")
    if boot is not None:
        out["ci"] = _allocation_ci(boot, args.compute, args.unique_tokens)
        out["ci_level"] = args.ci
        out["bootstrap"] = {"n": args.bootstrap, "seed": args.seed}
        for key, (lo, hi) in out["ci"].items():
            print(f"  {key:6s} {args.ci:.0%} CI [{lo:.4g}, {hi:.4g}]")
    if args.json:
        _emit_json(out)
    return 0


def _allocation_ci(boot, compute: float, unique_tokens: float | None) -> dict:
    """Percentile intervals of N_opt, D_opt and the loss there over the bootstrap replicates (a replicate
    without an optimum counts as missing, not as an error)."""
    import numpy as np

    from slmscale.analysis.bootstrap import percentile_band
    from slmscale.analysis.optimal import compute_optimal

    samples = []
    for p in boot.params:
        if p.has_optimum:
            a = compute_optimal(compute, p, unique_tokens)
            samples.append((a.N_opt, a.D_opt, a.loss))
        else:
            samples.append((np.nan, np.nan, np.nan))
    samples = np.array(samples)
    lo, hi = percentile_band(samples, boot.level, axis=0)
    return {key: [float(lo[i]), float(hi[i])] for i, key in enumerate(("N_opt", "D_opt", "loss"))}


def cmd_downstream(args) -> int:
    from slmscale.analysis.downstream import check_compute_factor, check_level, downstream_analysis, format_multiplier
    from slmscale.analysis.schema import ColumnMap, read_score_table

    check_level(args.ci)
    check_compute_factor(args.compute_factor)
    df = read_score_table(args.results, ColumnMap(args.n_col, args.d_col, args.loss_col, args.flops_col))
    out = downstream_analysis(df, args.metric, args.versus, args.ci, args.compute_factor, source=str(args.results),
                              at_compute=args.at_compute)
    print(f"{args.metric}: Q = {out['k']:.4g} * C^{out['gamma']:.4g}  ({args.ci:.0%} CI of gamma "
          f"[{out['ci']['gamma'][0]:.4g}, {out['ci']['gamma'][1]:.4g}], R²={out['r2']:.3f}, {out['n_runs']} runs)")
    if "compute_multiplier" in out:
        print(f"  vs gamma={out['versus']['gamma']:.4g} ({out['versus']['source']}): for the gain the other modality gets from "
              f"{args.compute_factor:g}x compute, these models need {format_multiplier(out['log10_compute_multiplier'])}")
    if "two_step" in out:
        t = out["two_step"]
        print(f"  two-step (loss law -> score = {t['slope']:.4g}*loss + {t['intercept']:.4g}): in-sample MAPE "
              f"{t['mape']:.3g} % vs {t['direct_mape']:.3g} % for the direct law")
        if "at_compute" in t:
            a = t["at_compute"]
            print(f"  at C={a['compute']:.3g}: compute-optimal loss {a['loss']:.4g} -> score {a['two_step']:.4g} "
                  f"(direct law: {a['direct']:.4g})")
    elif "at_compute" in out:
        print(f"  at C={out['at_compute']['compute']:.3g}: score {out['at_compute']['score']:.4g}")
    if args.plot_dir:
        from pathlib import Path

        from slmscale.analysis.downstream import GAMMA_TABLE4, fit_power_law, metric_family, metric_rows
        from slmscale.analysis.plots import plot_downstream

        rows = metric_rows(df, args.metric, str(args.results))
        law = fit_power_law(rows["flops"], rows[args.metric], args.ci)
        out["plot"] = str(plot_downstream(rows["flops"], rows[args.metric], law,
                                          Path(args.plot_dir) / f"downstream_{args.metric}.png", args.metric, args.ci,
                                          GAMMA_TABLE4.get(metric_family(args.metric) or "", {})))
    if args.json:
        _emit_json(out)
    return 0


def cmd_report(args) -> int:
    from slmscale.analysis.report import build_report, generated_samples

    df = _read(args)
    samples = [s for folder in args.samples for s in generated_samples(folder)]  # checked before any fitting
    summary = build_report(df, args.out, results_path=args.results, fit_config=_fit_config(args),
                           n_boot=args.bootstrap, seed=args.seed, level=args.ci, budgets=args.budgets,
                           metrics=args.metrics, progress=not args.json, holdout_fraction=args.holdout_fraction or None,
                           samples=samples)
    print(f"wrote {summary['report_md']} and {summary['report_html']} with {len(summary['figures'])} figures")
    if args.json:
        _emit_json(summary)
    return 0


def _add_fit_options(p: argparse.ArgumentParser, default_boot: int) -> None:
    p.add_argument("--form", choices=("chinchilla", "data-constrained"), default="chinchilla",
                   help="chinchilla: L = E + A/N^alpha + B/D^beta; data-constrained: Muennighoff et al. effective "
                        "N', D' with R_N*, R_D* (needs unique_tokens and runs with epochs > 1)")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log-loss residuals (Hoffmann et al.)")
    p.add_argument("--exclude-highest-loss", type=int, default=0, metavar="K",
                   help="drop the K highest-loss runs before fitting (Epoch's replication drops 5)")
    p.add_argument("--grid", choices=("epoch", "coarse"), default="epoch",
                   help="initialisations: epoch = Hoffmann/Epoch grid of 4,500; coarse = 243 (data-constrained: "
                        "the grid is fitted in Chinchilla form first, its optima x 16 (R_N*, R_D*) starts); "
                        "")
    p.add_argument("--bootstrap", type=int, default=default_boot, metavar="B",
                   help="bootstrap resamples of the runs for confidence intervals (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--device", default="auto", help="torch device for the fit: auto (CUDA if present), cpu, cuda:0")


def register(sub, formatter_class) -> None:
    p = sub.add_parser(
        "fit", formatter_class=formatter_class,
        help="fit L(N, D) to a results table (Huber, batched multi-start)",
        description="Fit the Chinchilla (or data-constrained) loss law to a results table.\n"
                    "Output: the parameters E, A, B, alpha, beta (+ R_N_star, R_D_star), with --bootstrap their CIs.\n"
                    "Example: slmscale fit --results results.parquet --exclude-highest-loss 5 --bootstrap 200 --json",
    )
    p.add_argument("--results", required=True, help=RESULTS_HELP)
    _add_fit_options(p, default_boot=0)
    p.add_argument("--plot-dir", help="write loss_vs_tokens.png, isoflops.png, optimal_vs_compute.png, residuals.png "
                                      "(and holdout.png) here")
    g = p.add_argument_group("can the law be trusted? (holdout extrapolation, approaches 1-3 side by side)")
    g.add_argument("--holdout-fraction", type=float, metavar="F",
                   help="hold out the top F of runs by compute (e.g. 0.2), fit the rest, predict them with "
                        "intervals (bootstrap: --bootstrap B, default 100); also leave-one-budget-out and "
                        "leave-largest-size-out")
    g.add_argument("--holdout-above", type=float, metavar="C", help="hold out every run with compute above C FLOPs")
    g.add_argument("--approaches", action="store_true",
                   help="compare the allocation exponents and N_opt/D_opt of approach 1 (loss envelope), 2 (isoFLOP "
                        "parabolas) and 3 (this fit) with bootstrap intervals")
    g.add_argument("--at-compute", type=float, metavar="C",
                   help="budget for the approach comparison's N_opt/D_opt (default: the table's largest compute)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    _add_columns(p)
    p.set_defaults(handler=cmd_fit)

    p = sub.add_parser(
        "optimal", formatter_class=formatter_class,
        help="compute-optimal N and D for a FLOP budget",
        description="Compute-optimal allocation of C = 6 N D from a preset or a params JSON (e.g. `fit --json` output).\n"
                    "Presets: speech (paper Table 5, HuBERT units), text (Muennighoff et al.), hoffmann, epoch.\n"
                    "With --results the table is fitted (fit options below) and N_opt, D_opt and the loss get bootstrap CIs.\n"
                    "Example: slmscale optimal --compute 1e21 --preset speech --unique-tokens 1e10 --json",
    )
    p.add_argument("--compute", type=float, required=True, help="FLOP budget C")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=("speech", "text", "hoffmann", "epoch"), help="published parameter set (point values)")
    src.add_argument("--params", metavar="FILE.json", help="JSON with keys E, A, B, alpha, beta [, R_N_star, R_D_star]")
    src.add_argument("--results", help=RESULTS_HELP + "; fitted here, with bootstrap intervals on N_opt, D_opt, loss")
    p.add_argument("--unique-tokens", type=float, metavar="U",
                   help="cap on unique training tokens (data-constrained params only): optimum found numerically")
    _add_fit_options(p, default_boot=100)
    p.add_argument("--json", action="store_true", help="print one JSON object (N_opt, D_opt, loss, ...) as the last line")
    _add_columns(p)
    p.set_defaults(handler=cmd_optimal)

    p = sub.add_parser(
        "downstream", formatter_class=formatter_class,
        help="fit a downstream metric Q = k C^gamma; compare with text/speech",
        description="Fit Q = k * C^gamma (log-log least squares, t-based CI) and Q linear in loss for one metric column.\n"
                    "With --versus, the compute multiplier: how much more compute these models need for the score\n"
                    "gain the other modality (paper Table 4 gamma, or a JSON {\"gamma\": g}) gets from --compute-factor.\n"
                    "The table needs compute (or N and D) and the metric; loss is optional (with N, D and loss, also a\n"
                    "two-step prediction: loss from L(N, D), then the score from its linear fit against loss).\n"
                    "Example: slmscale downstream --results results.parquet --metric sblimp_macro --versus text --json",
    )
    p.add_argument("--results", required=True, help=RESULTS_HELP)
    p.add_argument("--metric", required=True, help="metric column, e.g. sblimp_macro, ssc, tsc (runs without it are skipped)")
    p.add_argument("--versus", help="text | speech (paper Table 4) | FILE.json with 'gamma'")
    p.add_argument("--compute-factor", type=float, default=10.0, help="compute factor (> 1) of the other modality")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level, in (0, 1)")
    p.add_argument("--at-compute", type=float, metavar="C",
                   help="predict the score at C FLOPs (directly, and in two steps via the compute-optimal loss when "
                        "the table has N, D and loss)")
    p.add_argument("--plot-dir", help="write downstream_<metric>.png here")
    p.add_argument("--json", action="store_true", help="print one JSON object (gamma, k, ci, ...) as the last line")
    _add_columns(p)
    p.set_defaults(handler=cmd_downstream)

    p = sub.add_parser(
        "report", formatter_class=formatter_class,
        help="write report.md + report.html with figures for a results table",
        description="Self-contained report: trial table, fit with bootstrap CIs, N_opt/D_opt at a few budgets next to\n"
                    "the paper's presets, downstream laws for metric columns present, provenance.\n"
                    "Example: slmscale report --results results.parquet -o report/",
    )
    p.add_argument("--results", required=True, help=RESULTS_HELP)
    p.add_argument("-o", "--out", required=True, help="output folder (report.md, report.html, *.png)")
    _add_fit_options(p, default_boot=100)
    p.add_argument("--holdout-fraction", type=float, default=0.2, metavar="F",
                   help="share of highest-compute runs held out in 'Can this law be trusted?' (0 = no holdout)")
    p.add_argument("--budgets", type=float, nargs="+", help="FLOP budgets for the N_opt/D_opt table (default: span of the table)")
    p.add_argument("--metrics", nargs="+", help="metric columns for downstream laws (default: sblimp_*, ssc, tsc present)")
    p.add_argument("--samples", nargs="+", metavar="DIR", default=(),
                   help="output folders of `slmscale generate ... --vocoder ...`: their WAVs are played in a 'Listen' "
                        "section, captioned with the model and settings from each folder's samples.json")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    _add_columns(p)
    p.set_defaults(handler=cmd_report)
