"""`slmscale demo` — the whole study, end to end, on an embedded default that needs no download.

    synthesise spoken stories (espeak-ng, several voices)        -> OUT/audio/ + manifest.parquet
    tokenize them with Ray Data and the embedded mfcc tokenizer   -> OUT/units/
    encode the embedded sBLIMP / StoryCloze benchmarks            -> OUT/cache/
    sweep an N x D grid of tiny models on local Ray Tune          -> OUT/sweep/ (+ downstream evals per trial)
    results table                                                 -> OUT/results.parquet
    listen: a lo-fi unit vocoder from the corpus, one held-out   -> OUT/vocoder/, OUT/listen/
      prompt continued by the smallest and the largest model
    fit L(N, D), N_opt / D_opt, downstream laws, report           -> OUT/report/report.html (+ .md, PNGs, samples/)

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

STAGES = ("synthesise", "tokenize", "benchmarks", "sweep", "results", "listen", "analysis")

# The Listen stage: the vocoder is fitted on at most this many training-split stories and measured on held-out
# (test-split) ones; the prompt is the start of the first held-out story.
LISTEN_VOCODER_FILES, LISTEN_HELD_OUT_FILES, LISTEN_PROMPT_S, LISTEN_UNITS, LISTEN_SAMPLES = 60, 4, 2.0, 120, 2


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


def _listen_models(df, sweep_dir: Path) -> list[tuple[str, Path]]:
    """(label, run dir) of the smallest and the largest model, each at the largest token budget."""
    from slmscale.sweep.storage import read_sweep

    storage, _ = read_sweep(sweep_dir)
    top = df[df["tokens"] == df["tokens"].max()].sort_values("n_params")
    picks = [top.iloc[0]] + ([top.iloc[-1]] if len(top) > 1 else [])
    return [(f"{row['model']} ({int(row['n_params']):,} parameters, {int(row['tokens']):,} tokens)",
             storage.run_dir(row["run_id"]).path) for row in picks]


def listen(out: Path, manifest: Path, results: Path, sweep_dir: Path) -> dict[str, Any]:
    """The Listen stage: an exemplar vocoder of the demo's own speech (training-split stories; its resynthesis
    unit edit rate measured on held-out test-split stories), and one held-out prompt continued by the smallest and
    the largest model. Returns what the report's Listen section shows."""
    import numpy as np
    import soundfile as sf
    from transformers.utils import logging as hf_logging

    from slmscale.analysis.schema import read_results
    from slmscale.models.data import split_of
    from slmscale.models.generation import generate
    from slmscale.models.generation.exemplar import build_exemplar_vocoder, load_exemplar_vocoder
    from slmscale.models.generation.pipeline import write_wav
    from slmscale.tokenization.audio import decode_chunks
    from slmscale.tokenization.manifest import read_manifest
    from slmscale.tokenization.tokenizer import load_tokenizer

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model would break the stage's one-line output
    rows = read_manifest(manifest).select(["utt_id", "path"]).to_pylist()
    # the demo grid's held-out fractions (demo_grid: val 0.1, test 0.1): the vocoder never sees test stories
    split = {r["path"]: split_of(r["utt_id"], 0.1, 0.1) for r in rows}
    train = [p for p, s in split.items() if s == "train"][:LISTEN_VOCODER_FILES]
    # held out: test-split stories (a tiny corpus may have none: then validation stories, also never trained on)
    test = ([p for p, s in split.items() if s == "test"] or [p for p, s in split.items() if s == "val"])
    test = test[:LISTEN_HELD_OUT_FILES]
    if not test or not train:
        raise SlmscaleError(f"{manifest}: {len(train)} training and {len(test)} held-out stories; the Listen stage "
                            "expected at least one of each (use more --stories)")

    def load(path: str) -> np.ndarray:
        return np.concatenate([c.wav for c in decode_chunks(path, chunk_s=3600.0)])

    tokenizer = load_tokenizer("mfcc")
    vocoder_dir = out / "vocoder"
    if (vocoder_dir / "vocoder.json").is_file():
        vocoder = load_exemplar_vocoder(vocoder_dir)
    else:
        vocoder = build_exemplar_vocoder(tokenizer, [load(p) for p in train],
                                         held_out=[load(p) for p in test],
                                         sources={"demo_stories": len(train), "held_out_stories": len(test),
                                                  "manifest": str(manifest)})
        vocoder.save(vocoder_dir)
    prompt = out / "listen" / "prompt.wav"
    prompt_audio = load(test[0])[: int(LISTEN_PROMPT_S * 16000)]
    write_wav(prompt, prompt_audio, 16000)
    frames = tokenizer.frame_units([prompt_audio])[0]
    resynthesis = write_wav(out / "listen" / "prompt-resynthesis.wav",
                            vocoder.synthesize(frames, np.ones(len(frames), np.int64)), vocoder.sample_rate)
    samples = []
    for label, run_dir in _listen_models(read_results(results), sweep_dir):
        result = generate(run_dir, out / "listen" / run_dir.name, prompt=prompt, vocoder=vocoder_dir,
                          max_units=LISTEN_UNITS, num_samples=LISTEN_SAMPLES, seed=0)
        samples.append({"label": label, "run_id": run_dir.name, "dir": out / "listen" / run_dir.name,
                        "wavs": [s["wav"] for s in result["samples"]],
                        "starts_s": result["samples"][0]["continuation_starts_s"]})
    return {"prompt": prompt, "prompt_source": test[0], "prompt_s": len(prompt_audio) / 16000,
            "resynthesis": resynthesis, "samples": samples,
            "edit_rate": vocoder.info.get("unit_edit_rate"), "vocoder": vocoder_dir,
            "sample_rate": sf.info(str(prompt)).samplerate}


