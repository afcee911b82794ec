"""One complete tiny run: the loop learns a learnable unit stream, and RUN_DIR holds what the contract says."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slmscale.analysis.schema import read_results
from slmscale.models.checkpoint import load_model
from slmscale.models.data import eval_sequences, load_unit_streams
from slmscale.models.loop import WarmupCosine
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import TrainConfig, train
from slmscale.tokenization.schema import meta_hash

N_UNITS = 50
STEPS = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    units = write_pattern_units(root / "units", n_units=N_UNITS, n_utterances=400, seed=2)
    cfg = TrainConfig(units_dir=str(units), model="tiny-100K", out_dir=str(root / "run"), tokens=512 * STEPS + 100,
                      unique_tokens=64 * 100 + 5, lr=3e-3, min_lr=3e-4, warmup_steps=5, report_every=10,
                      threads=1, progress=False)
    reports = []
    row = train(cfg, report=lambda m, c: reports.append((m, c)))
    return cfg, row, reports


def test_loss_falls_well_below_chance(run):
    cfg, row, reports = run
    chance = math.log(N_UNITS)
    assert reports[0][0]["train_loss"] > 0.8 * chance  # starts near guessing
    assert row["loss"] < 0.35 * chance, row["loss"]  # held-out test loss
    assert row["val_loss"] < 0.35 * chance


def test_results_row_counts_and_provenance(run):
    cfg, row, _ = run
    df = read_results(f"{cfg.out_dir}/results.parquet")
    assert len(df) == 1
    got = df.iloc[0]
    assert got["tokens"] == 512 * STEPS  # budget rounded down to whole updates, exactly
    assert got["unique_tokens"] == 6400  # U rounded down to whole sequences of 64
    assert got["epochs"] == pytest.approx(512 * STEPS / 6400)
    assert got["n_params"] == 110_144  # tiny-100K over 50 units + EOS + pad
    assert got["flops"] == 6 * got["n_params"] * got["tokens"]
    assert got["flops_exact"] == (6 * got["n_params"] + 12 * 2 * 64 * 64) * got["tokens"]
    assert got["units_meta_hash"] == meta_hash(cfg.units_dir) and got["tokenizer_hash"].startswith("synthetic-patterns")
    assert got["seed"] == 0 and got["code_version"].startswith("slmscale")
    assert json.loads(got["model_config"])["vocab_size"] == N_UNITS + 2
    assert got["tokens_per_s"] > 0 and np.isnan(got["mfu"])  # CPU: no known peak
    assert {k: row[k] for k in ("tokens", "loss")} == {"tokens": got["tokens"], "loss": got["loss"]}


def test_metrics_and_reports(run):
    cfg, _, reports = run
    text = open(f"{cfg.out_dir}/metrics.jsonl").read()
    assert "NaN" not in text  # strict JSON: unknown MFU on CPU is null
    lines = [json.loads(ln) for ln in text.splitlines()]
    assert all(m["mfu"] is None for m in lines)
    steps = [m["step"] for m in lines]
    assert steps == [m["step"] for m, _ in reports]
    # a report every 10 updates and at every checkpoint; the default cadence (every STEPS // 10 = 6 updates) writes
    # none within a minute of the run's start (test_default_checkpoints_keep_to_budget)
    assert all(c is None for _, c in reports)  # a run of seconds: no checkpoint is worth its time
    assert steps == list(range(10, STEPS + 1, 10))
    for m in lines:
        assert m["tokens"] == m["step"] * 512 and m["flops_6nd"] == 6 * 110_144 * m["tokens"]
        assert m["flops_exact"] > m["flops_6nd"] and m["tokens_per_s"] > 0
    assert lines[-1]["val_loss"] is not None and lines[-1]["step"] == STEPS


def test_run_json_and_load_model_reproduce_the_test_loss(run):
    cfg, row, _ = run
    info = json.load(open(f"{cfg.out_dir}/run.json"))
    assert (info["eos_id"], info["pad_id"], info["units_vocab_size"]) == (N_UNITS, N_UNITS + 1, N_UNITS)
    model, run_info = load_model(cfg.out_dir)
    assert run_info["finished"] and run_info["tokenizer_hash"] == info["tokenizer_hash"]
    streams = load_unit_streams(cfg.units_dir, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    ids, mask = eval_sequences(streams.test, 64, None, streams.pad_id)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)).logits[:, :-1]
    ce = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(ids[:, 1:]).flatten(), reduction="none")
    m = torch.from_numpy(mask[:, 1:]).flatten()
    assert float((ce * m).sum() / m.sum()) == pytest.approx(row["loss"], rel=1e-4)


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_default_checkpoints_keep_to_budget(tmp_path, monkeypatch):
    """The default cadence writes no checkpoint within a minute of the last (a run of seconds writes none, and none
    at its end: model/ holds it), and none that would take over CHECKPOINT_BUDGET of the wall time (each takes
    0.3 s here against a run of about a second: with the minute waived only the first is written); a cadence set
    in the config is kept exactly, the last update included."""
    import time as _time

    from slmscale.models import checkpoint as ckpt_io
    from slmscale.models import loop
    from slmscale.models.checkpoint import list_checkpoints
    from slmscale.models.rundir import RunDir

    write = ckpt_io.write_checkpoint

    def slow_write(*args, **kwargs):
        _time.sleep(0.3)
        return write(*args, **kwargs)

    monkeypatch.setattr(ckpt_io, "write_checkpoint", slow_write)
    units = write_pattern_units(tmp_path / "units", n_units=20, n_utterances=100, seed=3)
    base = dict(units_dir=str(units), model="tiny-100K", tokens=512 * 40, lr=2e-3, threads=1, progress=False)
    train(TrainConfig(**base, out_dir=str(tmp_path / "default")))
    assert list_checkpoints(tmp_path / "default") == [] and (tmp_path / "default" / "model").is_dir()
    monkeypatch.setattr(loop, "CHECKPOINT_MIN_INTERVAL_S", 0.0)
    train(TrainConfig(**base, out_dir=str(tmp_path / "budget")))
    assert [p.name for p in list_checkpoints(tmp_path / "budget")] == ["step-0000004"]
    assert RunDir(tmp_path / "budget").read_final()["seconds"]["checkpoints"] < 0.6
    train(TrainConfig(**base, out_dir=str(tmp_path / "set"), checkpoint_every=10, keep_checkpoints=5))
    assert [p.name for p in list_checkpoints(tmp_path / "set")] == [f"step-{s:07d}" for s in (10, 20, 30, 40)]


def test_default_cadence_sizes_the_validation_to_the_run(tmp_path):
    """With the default eval_every, one evaluation costs at most 2.5 % of what the run trains on itself (a
    forward token ~1/3 of a training token), never under 16 sequences; a long run keeps eval_tokens; a WSD
    branch is sized by its cooldown; an explicit eval_every keeps eval_tokens as given."""
    from slmscale.models.config import MIN_EVAL_SEQUENCES, make_plan

    base = dict(units_dir=str(tmp_path), model="tiny-100K", context=64, tokens_per_update=512, out_dir=str(tmp_path))
    short = make_plan(TrainConfig(**base, tokens=512 * 100), 50)  # 51,200 tokens: 2.5 % x 3 = 3,840 = 60 sequences
    assert (short.eval_tokens, short.eval_every) == (60 * 64, 100)
    tiny = make_plan(TrainConfig(**base, tokens=512 * 10), 50)
    assert tiny.eval_tokens == MIN_EVAL_SEQUENCES * 64
    long = make_plan(TrainConfig(**base, tokens=512 * 200_000), 50)
    assert long.eval_tokens == 262_144 and long.eval_every == 200_000 // 10
    branch = make_plan(TrainConfig(**base, tokens=512 * 500, schedule="wsd", warmup_steps=5,
                                   branch_from=str(tmp_path / "trunk")), 50)  # cooldown: 100 updates
    assert branch.eval_tokens == short.eval_tokens
    explicit = make_plan(TrainConfig(**base, tokens=512 * 100, eval_every=10), 50)
    assert (explicit.eval_tokens, explicit.eval_every) == (262_144, 10)
