"""`slmscale models` (the ladder table) and `slmscale train` (one training run). Thin wrappers over
`models.ladder.ladder_table` and `models.train.train`; torch/transformers are imported only when a command runs."""
from __future__ import annotations

import argparse
import json

TRAIN_DESCRIPTION = """\
Train one Llama-style model of the ladder on a unit dataset (one point of a scaling curve).

Input:  --units DIR, a unit dataset (meta.json + shard-*.parquet from `slmscale tokenize encode`).
Output: RUN_DIR with config.json, run.json (provenance), metrics.jsonl (one line per report: train/val loss,
        tokens, FLOPs 6ND and exact, tokens/s, MFU), checkpoints/step-N/, model/ (Hugging Face
        save_pretrained), final.json and results.parquet (one row of the results table; loss = test loss).
Rerunning the same command, or `slmscale train --resume RUN_DIR`, continues from the newest checkpoint;
a finished run just prints its row. Workers > 1 run on Ray Train (DDP); one worker runs in this process.

Examples:
  slmscale train --units units/ --model tiny-1M --tokens 2e6 -o runs/tiny
  slmscale train --units units/ --model 20M --tokens 4.1e8 --unique-tokens 1e8 --workers 4 -o runs/20M-4x
  slmscale train --resume runs/20M-4x
"""


