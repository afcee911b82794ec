"""`slmscale models` and `slmscale train` through the real entry point (in process)."""
from __future__ import annotations

import json

import pandas as pd

from slmscale.cli import main
from slmscale.models.synthetic_units import write_pattern_units


def test_models_json_lists_exact_counts(capsys):
    assert main(["models", "--json", "--vocab", "500"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["20M"]["n_params"] == 20_710_912 and rows["20M"]["vocab"] == 502
    assert rows["823M"]["n_params"] == 823_179_264
    assert main(["models", "--vocab", "100"]) == 0
    table = capsys.readouterr().out
    assert "102" in table and "tiny-1M" in table


def test_train_command_then_resume_prints_the_row(tmp_path, capsys):
    units = write_pattern_units(tmp_path / "u", n_units=30, n_utterances=200, seed=6)
    out = tmp_path / "run"
    args = ["train", "--units", str(units), "--model", "tiny-100K", "--tokens", "2k", "--tokens-per-update", "512",
            "--checkpoint-every", "2", "--seed", "3", "--threads", "1", "--no-progress", "-o", str(out), "--json"]
    assert main(args + ["--plan"]) == 0  # the schedule, without training
    plan = json.loads(capsys.readouterr().out)
    assert (plan["total_steps"], plan["tokens"], plan["seqs_per_update"]) == (3, 1536, 8) and not out.exists()
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tokens"] == 1536 and row["seed"] == 3  # 2000 tokens -> 3 whole updates of 512
    assert row["unique_tokens"] == 1536 and row["epochs"] == 1.0  # less than one pass over the data
    assert pd.read_parquet(out / "results.parquet")["loss"].iloc[0] == row["loss"]
    assert main(["train", "--resume", str(out), "--json"]) == 0  # finished: reads the row back
    assert json.loads(capsys.readouterr().out)["loss"] == row["loss"]


def test_train_bad_input_exits_2_with_one_line(tmp_path, capsys):
    units = write_pattern_units(tmp_path / "u", n_units=30, n_utterances=200, seed=6)
    rc = main(["train", "--units", str(units), "--model", "tiny-100K", "--tokens", "100", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "smaller than one optimizer update" in err and "Traceback" not in err
    assert main(["train", "--units", str(units)]) == 2
    assert "missing --model, --tokens, --out" in capsys.readouterr().err


def _train_parser():
    import argparse

    from slmscale.models import cli as models_cli

    sub = argparse.ArgumentParser(prog="slmscale").add_subparsers()
    models_cli.register(sub, argparse.ArgumentDefaultsHelpFormatter)
    return sub.choices["train"]


def test_train_flags_are_generated_from_the_config_schema():
    """Every TrainConfig field has a flag whose default and help text come from the schema (models/config.py)."""
    import argparse

    from slmscale.models.cli import _INTERNAL, GIVEN
    from slmscale.models.config import TrainConfig

    parser = _train_parser()
    help_text = " ".join(parser.format_help().split())
    dests = {a.dest for a in parser._actions}
    assert _INTERNAL == {"sync_to"} and not _INTERNAL & dests  # set by train itself for object-store runs
    for name, info in TrainConfig.model_fields.items():
        if name in _INTERNAL:
            continue
        assert name in dests, f"no flag for TrainConfig.{name}"
        expected = argparse.SUPPRESS if info.is_required() else info.default
        assert parser.get_default(name) == expected, name
        assert " ".join(info.description.split()) in help_text, name
    # renames and aliases of the explicit table; the bool forms follow the field's default
    for flags in ("--units DIR", "-o RUN_DIR, --out RUN_DIR", "--attn {auto,sdpa,eager,flash_attention_2}",
                  "--use-ray", "--compile, --no-compile", "--no-progress", "--tokens D", "--resume RUN_DIR"):
        assert f" {flags} " in help_text, flags

    # Nothing but the required fields given: the parser's defaults make exactly TrainConfig's defaults.
    args = parser.parse_args(["--units", "u", "--model", "tiny-100K", "--tokens", "1.5k", "-o", "o"])
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    assert TrainConfig(**fields) == TrainConfig(units_dir="u", model="tiny-100K", tokens=1500, out_dir="o")
    assert getattr(args, GIVEN) == {"units_dir", "model", "tokens", "out_dir"}

    # With --resume only the flags given override the saved config (a flag set to its default still counts).
    args = parser.parse_args(["--resume", "r", "--no-compile", "--workers", "1", "--eval-tokens", "2M",
                              "--grad-clip", "0.5", "--no-progress"])
    assert getattr(args, GIVEN) == {"compile", "workers", "eval_tokens", "grad_clip", "progress"}
    assert (args.compile, args.workers, args.eval_tokens, args.grad_clip, args.progress) == (False, 1, 2_000_000, 0.5, False)


def test_train_bad_field_value_names_the_field(tmp_path, capsys):
    units = write_pattern_units(tmp_path / "u", n_units=30, n_utterances=200, seed=6)
    base = ["train", "--units", str(units), "--model", "tiny-100K", "--tokens", "2k", "-o", str(tmp_path / "r")]
    assert main(base + ["--beta1", "1.5", "--plan"]) == 2
    err = capsys.readouterr().err
    assert "field 'beta1': expected a finite number in [0, 1), got 1.5" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--lr", "1e-4", "--min-lr", "1e-3", "--plan"]) == 2
    assert "field 'min_lr' = 0.001, expected in [0, lr=0.0001]" in capsys.readouterr().err
    assert main(base + ["--resume", str(tmp_path / "r")]) == 2  # --resume takes the saved config's identity
    assert "drop --units/--model/--tokens" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
