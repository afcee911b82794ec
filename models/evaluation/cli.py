"""`slmscale eval`: score a trained model on sBLIMP / sWUGGY / StoryCloze folders or the embedded synthetic benchmark."""
from __future__ import annotations

import argparse

EVAL_DESCRIPTION = """\
Score a trained model (a training RUN_DIR) on spoken two-choice benchmarks.

Benchmarks (--benchmark, repeatable):
  DIR                  ZeroSpeech 2021 sLM21 syntactic split (gold.csv + <filename>.wav; the dataset root with
                       syntactic/dev/ also works) -> sblimp_macro, sblimp_pair
                       ZeroSpeech 2021 sLM21 lexical split (gold.csv without a 'type' column + <filename>.wav;
                       the dataset root with only lexical/dev/, or --task swuggy) -> swuggy
                       spoken StoryCloze release folder (<question>_correct.wav / <question>_incorrect.wav)
                       -> ssc, or tsc when the folder is named tSC / tStoryCloze (or with --task tsc)
  embedded:sblimp      synthetic minimal pairs (5 phenomena, 2 voices), generated offline on first use
  embedded:swuggy      spoken words of the synthetic story corpus vs non-words (one phoneme swapped for one of
                       the same class), 2 voices, generated offline with espeak-ng on first use
  embedded:storycloze  synthetic two-ending stories (wrong ending from another topic -> tsc), generated
                       offline on first use

The benchmark audio is encoded with the model's own tokenizer (the one whose hash is in RUN_DIR/run.json) and
the units are cached under --cache-dir; a unit dataset from another tokenizer is refused.
Score: mean NLL per unit of each candidate (--score sum for the total), no terminal EOS; the lower NLL wins and
ties count 0.5. sBLIMP macro accuracy = mean over phenomena; sblimp_pair and swuggy = mean over pairs of the
mean over voices (the ZeroSpeech 2021 toolkit's numbers).

Outputs: RUN_DIR/eval/<benchmark>.json (metrics, per-phenomenon details, convention, provenance); the metric
columns are merged into RUN_DIR/results.parquet when it exists and into --results FILE (row with this run_id).
--zerospeech-out DIR writes per-file scores (-NLL, higher = more probable) as DIR/lexical/<split>.txt and
DIR/syntactic/<split>.txt plus DIR/meta.yaml: the ZeroSpeech 2021 sLM submission layout, which the official
toolkit (zerospeech-benchmarks) scores to the same sblimp_pair / swuggy.

Examples:
  slmscale eval --model runs/tiny-1M --benchmark embedded:sblimp --benchmark embedded:storycloze
  slmscale eval --model runs/85M --benchmark data/zr2021/syntactic/dev --results results.parquet --json
  slmscale eval --model runs/85M --benchmark data/zr2021/lexical/dev --benchmark data/zr2021/syntactic/dev \
      --zerospeech-out submission/
"""


def register(sub, formatter_class) -> None:
    p = sub.add_parser("eval", help="score a trained model on sBLIMP / sWUGGY / StoryCloze (or the embedded benchmark)",
                       description=EVAL_DESCRIPTION, formatter_class=formatter_class)
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="training run directory (run.json + model/ or checkpoints/), or its object-store URI (s3://...)")
    p.add_argument("--benchmark", required=True, action="append", metavar="DIR|embedded:NAME",
                   help="benchmark folder in a released layout, or embedded:sblimp / embedded:swuggy / embedded:storycloze; "
                        "repeatable")
    p.add_argument("--task", choices=["sblimp", "swuggy", "ssc", "tsc"], default=None,
                   help="override the benchmark kind guessed from the folder (e.g. tsc for a topic StoryCloze folder)")
    p.add_argument("--score", choices=["mean", "sum"], default="mean",
                   help="candidate score: mean NLL per unit (paper) or summed NLL")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--units", default=None, metavar="UNITS_DIR",
                   help="an already-encoded unit dataset of the benchmark (its tokenizer hash must match the model's); "
                        "default: encode with the model's tokenizer and cache")
    p.add_argument("--cache-dir", default=None,
                   help="where encoded benchmark units and the embedded benchmark are kept "
                        "(default: $SLMSCALE_CACHE/eval or ~/.cache/slmscale/eval)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="results table (.parquet/.csv) whose row with this run's run_id gets the metric columns")
    p.add_argument("--zerospeech-out", default=None, metavar="DIR",
                   help="also write per-file scores in the ZeroSpeech 2021 sLM submission layout "
                        "(DIR/lexical/dev.txt, DIR/syntactic/dev.txt, DIR/meta.yaml) for the official toolkit")
    p.add_argument("--json", action="store_true", help="print the full result JSON instead of a summary line")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    import json
    import sys

    from slmscale.errors import SlmscaleError
    from slmscale.models.evaluation import evaluate  # (a run dir on object storage too)
    from slmscale.models.evaluation.evaluator import merge_into_results

    if args.units and len(args.benchmark) > 1:
        raise SlmscaleError("--units: give one --benchmark with it (the unit dataset belongs to one benchmark)")
    results = []
    for bench in args.benchmark:
        result = evaluate(args.model, bench, cache_dir=args.cache_dir, score=args.score, batch_size=args.batch_size,
                          units_dir=args.units, task=args.task, device=args.device, progress=not args.json,
                          zerospeech_out=args.zerospeech_out)
        if args.results:
            merge_into_results(args.results, result["provenance"]["run_id"], result["metrics"])
        results.append(result)
        if not args.json:
            metrics = "  ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items())
            n = result["details"].get("n_voice_pairs") or result["details"].get("n_questions")
            print(f"{result['provenance']['run_id']}  {bench}  {metrics}  ({n} questions, score={args.score})")
            if result.get("zerospeech_scores"):
                print(f"  ZeroSpeech 2021 scores: {result['zerospeech_scores']}")
            over = result["details"].get("longer_than_context", 0)
            if over:
                print(f"  note: {over} of {result['details']['n_candidates']} candidates are longer than the model's "
                      "context; they are scored without a sliding window", file=sys.stderr)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2, sort_keys=True, default=str))
    return 0
