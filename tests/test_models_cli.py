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
