"""`slmscale demo` — the whole study, end to end, on an embedded default that needs no download.

    synthesise spoken stories (espeak-ng, several voices)        -> OUT/audio/ + manifest.parquet
    tokenize them with Ray Data and the embedded mfcc tokenizer   -> OUT/units/
    encode the embedded sBLIMP / StoryCloze benchmarks            -> OUT/cache/
    sweep an N x D grid of tiny models on local Ray Tune          -> OUT/sweep/ (+ downstream evals per trial)
    results table                                                 -> OUT/results.parquet
    fit L(N, D), N_opt / D_opt, downstream laws, report           -> OUT/report/report.html (+ .md, PNGs)

Every stage reuses what an earlier run finished (synthesis keeps existing WAVs, encoding keeps finished
shards, the sweep resumes through `Tuner.restore` and never reruns a finished trial), so rerunning after an
interruption picks up where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json

__all__ = ["DemoScale", "SCALES", "run_demo", "register"]


@dataclass(frozen=True)
class DemoScale:
    """How big the demo is. Every number here trades minutes for the quality of the fits."""

    stories: int  # synthetic spoken stories in the training corpus
    models: tuple[str, ...]  # model sizes (names from models.ladder)
    tokens: tuple[int, ...]  # training-token budgets D, the same for every size
    eval: bool = True  # score every trial on the embedded sBLIMP / StoryCloze benchmarks
    bootstrap: int = 50  # bootstrap resamples for the confidence intervals
    max_concurrent: int | None = None

    @property
    def trials(self) -> int:
        return len(self.models) * len(self.tokens)


# A full factorial grid (every size at every token budget) pins down both exponents of L(N, D); budgets
# a factor ~3 apart, like the sizes, put the grid's diagonal on shared compute budgets (isoFLOP profiles).
# (An isoFLOP-only grid at these tiny budgets gives every budget to the smallest model and leaves A/N^alpha
# unidentified.)
SCALES: dict[str, DemoScale] = {
    # The end-to-end test: every stage runs, numbers are not meaningful.
    "smallest": DemoScale(stories=30, models=("tiny-100K", "tiny-300K", "tiny-1M"), tokens=(4_096, 8_192, 16_384),
                          bootstrap=10),
    # `make demo`: about two minutes on a 2-core laptop after installation.
    "small": DemoScale(stories=300, models=("tiny-100K", "tiny-300K", "tiny-1M"), tokens=(16_384, 49_152, 131_072),
                       bootstrap=100),
    # Bigger: more stories, a fourth size and budget; tens of minutes on a laptop.
    "medium": DemoScale(stories=1000, models=("tiny-100K", "tiny-300K", "tiny-1M", "tiny-3M"),
                        tokens=(16_384, 49_152, 131_072, 393_216), bootstrap=200),
}

STAGES = ("synthesise", "tokenize", "benchmarks", "sweep", "results", "analysis")


def _stage(i: int, name: str, detail: str) -> float:
    print(f"\n[{i}/{len(STAGES)}] {name}: {detail}", flush=True)
    return time.perf_counter()


def _done(start: float, what: str) -> None:
    print(f"      done in {time.perf_counter() - start:.1f} s — {what}", flush=True)


def demo_grid(scale: DemoScale, units: Path, evals: list[dict[str, str]]):
    """The sweep's grid spec for this scale (the same object `slmscale sweep launch GRID.yaml` builds)."""
    from slmscale.sweep.grid import grid_from_dict

    raw = {
        "name": "demo",
        "units": str(units),
        "models": list(scale.models),
        "tokens": list(scale.tokens),
        "seeds": [0],
        "eval": evals,
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        # Held-out splits by utterance-id hash: 10% each, so a corpus of a few dozen stories still has
        # utterances in validation and test.
        # The same update size and a learning rate suited to tiny models for every size, so that each run
        # takes enough optimizer steps for model size to matter at these small budgets.
        "train": {"eval_tokens": 8_192, "test_tokens": 16_384, "val_fraction": 0.1, "test_fraction": 0.1,
                  "tokens_per_update": 1_024, "lr": 2e-3, "min_lr": 2e-4},
        "max_failures": 2,
    }
    if scale.max_concurrent:
        raw["max_concurrent"] = scale.max_concurrent
    return grid_from_dict(raw, source="slmscale demo")


def _sweep(scale: DemoScale, units: Path, evals: list[dict[str, str]], storage: Path, address: str | None) -> dict:
    from slmscale.sweep.launch import launch, resume
    from slmscale.sweep.storage import SweepStorage

    if SweepStorage(storage).sweep_file.is_file():
        print("      resuming the sweep of an earlier run (finished trials are kept)", flush=True)
        return resume(storage, address=address, verbose=0)
    return launch(demo_grid(scale, units, evals), storage, address=address, verbose=0)


