"""A small grid end to end on local Ray (plan -> launch -> status -> results -> fit), and launch-time errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slmscale.analysis.schema import CANONICAL_COLUMNS, PROVENANCE_COLUMNS
from slmscale.cli import main

REPO = Path(__file__).resolve().parent.parent
# Small enough for a CPU test: context 64, 512 tokens per update, tiny evaluation sets.
FAST_TRAIN = {"context": 64, "tokens_per_update": 512, "eval_tokens": 2048, "test_tokens": 2048, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from slmscale.models.synthetic_units import write_pattern_units

    return write_pattern_units(tmp_path_factory.mktemp("units"), n_units=50, n_utterances=300, seed=1)


def write_sblimp_with_units(root: Path, train_units: Path) -> tuple[Path, Path]:
    """A tiny sBLIMP-layout folder (gold.csv + WAVs, 8 pairs x 1 voice) and its unit dataset, encoded "with the
    model's tokenizer" (same tokenizer hash as the training units), so a trial can score it without audio models."""
    import numpy as np
    import pyarrow as pa
    import soundfile as sf

    from slmscale.tokenization.schema import UnitsMeta, read_meta, write_meta, write_shard

    meta = read_meta(train_units)
    split = root / "syntactic" / "dev"
    split.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, names, seqs = [], [], []
    for pair in range(8):
        for label in (1, 0):
            name = f"p{pair}_{label}"
            rows.append(f"{pair},{name},phen{pair % 2},s,{label},x,v1")
            sf.write(split / f"{name}.wav", np.zeros(160, np.float32), 16000)
            names.append(name)
            seqs.append(rng.integers(0, meta.vocab_size, size=10).tolist())
    (split / "gold.csv").write_text("id,filename,type,subtype,correct,transcription,voice\n" + "\n".join(rows) + "\n")
    units = root / "units"
    write_shard(units / "shard-00000.parquet", pa.table({
        "utt_id": names, "units": seqs, "durations": [[1] * 10] * len(names), "n_frames": [10] * len(names),
        "n_units": [10] * len(names), "duration_s": [0.4] * len(names), "source": ["bench"] * len(names),
        "sha256": [""] * len(names)}))
    write_meta(units, UnitsMeta(vocab_size=meta.vocab_size, tokenizer=meta.tokenizer, dedup=meta.dedup))
    return split, units