def _int_tokens(text: str) -> int:
    """Token counts accept 2000000, 2e6, 2M, 500k, 1.5B."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(t[-1:].lower(), 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 2000000, 2e6 or 2M, got {text!r}") from None
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of tokens, got {text!r}")
    return int(value)


def register(sub, formatter_class) -> None:
    p = sub.add_parser(
        "models", help="list the model ladder (paper Table 1 + tiny sizes)", formatter_class=formatter_class,
        description="List the model ladder: layers, d_model, heads, SwiGLU hidden, context, exact parameter count "
                    "(tied embedding counted once) and training FLOPs per token (6N and with the attention term) "
                    "for a vocabulary of K units + EOS + pad.",
    )
    p.add_argument("--vocab", type=int, default=500, metavar="K", help="number of units K (LM vocabulary = K + 2)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(handler=_models)

    t = sub.add_parser("train", help="train one model on a unit dataset (resumable)", formatter_class=formatter_class,
                       description=TRAIN_DESCRIPTION)
    t.add_argument("--units", metavar="DIR", default=argparse.SUPPRESS, help="unit dataset directory (required unless --resume)")
    t.add_argument("--model", metavar="NAME", default=argparse.SUPPRESS, help="ladder size: 20M 85M 155M 309M 823M tiny-100K tiny-300K tiny-1M tiny-3M tiny-6M")
    t.add_argument("--tokens", type=_int_tokens, metavar="D", default=argparse.SUPPRESS, help="token budget D (rounded down to whole updates)")
    t.add_argument("-o", "--out", metavar="RUN_DIR", default=argparse.SUPPRESS, help="run directory to create or continue")
    t.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS, help="continue the run in RUN_DIR with its saved config")
    t.add_argument("--unique-tokens", type=_int_tokens, metavar="U", help="cap on distinct training tokens (D/U epochs); default: all", default=argparse.SUPPRESS)
    t.add_argument("--tokens-per-update", type=_int_tokens, metavar="T", help="tokens per optimizer update; default: the paper's for the size", default=argparse.SUPPRESS)
    t.add_argument("--micro-batch", type=int, help="sequences per forward pass per worker (memory only); default: the size's", default=argparse.SUPPRESS)
    t.add_argument("--context", type=int, help="sequence length; default: the size's (paper 2050)", default=argparse.SUPPRESS)
    t.add_argument("--workers", type=int, help="Ray Train workers (>1: DDP on Ray); default 1", default=argparse.SUPPRESS)
    t.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; default: 1 when CUDA is present, else 0", default=argparse.SUPPRESS)
    t.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per Ray Train worker; default 1", default=argparse.SUPPRESS)
    t.add_argument("--parallel", choices=("ddp", "fsdp"), help="Ray Train strategy; default ddp", default=argparse.SUPPRESS)
    t.add_argument("--use-ray", action="store_true", help="use Ray Train TorchTrainer even for one worker", default=argparse.SUPPRESS)
    t.add_argument("--checkpoint-every", type=int, metavar="K", help="updates between checkpoints; default ~10 per run", default=argparse.SUPPRESS)
    t.add_argument("--report-every", type=int, help="updates between reports; default ~50 per run", default=argparse.SUPPRESS)
    t.add_argument("--eval-every", type=int, help="updates between validation losses; default = --report-every", default=argparse.SUPPRESS)
    t.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept on disk; default 2", default=argparse.SUPPRESS)
    t.add_argument("--eval-tokens", type=_int_tokens, help="validation tokens per evaluation; default 262,144", default=argparse.SUPPRESS)
    t.add_argument("--test-tokens", type=_int_tokens, help="held-out tokens for the final test loss; default 4,194,304", default=argparse.SUPPRESS)
    t.add_argument("--data-cache", metavar="DIR", help="cache of packed splits (share one across a sweep); default RUN_DIR/data", default=argparse.SUPPRESS)
    t.add_argument("--seed", type=int, help="seed of initial weights and data order; default 0", default=argparse.SUPPRESS)
    t.add_argument("--lr", type=float, help="peak learning rate; default 5e-4", default=argparse.SUPPRESS)
    t.add_argument("--min-lr", type=float, help="final learning rate of the cosine; default 5e-5", default=argparse.SUPPRESS)
    t.add_argument("--warmup-steps", type=int, help="linear warmup updates; default 1%% of the updates", default=argparse.SUPPRESS)
    t.add_argument("--val-fraction", type=float, help="fraction of utterances (by utt_id hash) for validation; default 0.02", default=argparse.SUPPRESS)
    t.add_argument("--test-fraction", type=float, help="fraction of utterances for the test loss; default 0.02", default=argparse.SUPPRESS)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="one-worker device; default auto", default=argparse.SUPPRESS)
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="auto: bf16 autocast on CUDA", default=argparse.SUPPRESS)
    t.add_argument("--compile", dest="compile", action="store_true", help="torch.compile (default: on CUDA)", default=argparse.SUPPRESS)
    t.add_argument("--no-compile", dest="compile", action="store_false", help="never torch.compile", default=argparse.SUPPRESS)
    t.add_argument("--attn", dest="attn_implementation", choices=("auto", "sdpa", "eager", "flash_attention_2"),
                   help="attention kernel; auto: flash_attention_2 when installed on CUDA, else SDPA", default=argparse.SUPPRESS)
    t.add_argument("--peak-tflops", type=float, help="device peak for MFU when the built-in table does not know it", default=argparse.SUPPRESS)
    t.add_argument("--threads", type=int, help="torch CPU threads", default=argparse.SUPPRESS)
    t.add_argument("--max-failures", type=int, help="Ray Train restarts of a failed worker group; default 0", default=argparse.SUPPRESS)
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar", default=argparse.SUPPRESS)
    t.add_argument("--plan", action="store_true",
                   help="print the exact schedule (updates, tokens, accumulation, warmup, FLOPs) and exit without training")
    t.add_argument("--json", action="store_true", help="print the results row as JSON")
    t.set_defaults(handler=_train)


# argparse dest -> TrainConfig field, for options that map one to one
_FIELDS = ("unique_tokens", "tokens_per_update", "micro_batch", "context", "workers", "gpus_per_worker",
           "cpus_per_worker", "parallel", "use_ray", "checkpoint_every", "keep_checkpoints", "eval_tokens", "test_tokens", "data_cache", "report_every", "eval_every", "seed", "lr",
           "min_lr", "warmup_steps", "val_fraction", "test_fraction", "device", "precision", "compile",
           "attn_implementation", "peak_tflops", "threads", "max_failures", "progress")


def _models(args) -> int:
    from slmscale.models.ladder import ladder_table

    rows = ladder_table(args.vocab)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'name':<10}{'layers':>7}{'d_model':>8}{'heads':>6}{'ffn':>6}{'context':>8}{'params':>14}{'FLOPs/token':>14}{'tokens/update':>15}"
    print(f"vocabulary: {args.vocab} units + EOS + pad = {args.vocab + 2}")
    print(head)
    for r in rows:
        print(f"{r['name']:<10}{r['n_layers']:>7}{r['d_model']:>8}{r['n_heads']:>6}{r['ffn']:>6}{r['context']:>8}"
              f"{r['n_params']:>14,}{r['flops_per_token']:>14.4g}{r['tokens_per_update']:>15,}")
    return 0


def _train(args) -> int:
    from slmscale.errors import SlmscaleError
    from slmscale.models.train import TrainConfig, train

    for name in ("units", "model", "tokens", "out", "resume"):
        setattr(args, name, getattr(args, name, None))
    overrides = {k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None}
    if not overrides.get("use_ray"):
        overrides.pop("use_ray", None)
    if args.resume:
        if args.units or args.model or args.tokens:
            raise SlmscaleError("--resume continues a run with its saved config; drop --units/--model/--tokens")
        cfg = TrainConfig.load(args.resume)
        cfg.out_dir = args.resume
        for k, v in overrides.items():
            setattr(cfg, k, v)
    else:
        missing = [f"--{n}" for n, v in (("units", args.units), ("model", args.model), ("tokens", args.tokens), ("out", args.out)) if not v]
        if missing:
            raise SlmscaleError(f"train: missing {', '.join(missing)} (or use --resume RUN_DIR)")
        cfg = TrainConfig(units_dir=args.units, model=args.model, out_dir=args.out, tokens=args.tokens, **overrides)
    if args.plan:
        from slmscale.models.config import make_plan
        from slmscale.tokenization.schema import read_meta

        plan = make_plan(cfg.validate(), read_meta(cfg.units_dir).vocab_size)
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    row = train(cfg)
    if args.json:
        print(json.dumps(row, indent=2, default=str))
    else:
        print(f"{row['run_id']}: model {row['model']} ({int(row['n_params']):,} params), {int(row['tokens']):,} tokens "
              f"({row['epochs']:.2f} epochs), test loss {row['loss']:.4f}, val loss {row['val_loss']:.4f}, "
              f"{row['tokens_per_s']:.0f} tokens/s -> {cfg.out_dir}/results.parquet")
    return 0