def _training_curves(sweep_dir: Path, df) -> tuple[dict, dict]:
    """The training metrics of every trial in the results table -> ({run_id: curve}, {run_id: N})."""
    import pandas as pd

    from slmscale.sweep.storage import read_sweep

    storage, _ = read_sweep(sweep_dir)
    curves, sizes = {}, {}
    for row in df.itertuples():
        path = storage.run_dir(row.run_id).metrics
        if path.is_file():
            curves[row.run_id] = pd.read_json(path, lines=True)
            sizes[row.run_id] = float(row.n_params)
    return curves, sizes


def build_demo_report(results: Path, out_dir: Path, *, units_dir: Path, sweep_dir: Path, bootstrap: int,
                      budgets=(1e12, 1e14, 1e16, 1e18)) -> dict[str, Any]:
    """The demo's report: data statistics and training curves, then everything `slmscale report` writes
    (trial table, fit with CIs, isoFLOPs, N_opt/D_opt vs compute next to the paper's presets, downstream
    laws, provenance)."""
    from slmscale.analysis.optimal import compute_optimal
    from slmscale.analysis.plots import plot_training_curves
    from slmscale.analysis.report import Report, build_report
    from slmscale.analysis.schema import read_results
    from slmscale.tokenization.schema import meta_hash, read_meta
    from slmscale.tokenization.stats import unit_stats

    df = read_results(results)
    meta = read_meta(units_dir)
    report = Report(
        "slmscale demo: a scaling study of tiny speech LMs",
        "Synthetic spoken stories (espeak-ng) -> embedded MFCC k-means units -> an N x D grid of tiny Llama-style "
        "models on Ray Tune -> L(N, D) fit, compute-optimal allocation and downstream laws. The models and data are "
        "a few million times smaller than the paper's, so the fitted numbers describe this toy study, not speech LMs "
        "at scale; the paper's presets are shown beside them for comparison.",
    )
    stats = unit_stats(units_dir)
    sec = report.section("Data")
    sec.text(f"Unit dataset `{units_dir}` (tokenizer `{meta.tokenizer.get('id', meta.tokenizer.get('kind'))}`, "
             f"K = {meta.vocab_size}, hash `{meta.tokenizer_hash[:16]}`, dedup = {meta.dedup}); "
             f"rejected inputs: {meta.counts.get('rejected', 0)}. The shape of paper Table 2:")
    sec.table(stats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves, sizes = _training_curves(Path(sweep_dir), df)
    if curves:
        sec = report.section("Training curves")
        sec.text("Validation loss during each run (its own warmup + cosine schedule); the dot is the end of the run. "
                 "The scaling-law fit below uses each run's final held-out test loss.")
        sec.image(plot_training_curves(curves, sizes, out_dir / "training_curves.png"),
                  "Validation loss vs tokens seen, one line per trial, coloured by model size.")
    summary = build_report(df, out_dir, results_path=results, n_boot=bootstrap, budgets=list(budgets), report=report)
    fit = summary["fit"]
    print(f"      fit: E={fit['E']:.3f} A={fit['A']:.3g} B={fit['B']:.3g} alpha={fit['alpha']:.3f} "
          f"beta={fit['beta']:.3f}", flush=True)
    from slmscale.analysis.params import ScalingParams

    params = ScalingParams(**{k: fit[k] for k in ("E", "A", "B", "alpha", "beta")})
    if not params.has_optimum:
        print(f"      note: {params.why_no_optimum()}", flush=True)
    for c in budgets if params.has_optimum else ():
        a = compute_optimal(c, params)
        print(f"      C = {c:.0e} FLOPs: N_opt = {a.N_opt:,.0f}  D_opt = {a.D_opt:,.0f}  loss = {a.loss:.3f}", flush=True)
    return {"html": summary["report_html"], "md": summary["report_md"], "fit": fit, "ci": summary.get("ci"),
            "units_meta_hash": meta_hash(units_dir)}


def run_demo(out_dir: str | Path = "demo_out", scale: str | DemoScale = "small", *, address: str | None = None,
             stories: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every stage of the study into `out_dir`; returns a summary (also written to OUT/summary.json)."""
    from slmscale.tokenization.encode import encode
    from slmscale.tokenization.stories import story_items
    from slmscale.tokenization.synth import synthesize

    if isinstance(scale, str):
        if scale not in SCALES:
            raise SlmscaleError(f"--scale: expected one of {sorted(SCALES)}, got {scale!r}")
        scale = SCALES[scale]
    if stories is not None:
        if stories < 2:
            raise SlmscaleError(f"--stories: expected at least 2 stories, got {stories}")
        scale = replace(scale, stories=stories)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Benchmarks generated and encoded by the demo live with it; sweep trials (Ray workers) inherit this.
    os.environ.setdefault("SLMSCALE_CACHE", str(out / "cache"))
    cache = Path(os.environ["SLMSCALE_CACHE"])
    t_all = time.perf_counter()
    print(f"slmscale demo -> {out}\n  scale: {scale.stories} stories, models {list(scale.models)}, "
          f"budgets {list(scale.tokens)} tokens ({scale.trials} trials)", flush=True)

    t = _stage(1, "synthesise", f"{scale.stories} spoken stories with espeak-ng")
    manifest = synthesize(story_items(scale.stories, seed=0), out / "audio", progress=progress)
    _done(t, f"manifest {manifest}")

    t = _stage(2, "tokenize", "Ray Data: decode -> 16 kHz -> MFCC -> k-means units -> dedup -> Parquet shards")
    from slmscale.ray_utils import ensure_ray

    ensure_ray(address)
    meta = encode(manifest, "mfcc", out / "units", progress=progress)
    _done(t, f"{meta.counts.get('units', 0):,} units from {meta.counts.get('hours', 0.0) * 60:.1f} min of speech "
             f"in {out / 'units'}")

    evals: list[dict[str, str]] = []
    if scale.eval:
        t = _stage(3, "benchmarks", "embedded sBLIMP-style minimal pairs and spoken StoryCloze, same tokenizer")
        from slmscale.models.evaluation.evaluator import prepare_benchmark

        for bench in ("embedded:sblimp", "embedded:storycloze"):
            units = prepare_benchmark(bench, out / "units", cache_dir=cache, progress=progress)
            evals.append({"benchmark": bench, "units": str(units)})
        _done(t, f"encoded into {cache}")
    else:
        _stage(3, "benchmarks", "skipped (scale without evaluation)")

    t = _stage(4, "sweep", f"{scale.trials} training runs on local Ray Tune (watch: slmscale sweep status "
                           f"'{out / 'sweep'}')")
    summary = _sweep(scale, out / "units", evals, out / "sweep", address)
    if summary["finished"] < summary["trials"]:
        failed = ", ".join(e["run_id"] for e in summary["errored"]) or "none errored"
        raise SlmscaleError(f"sweep: only {summary['finished']} of {summary['trials']} trials finished (errored: "
                            f"{failed}); see `slmscale sweep status '{out / 'sweep'}'`, then rerun `slmscale demo` "
                            f"to resume")
    _done(t, f"{summary['finished']} trials finished")

    t = _stage(5, "results", "one row per trial, with provenance")
    from slmscale.sweep.results import write_sweep_results

    results = write_sweep_results(out / "sweep", out / "results.parquet", allow_partial=False)
    _done(t, str(results))

    t = _stage(6, "analysis", "fit L(N,D), compute-optimal N/D, downstream laws, report")
    report = build_demo_report(results, out / "report", units_dir=out / "units", sweep_dir=out / "sweep",
                               bootstrap=scale.bootstrap)
    _done(t, f"report {report['html']}")

    result = {
        "out_dir": str(out),
        "scale": asdict(scale),
        "manifest": str(manifest),
        "units": str(out / "units"),
        "sweep": str(out / "sweep"),
        "results": str(results),
        "report_html": str(report["html"]),
        "report_md": str(report["md"]),
        "fit": report.get("fit"),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    atomic_write_json(out / "summary.json", result)
    print(f"\nslmscale demo finished in {result['seconds']:.0f} s. Where everything is:\n"
          f"  audio + manifest   {manifest}\n  unit dataset       {out / 'units'}\n"
          f"  sweep (trials)     {out / 'sweep'}\n  results table      {results}\n"
          f"  report             {report['html']}  (Markdown: {report['md']})", flush=True)
    return result


DEMO_HELP = """\
Run the whole study end to end on an embedded default with no download: synthesise spoken stories,
tokenize them with Ray Data, sweep an N x D grid of tiny models on local Ray Tune, score them on the
embedded benchmarks, fit the scaling laws and write a report (OUT/report/report.html).
Rerunning reuses every finished stage; an interrupted sweep resumes without redoing finished trials.
Scales: smallest (a smoke test, ~1 min), small (default, ~2 min on 2 CPUs), medium (larger; tens of minutes)."""


def _demo(args) -> int:
    result = run_demo(args.out, args.scale, address=args.address, stories=args.stories, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def register(sub, formatter_class) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline end to end on the embedded default",
                       description=DEMO_HELP, formatter_class=formatter_class)
    p.add_argument("-o", "--out", default="demo_out", help="output folder (reused by reruns)")
    p.add_argument("--scale", default="small", choices=sorted(SCALES), help="how big a study to run")
    p.add_argument("--stories", type=int, default=None, help="override the number of synthetic stories")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    p.set_defaults(handler=_demo)
