"""Warmup-stable-decay schedules: the LR multiplier's shape, and a cooldown branch started from a constant-LR
trunk's checkpoint is bitwise the standalone WSD run of the same budget (weights and every loss after the branch
point), while the trunk keeps its branch-point checkpoints through pruning."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmscale.errors import SlmscaleError
from slmscale.models.checkpoint import complete_steps
from slmscale.models.config import cooldown_start, make_plan
from slmscale.models.loop import WarmupStableDecay
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import TrainConfig, train

TPU = 512  # tiny-100K: context 64, 512 tokens per update
WARMUP = 2


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return write_pattern_units(tmp_path_factory.mktemp("units") / "u", n_units=40, n_utterances=300, seed=3)


def _cfg(units, out, updates: int, **kw) -> TrainConfig:
    base = dict(units_dir=str(units), model="tiny-100K", out_dir=str(out), tokens=TPU * updates, lr=2e-3,
                warmup_steps=WARMUP, report_every=1, eval_every=3, checkpoint_every=100, keep_checkpoints=1,
                eval_tokens=2048, test_tokens=2048, threads=1, progress=False)
    return TrainConfig(**{**base, **kw})


def _losses_after(run_dir: Path, step: int) -> list[tuple]:
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["train_loss"], m["val_loss"], m["lr"]) for m in lines if m["step"] > step]


def test_wsd_multiplier_warms_up_holds_then_cools_down_to_min():
    f = WarmupStableDecay(warmup=2, total=10, min_ratio=0.1, cooldown_start=8, shape="1-sqrt")
    assert [f(s) for s in range(10)] == [0.5, 1.0, 1, 1, 1, 1, 1, 1, 1.0, pytest.approx(0.1)]
    g = WarmupStableDecay(warmup=2, total=20, min_ratio=0.0, cooldown_start=10, shape="1-sqrt")
    assert g(14) == pytest.approx(1 - math.sqrt(4 / 9))  # 1 - sqrt(progress), progress over updates 11..20
    linear = WarmupStableDecay(warmup=2, total=20, min_ratio=0.0, cooldown_start=10, shape="linear")
    assert linear(14) == pytest.approx(5 / 9)
    trunk = WarmupStableDecay(warmup=2, total=20, min_ratio=0.1, cooldown_start=None, shape="1-sqrt")
    assert [trunk(s) for s in (0, 1, 19)] == [0.5, 1.0, 1.0]
    assert cooldown_start(10, 0.2) == 8 and cooldown_start(3, 0.01) == 2  # at least one cooldown update


def test_branch_from_trunk_is_bitwise_the_standalone_wsd_run(units, tmp_path):
    short, long = 10, 15  # two budgets sharing one trunk: branch points 8 and 12
    s_short, s_long = cooldown_start(short, 0.2), cooldown_start(long, 0.2)
    trunk = train(_cfg(units, tmp_path / "trunk", s_long, schedule="constant", keep_steps=(s_short, s_long)))
    assert trunk["schedule"] == "constant"
    # keep_checkpoints=1 prunes every other checkpoint, never a branch point.
    assert complete_steps(tmp_path / "trunk") == [s_short, s_long]

    standalone = train(_cfg(units, tmp_path / "standalone", short, schedule="wsd"))
    seen: list[int] = []
    branch = train(_cfg(units, tmp_path / "branch", short, schedule="wsd", branch_from=str(tmp_path / "trunk")),
                   report=lambda m, c: seen.append(m["step"]))
    assert seen[0] == s_short + 1  # started at the trunk's checkpoint, trained only the cooldown

    a, b = load_file(tmp_path / "standalone" / "model" / "model.safetensors"), \
        load_file(tmp_path / "branch" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses_after(tmp_path / "branch", s_short) == _losses_after(tmp_path / "standalone", s_short)
    assert branch["loss"] == standalone["loss"] and branch["val_loss"] == standalone["val_loss"]
    lrs = [lr for _, _, _, lr in _losses_after(tmp_path / "branch", s_short)]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(5e-5)  # cooldown from peak to min_lr

    final = json.loads((tmp_path / "branch" / "final.json").read_text())
    assert final["resumed_from_step"] == s_short
    assert 0 < final["wall_tokens_per_s"] < final["tokens_per_s"]  # the wall clock counts evals + checkpoints
    seconds = final["seconds"]
    assert seconds["wall"] >= seconds["updates"] + seconds["validation"] + seconds["checkpoints"] + seconds["final"]
    assert min(seconds.values()) > 0
    assert branch["wall_tokens_per_s"] == final["wall_tokens_per_s"]


def test_branch_needs_its_trunk_checkpoint_and_a_shared_warmup(units, tmp_path):
    (tmp_path / "empty-trunk").mkdir()
    with pytest.raises(SlmscaleError, match="no checkpoint of step 8"):
        train(_cfg(units, tmp_path / "b", 10, schedule="wsd", branch_from=str(tmp_path / "empty-trunk")))
    with pytest.raises(SlmscaleError, match="'branch_from' needs an explicit 'warmup_steps'"):
        _cfg(units, tmp_path / "b", 10, schedule="wsd", branch_from=str(tmp_path / "t"), warmup_steps=None)
    with pytest.raises(SlmscaleError, match="inside the 5-update warmup"):
        make_plan(_cfg(units, tmp_path / "b", 5, schedule="wsd", warmup_steps=5), 40)
