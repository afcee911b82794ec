"""`slmscale` — the one command-line entry point.

Each stage contributes its subcommands through a `register(subparsers)` function in its own `cli`
module; handlers import their heavy dependencies (torch, ray, audio) lazily so `--help` is instant
and `slmscale fit` works without Ray or audio code loading. Every handler is a thin wrapper over a
library function of the same stage.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from slmscale.errors import SlmscaleError

# Modules that contribute subcommands, in the order of the data path:
# audio manifest -> unit shards -> trained models -> sweep trials -> results table -> fit.
REGISTRARS = (
    "slmscale.tokenization.cli",  # slmscale tokenize ...
    "slmscale.models.cli",  # slmscale models, slmscale train
    "slmscale.models.evaluation.cli",  # slmscale eval
    "slmscale.models.generation.cli",  # slmscale generate
    "slmscale.sweep.commands",  # slmscale sweep ...
    "slmscale.demo",  # slmscale demo
    "slmscale.analysis.cli",  # slmscale fit, optimal, downstream, report
)

DESCRIPTION = """\
slmscale: scaling studies of speech language models on Ray
(Cuervo & Marxer, "Scaling Properties of Speech Language Models", EMNLP 2024).

Data path:  audio manifest -> unit shards -> trials -> results table -> fit
  tokenize   audio -> HuBERT/MFCC features -> k-means units (Ray Data)
  train      one Llama-style model on a unit dataset (Ray Train)
  sweep      the N x D grid of training runs (Ray Tune), resumable
  eval       sBLIMP / StoryCloze scores of trained models
  fit, optimal, downstream, report
             scaling-law fits, compute-optimal N/D, downstream power laws, plots
Run `slmscale COMMAND --help` for the inputs, outputs and defaults of each command.
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmscale", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="store_true", help="print the code version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # stage not installed in this tree
            raise
        module.register(sub, _Formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from slmscale.io import code_version

        print(code_version())
        return 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        rc = args.handler(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not as noise at interpreter exit
    except SlmscaleError as exc:
        print(f"slmscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slmscale {args.command}: interrupted; finished work is kept and a rerun resumes it", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`slmscale sweep status --json | head`): nothing left to say, and Python's own
        # flush at exit would fail again on the dead pipe, so point stdout at /dev/null first.
        _silence_stdout()
        print(f"slmscale {args.command}: error: the reader closed the output pipe before all was written", file=sys.stderr)
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except OSError as exc:  # a path that is a file, a read-only folder, a full disk: the user's to fix
        if os.environ.get("SLMSCALE_TRACEBACK"):
            raise
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename and os.path.isfile(exc.filename):
            message = f"{exc.filename} is a file, expected a folder (or a path inside one)"
        else:
            message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        print(f"slmscale {args.command}: error: {message}", file=sys.stderr)
        return 1
    return int(rc or 0)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout closed or not a real file
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