def listen_section(report, listen: dict[str, Any]) -> None:
    """The report's Listen section: the prompt, its resynthesis, and each model's continuations as players."""
    rate = listen.get("edit_rate") or {}
    sec = report.section("Listen")
    sec.text(f"The first {listen['prompt_s']:.1f} s of a held-out story (`{Path(listen['prompt_source']).name}`, never trained on) "
             f"continued by the smallest and the largest model ({LISTEN_UNITS} deduplicated units each, temperature 1, "
             "seed 0); each model sees as much of the prompt's end as its context leaves room for. The audio is rendered by a **lo-fi** vocoder: each unit's mean log-magnitude spectrum over the "
             "demo's own training stories, with Griffin-Lim phase — whispery and robotic by construction; what it can "
             "tell is whether a model continues with speech-like unit sequences, not how the models would sound with "
             "a trained unit HiFi-GAN (`slmscale generate --vocoder DIR`).")
    if rate.get("raw") is not None:
        sec.text(f"Vocoder quality, measured as in textless NLP: held-out stories resynthesised from their units and "
                 f"re-tokenized give a **unit edit rate of {rate['raw']:.1%}** on frame units (raw) and "
                 f"**{rate['dedup']:.1%}** on deduplicated units ({rate['utterances']} stories, {rate['frames']:,} "
                 "frames; Levenshtein distance / reference length; 0 = every unit recovered).")
    sec.audio(listen["prompt"], "Prompt (original audio)")
    sec.audio(listen["resynthesis"], "Prompt resynthesised from its frame units by the lo-fi vocoder")
    for model in listen["samples"]:
        for i, wav in enumerate(model["wavs"]):
            sec.audio(Path(model["dir"]) / wav, f"{model['label']}, sample {i + 1}: prompt, then the model's "
                                                f"continuation from {model['starts_s']:.2f} s")


def build_demo_report(results: Path, out_dir: Path, *, units_dir: Path, sweep_dir: Path, bootstrap: int,
                      budgets=(1e12, 1e14, 1e16, 1e18), listen: dict[str, Any] | None = None) -> dict[str, Any]:
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
    if listen:
        listen_section(report, listen)
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
        t = _stage(3, "benchmarks", "embedded sBLIMP-style pairs, sWUGGY word/non-word pairs and spoken StoryCloze, "
                                         "same tokenizer")
        from slmscale.models.evaluation.evaluator import prepare_benchmark

        for bench in ("embedded:sblimp", "embedded:swuggy", "embedded:storycloze"):
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

    t = _stage(6, "listen", "lo-fi vocoder from the corpus; a held-out prompt continued by the smallest and "
                            "largest model")
    heard = listen(out, manifest, results, out / "sweep")
    rate = heard["edit_rate"] or {}
    _done(t, f"{sum(len(m['wavs']) for m in heard['samples'])} samples in {out / 'listen'}; vocoder resynthesis unit "
             f"edit rate {rate.get('raw', float('nan')):.1%} raw, {rate.get('dedup', float('nan')):.1%} dedup")

    t = _stage(7, "analysis", "fit L(N,D), compute-optimal N/D, downstream laws, report")
    report = build_demo_report(results, out / "report", units_dir=out / "units", sweep_dir=out / "sweep",
                               bootstrap=scale.bootstrap, listen=heard)
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
        "vocoder_unit_edit_rate": heard["edit_rate"],
        "listen": str(out / "listen"),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    atomic_write_json(out / "summary.json", result)
    print(f"\nslmscale demo finished in {result['seconds']:.0f} s. Where everything is:\n"
          f"  audio + manifest   {manifest}\n  unit dataset       {out / 'units'}\n"
          f"  sweep (trials)     {out / 'sweep'}\n  results table      {results}\n"
          f"  generated speech   {out / 'listen'}  (lo-fi vocoder: {out / 'vocoder'})\n"
          f"  report             {report['html']}  (Markdown: {report['md']})", flush=True)
    return result


DEMO_HELP = """\
Run the whole study end to end on an embedded default with no download: synthesise spoken stories,
tokenize them with Ray Data, sweep an N x D grid of tiny models on local Ray Tune, score them on the
embedded benchmarks, continue a held-out spoken prompt with the smallest and largest model (lo-fi vocoder),
fit the scaling laws and write a report (OUT/report/report.html).
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
