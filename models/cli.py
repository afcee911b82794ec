"""`slmscale models` (the ladder table) and `slmscale train` (one training run). Thin wrappers over
`models.ladder.ladder_table` and `models.train.train`; torch/transformers are imported only when a command runs."""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

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
    from slmscale.typed import parse_count

    try:
        value = parse_count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 2000000, 2e6 or 2M, got {text!r}") from None
    if not math.isfinite(value) or value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of tokens, got {text!r}")
    return int(value)


def _steps(text: str) -> tuple[int, ...]:
    """Update numbers as a comma-separated list: 80,160,400."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected update numbers like 80,160,400, got {text!r}") from None
    if any(step <= 0 for step in steps):
        raise argparse.ArgumentTypeError(f"expected positive update numbers, got {text!r}")
    return steps


# TrainConfig fields whose flag is not the generated `--field-name`: renames, aliases, metavars, custom parsers.
# Everything else (type, choices, default, help) comes from the field itself (models/config.py).
_FLAGS: dict[str, dict[str, Any]] = {
    "units_dir": {"flags": ("--units",), "metavar": "DIR"},
    "model": {"metavar": "NAME"},
    "tokens": {"metavar": "D", "type": _int_tokens},
    "out_dir": {"flags": ("-o", "--out"), "metavar": "RUN_DIR"},
    "unique_tokens": {"metavar": "U", "type": _int_tokens},
    "tokens_per_update": {"metavar": "T", "type": _int_tokens},
    "checkpoint_every": {"metavar": "K"},
    "eval_tokens": {"type": _int_tokens},
    "test_tokens": {"type": _int_tokens},
    "data_cache": {"metavar": "DIR"},
    "attn_implementation": {"flags": ("--attn",)},
    "branch_from": {"metavar": "TRUNK_DIR"},
    "keep_steps": {"metavar": "S,S,...", "type": _steps},
}
_INTERNAL = frozenset({"sync_to"})  # set by `train` itself (object-store runs), no flag
GIVEN = "given_fields"  # namespace attribute: the TrainConfig fields set on the command line


class _SetField(argparse.Action):
    """Store a TrainConfig field and record that the command line set it (with --resume, only those override
    the saved config). With `nargs=0` it is a flag: `const` maps each option string to the value it stores."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const[option_string] if self.nargs == 0 else values)
        setattr(namespace, GIVEN, {*getattr(namespace, GIVEN, ()), self.dest})


def train_flags(name: str) -> tuple[str, ...]:
    """The option strings of TrainConfig field `name` (a bool field defaulting to True: its `--no-` flag)."""
    from slmscale.models.config import TrainConfig

    if name in _FLAGS and "flags" in _FLAGS[name]:
        return _FLAGS[name]["flags"]
    flag = name.replace("_", "-")
    return (f"--no-{flag}",) if TrainConfig.model_fields[name].default is True else (f"--{flag}",)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: type, choices, default and help from the schema."""
    from slmscale.models.config import TrainConfig, field_type

    for name, info in TrainConfig.model_fields.items():
        if name in _INTERNAL:
            continue
        base, choices, _ = field_type(name)
        flags, extra = train_flags(name), _FLAGS.get(name, {})
        text = info.description.replace("%", "%%")
        if info.is_required():
            parser.add_argument(*flags, dest=name, action=_SetField, default=argparse.SUPPRESS,
                                type=extra.get("type", base), metavar=extra.get("metavar"),
                                help=f"{text} (required unless --resume)")
        elif base is bool and info.default is True:  # --no-FLAG turns it off
            parser.add_argument(*flags, dest=name, action=_SetField, nargs=0, const={flags[0]: False}, default=True,
                                help=f"{text}; {flags[0]} turns it off (default: %(default)s)")
        elif base is bool:  # default False: --FLAG turns it on; default None (auto): --FLAG / --no-FLAG
            values = {flags[0]: True, **({f"--no-{flags[0][2:]}": False} if info.default is None else {})}
            parser.add_argument(*values, dest=name, action=_SetField, nargs=0, const=values, default=info.default,
                                help=text)
        else:
            parser.add_argument(*flags, dest=name, action=_SetField, default=info.default, choices=choices,
                                type=extra.get("type", base), metavar=extra.get("metavar"), help=text)
        if name == "out_dir":  # after the four fields a new run needs
            parser.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                                help="continue the run in RUN_DIR with its saved config")


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
    _add_config_flags(t)
    t.add_argument("--plan", action="store_true",
                   help="print the exact schedule (updates, tokens, accumulation, warmup, FLOPs) and exit without training")
    t.add_argument("--json", action="store_true", help="print the results row as JSON")
    t.set_defaults(handler=_train)


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
    from slmscale.models.rundir import RunDir
    from slmscale.models.train import TrainConfig, train

    given = getattr(args, GIVEN, set())
    resume = getattr(args, "resume", None)
    if resume:
        if given & {"units_dir", "model", "tokens"}:
            raise SlmscaleError("--resume continues a run with its saved config; drop --units/--model/--tokens")
        cfg = TrainConfig.load(resume)
        cfg.out_dir = resume
        for name in sorted(given - {"out_dir"}):
            setattr(cfg, name, getattr(args, name))
    else:
        fields = {name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)}
        required = [name for name, info in TrainConfig.model_fields.items() if info.is_required()]
        missing = [train_flags(name)[-1] for name in required if not fields.get(name)]
        if missing:
            raise SlmscaleError(f"train: missing {', '.join(missing)} (or use --resume RUN_DIR)")
        cfg = TrainConfig(**fields)
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
              f"{row['tokens_per_s']:.0f} tokens/s -> {RunDir(cfg.out_dir).results}")
    return 0