def write_grid(path: Path, **fields) -> Path:
    raw = {"name": "t", "models": ["tiny-100K"], "tokens": [2048], "seeds": [0], "train": FAST_TRAIN,
           "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "max_failures": 1, **fields}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.ray
def test_small_grid_end_to_end(ray_local, units, tmp_path, capsys):
    bench, bench_units = write_sblimp_with_units(tmp_path / "sblimp", units)
    grid = write_grid(tmp_path / "grid.yaml", models=["tiny-100K", "tiny-1M"], tokens=[2048, 4096, 8192],
                      eval=[{"benchmark": str(bench), "units": str(bench_units)}])
    storage = tmp_path / "my sweeps" / "run 1"  # spaces must work

    assert main(["sweep", "plan", str(grid), "--units", str(units)]) == 0
    assert "6 trials" in capsys.readouterr().out

    assert main(["sweep", "launch", str(grid), "--units", str(units), "--storage", str(storage), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 trials finished" in out

    assert main(["sweep", "status", str(storage), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["state"] for s in status] == ["FINISHED"] * 6
    assert all(s["tokens_done"] == s["tokens_target"] and s["attempts"] == 1 for s in status)

    results = tmp_path / "results.parquet"
    assert main(["sweep", "results", str(storage), "-o", str(results)]) == 0
    df = pd.read_parquet(results)
    assert sorted(df["run_id"]) == sorted(s["run_id"] for s in status) and df["run_id"].is_unique
    for col in CANONICAL_COLUMNS + PROVENANCE_COLUMNS:
        assert col in df.columns, col
    sweep = json.loads((storage / "sweep.json").read_text())
    assert (df["units_meta_hash"] == sweep["units_meta_hash"]).all()
    assert (df["flops"] == 6 * df["n_params"] * df["tokens"]).all()
    assert (df["unique_tokens"] == df["tokens"]).all() and (df["epochs"] == 1).all()
    assert df["code_version"].str.startswith("slmscale").all()
    assert (df["n_units"] == 50).all() and (df["seed"] == 0).all() and df["tokenizer_hash"].notna().all()
    assert {json.loads(c)["hidden_size"] for c in df["model_config"]} == {64, 128}
    # More training lowers the test loss for each size (a real signal from real training, not a stub).
    for _, g in df.groupby("model"):
        g = g.sort_values("tokens")
        assert g["loss"].iloc[-1] < g["loss"].iloc[0]
    # Downstream evaluation ran in every trial and its metric columns are in the table.
    assert df["sblimp_macro"].between(0, 1).all() and df["sblimp_pair"].between(0, 1).all()
    for run_dir in df["run_dir"]:
        assert list(Path(run_dir, "eval").glob("*.json"))  # models.evaluation's full result, next to the run
    # The live copy, rewritten as trials finished, holds the same rows.
    assert sorted(pd.read_parquet(storage / "results.parquet")["run_id"]) == sorted(df["run_id"])

    # The table feeds the analysis stage unchanged.
    from slmscale.analysis.schema import read_results

    assert len(read_results(results)) == 6
    assert main(["fit", "--results", str(results), "--grid", "coarse", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    flat = json.dumps(fit)
    assert all(key in flat for key in ('"E"', '"A"', '"B"', '"alpha"', '"beta"')), fit


@pytest.mark.ray
def test_grid_that_does_not_fit_is_refused_before_launch(ray_local, units, tmp_path, capsys):
    grid = write_grid(tmp_path / "big.yaml", resources={"workers": 1, "cpus_per_worker": 64, "gpus_per_worker": 0})
    storage = tmp_path / "s"
    assert main(["sweep", "launch", str(grid), "--units", str(units), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "needs a worker with 64 CPU and 0 GPU" in err and "no node of the cluster" in err
    assert not storage.exists()  # nothing launched, nothing written

    gpu = write_grid(tmp_path / "gpu.yaml", resources={"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1})
    assert main(["sweep", "launch", str(gpu), "--units", str(units), "--storage", str(storage)]) == 2
    assert "GPU" in capsys.readouterr().err and not storage.exists()


def test_unreachable_address_is_a_clear_error(units, tmp_path):
    grid = write_grid(tmp_path / "g.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "slmscale", "sweep", "launch", str(grid), "--units", str(units),
         "--storage", str(tmp_path / "s"), "--address", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 2
    assert "could not reach a Ray cluster at --address '127.0.0.1:9'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_launch_input_errors(units, tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml")
    assert main(["sweep", "launch", str(grid), "--storage", str(tmp_path / "s")]) == 2
    assert "field 'units' is not set; pass --units" in capsys.readouterr().err
    assert main(["sweep", "launch", str(grid), "--units", str(tmp_path / "nope"), "--storage", str(tmp_path / "s")]) == 2
    assert "unit dataset not found" in capsys.readouterr().err
    bad_train = write_grid(tmp_path / "b.yaml", train={"learning_rate": 1e-3})
    assert main(["sweep", "launch", str(bad_train), "--units", str(units), "--storage", str(tmp_path / "s")]) == 2
    assert "unknown TrainConfig field(s) ['learning_rate']" in capsys.readouterr().err
    # An object store this process cannot use (no server at the test endpoint, or no such bucket): one line.
    assert main(["sweep", "launch", str(grid), "--units", str(units), "--storage", "s3://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert "--storage s3://bucket/x: " in err and "Traceback" not in err
    for cmd in ("status", "results", "resume"):
        assert main(["sweep", cmd, str(tmp_path)]) == 2
        assert "not a sweep directory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_multi_worker_trial_runs_ray_train_inside_tune(ray_local, units, tmp_path):
    """workers > 1: the trainable (0.5 CPU) starts a Ray Train TorchTrainer (2 gloo workers x 0.5 CPU)."""
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch

    grid = write_grid(tmp_path / "mw.yaml", tokens=[4096], resources={"workers": 2, "cpus_per_worker": 0.5},
                      max_failures=0)
    summary = launch(load_grid(grid), tmp_path / "s", units=str(units), verbose=0)
    assert summary["finished"] == 1, summary
    run_dir = tmp_path / "s" / "runs" / "tiny-100K-D4.1k-s0"
    assert json.loads((run_dir / "config.json").read_text())["workers"] == 2
    assert (run_dir / "ray_train").is_dir()  # the TorchTrainer's own run storage inside the run dir
    df = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert len(df) == 1 and df["loss"].iloc[0] > 0


def test_trial_configs_are_checked_before_launch(units, tmp_path, capsys):
    # 256 tokens < one update of 512: models.train would refuse it; the sweep refuses the grid up front.
    grid = write_grid(tmp_path / "g.yaml", tokens=[256, 4096])
    assert main(["sweep", "launch", str(grid), "--units", str(units), "--storage", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "trial tiny-100K-D256-s0" in err and "smaller than one optimizer update" in err
    bad = write_grid(tmp_path / "b.yaml", train={**FAST_TRAIN, "lr": -1})
    assert main(["sweep", "launch", str(bad), "--units", str(units), "--storage", str(tmp_path / "s")]) == 2
    assert "field 'lr'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_unit_dataset_too_small_for_the_splits_is_refused_before_launch(tmp_path, capsys):
    from slmscale.models.synthetic_units import write_pattern_units

    few = write_pattern_units(tmp_path / "few", n_units=50, n_utterances=6, seed=1)  # 2% splits: empty val/test
    grid = write_grid(tmp_path / "g.yaml")
    assert main(["sweep", "launch", str(grid), "--units", str(few), "--storage", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "split is empty" in err and "6 utterances" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_failing_trial_is_reported_as_error(ray_local, units, tmp_path, capsys):
    # A unique-token cap above what the data holds passes the grid checks but is refused by models.train in
    # the trial, after loading the data: the trial errors (max_failures 0), the launch says so and exits 1.
    grid = write_grid(tmp_path / "g.yaml", tokens=[20_000_000], unique_tokens=[10_000_000], max_failures=0)
    storage = tmp_path / "s"
    assert main(["sweep", "launch", str(grid), "--units", str(units), "--storage", str(storage), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 trials finished" in out and "errored: tiny-100K-D20M-U10M-s0" in out and "sweep resume" in out
    assert main(["sweep", "status", str(storage), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "ERROR" and row["failures"] == 1
    assert main(["sweep", "results", str(storage)]) == 2
    assert "no trial has finished yet" in capsys.readouterr().err

