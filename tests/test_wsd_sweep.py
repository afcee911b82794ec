"""WSD sweeps: the plan (one trunk per size, one cooldown branch per D, the compute actually spent), and the tiny
WSD grid end to end on local Ray: branches start from the trunk's checkpoints while it trains, a trunk killed
before some branches started resumes and its later branches still match a standalone WSD run bitwise, and a
driver SIGKILLed mid-sweep is finished by `sweep resume` with every point exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slmscale.cli import main
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent
GRIDS = REPO / "sweep" / "grids"
# 512 tokens per update: D = 2048, 4096, 32768 are 4, 8 and 64 updates, cooling down from updates 3, 6 and 51.
FAST_TRAIN = {"context": 64, "tokens_per_update": 512, "eval_tokens": 2048, "test_tokens": 2048, "checkpoint_every": 4}
TOKENS = [2048, 4096, 32768]
LONG = "tiny-100K-D32.8k-s0"
TRUNK = "tiny-100K-trunk-s0"


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    from slmscale.models.synthetic_units import write_pattern_units

    return write_pattern_units(tmp_path_factory.mktemp("units"), n_units=50, n_utterances=300, seed=4)


def write_grid(path: Path, **fields) -> Path:
    raw = {"name": "wsd", "models": ["tiny-100K"], "tokens": TOKENS, "seeds": [0], "train": FAST_TRAIN,
           "schedule": "wsd", "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
           "max_failures": 2, "max_concurrent": 2, **fields}
    path.write_text(yaml.safe_dump(raw))
    return path


def plan_json(grid: Path, capsys, *extra: str) -> dict:
    assert main(["sweep", "plan", str(grid), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_grid_with_wsd_spends_at_least_1_8x_less_for_the_same_40_points(capsys):
    cosine, wsd = plan_json(GRIDS / "paper.yaml", capsys), plan_json(GRIDS / "paper-wsd.yaml", capsys)
    assert cosine["points"] == wsd["points"] == 40
    assert cosine["total_flops"] == pytest.approx(cosine["points_flops"])  # cosine pays every point in full
    assert wsd["points_flops"] == pytest.approx(cosine["points_flops"])  # same points, same 6ND per row
    assert cosine["total_flops"] / wsd["total_flops"] >= 1.8  # f = 0.2: 240 N / 128 N = 1.875
    rows = wsd["trials"]
    trunks = [r for r in rows if r["schedule"] == "constant"]
    assert len(trunks) == 5 and all(r["trunk"] in {t["run_id"] for t in trunks} for r in rows if r["schedule"] == "wsd")
    assert wsd["total_flops"] == pytest.approx(sum(r["spent_flops"] for r in rows))


def test_wall_clock_bound_counts_the_trunk_a_branch_waits_for(capsys):
    """`sweep plan`'s wall-clock lower bound: a branch cannot finish before its trunk has trained up to its branch
    point and it has cooled down, so the WSD paper grid's longest chain is the cosine grid's longest run (the
    largest D of the largest size, trained in sequence either way), not the longest trunk alone."""
    import re

    def longest(grid: str) -> float:
        assert main(["sweep", "plan", str(GRIDS / grid)]) == 0
        return float(re.search(r"longest chain ([0-9.e+]+) h", capsys.readouterr().out).group(1))

    assert longest("paper-wsd.yaml") == pytest.approx(longest("paper.yaml"), rel=0.01)


def test_trunk_checkpoints_every_branch_point_with_one_shared_warmup(units, tmp_path):
    from slmscale.models.config import make_plan as train_plan
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.plan import make_plan
    from slmscale.sweep.trainable import train_config_for

    plan = make_plan(load_grid(write_grid(tmp_path / "g.yaml")), str(units))
    [trunk] = [t for t in plan.trials if not t.is_point]
    assert trunk.keep_steps == (3, 6, 51) and trunk.tokens == 51 * 512
    settings = {"units": str(units), "resources": {"tiny-100K": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}},
                "train": {**FAST_TRAIN, "cooldown_fraction": 0.2}}
    trunk_cfg = train_config_for(trunk.to_dict(), settings, tmp_path / "trunk")
    assert trunk_cfg.schedule == "constant" and trunk_cfg.keep_steps == (3, 6, 51)
    for point in plan.points:
        cfg = train_config_for(point.to_dict(), settings, tmp_path / point.run_id, trunk_dir=tmp_path / "trunk")
        branch = train_plan(cfg, 50)
        assert cfg.branch_from == str(tmp_path / "trunk") and branch.warmup_steps == trunk_cfg.warmup_steps == 1
        assert branch.cooldown_start == point.branch_step in trunk.keep_steps


def _run_dir(storage: Path, run_id: str) -> Path:
    return storage / "runs" / run_id


def _steps(run_dir: Path) -> list[int]:
    from slmscale.models.checkpoint import complete_steps

    return complete_steps(run_dir)


@pytest.mark.ray
def test_trunk_killed_before_its_last_branch_started_resumes_and_the_branch_matches_standalone_wsd(
        ray_local, units, tmp_path):
    from slmscale.models.train import train
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch
    from slmscale.sweep.trainable import train_config_for

    storage = tmp_path / "sweep"
    trunk_dir, long_dir = _run_dir(storage, TRUNK), _run_dir(storage, LONG)
    killed: dict = {}

    def kill_trunk_midway():
        # Past the first two branch points, before the third: the long branch cannot have started yet.
        wait_for(lambda: 6 in _steps(trunk_dir) and not (trunk_dir / "row.json").exists(), 120, "the trunk at step 6")
        killed.update(json.loads((trunk_dir / "attempt.json").read_text()), long_started=long_dir.exists())
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_trunk_midway, daemon=True)
    killer.start()
    summary = launch(load_grid(write_grid(tmp_path / "g.yaml")), storage, units=str(units), verbose=0)
    killer.join(timeout=5)
    assert killed and not killed["long_started"]
    assert summary["finished"] == summary["trials"] == 4 and not summary["errored"]

    attempt = json.loads((trunk_dir / "attempt.json").read_text())
    assert attempt["attempt"] == 2 and attempt["resumed_from_step"] >= 6  # resumed, not restarted
    assert json.loads((long_dir / "attempt.json").read_text())["resumed_from_step"] == 51  # started from the trunk
    assert set(_steps(trunk_dir)) >= {3, 6, 51}  # the branch points survive pruning

    sweep = json.loads((storage / "sweep.json").read_text())
    trial = next(t for t in sweep["trials"] if t["run_id"] == LONG)
    standalone = train(train_config_for({**trial, "trunk": None}, sweep["settings"], tmp_path / "standalone"))
    row = json.loads((long_dir / "row.json").read_text())
    assert row["loss"] == standalone["loss"] and row["val_loss"] == standalone["val_loss"]  # bitwise on CPU


def test_wsd_sweep_over_peak_lrs_gives_every_lr_its_trunk_and_fits_the_best(ray_local, units, tmp_path):
    """A grid with `lrs`: one trunk per LR, every point once per LR through Tune, each run trained at its LR
    (config.json), the results rows carry it, and the fit's selection keeps each point's lowest loss."""
    from slmscale.analysis.fit import best_lr_rows
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch
    from slmscale.sweep.results import sweep_results

    grid = load_grid(write_grid(tmp_path / "g.yaml", tokens=[2048, 4096], lrs=[1e-3, 4e-3]))
    summary = launch(grid, tmp_path / "sweep", units=str(units), verbose=0)
    assert summary["finished"] == summary["trials"] == 6 and not summary["errored"]
    df = sweep_results(tmp_path / "sweep")
    assert len(df) == 4 and sorted(df["lr"]) == [1e-3, 1e-3, 4e-3, 4e-3]
    for row in df.itertuples():
        assert row.run_id.endswith(f"-lr{row.lr:g}") and row.trunk == f"tiny-100K-trunk-s0-lr{row.lr:g}"
        assert json.loads((_run_dir(tmp_path / "sweep", row.run_id) / "config.json").read_text())["lr"] == row.lr
        trunk_cfg = json.loads((_run_dir(tmp_path / "sweep", row.trunk) / "config.json").read_text())
        assert trunk_cfg["lr"] == row.lr and trunk_cfg["schedule"] == "constant"
    best, other = best_lr_rows(df)
    assert len(best) == 2 and len(other) == 2
    assert sorted(best["loss"]) == sorted(df.groupby("tokens")["loss"].min())


@pytest.mark.slow
@pytest.mark.ray
def test_killed_driver_then_resume_finishes_every_wsd_point_once(ray_local, units, tmp_path, capsys):
    # A trunk of 410 updates: long enough that a short branch starts (a fresh trial process: seconds) and
    # finishes while the trunk still trains.
    grid = write_grid(tmp_path / "grid.yaml", tokens=[4096, 8192, 262144], train={**FAST_TRAIN, "checkpoint_every": 32})
    storage = tmp_path / "wsd kill" / "sweep"
    env = {**os.environ, "RAY_ADDRESS": "", "TQDM_DISABLE": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "slmscale", "sweep", "launch", str(grid), "--units", str(units), "--storage",
         str(storage), "--quiet"],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    runs = storage / "runs"
    trunk_dir = runs / TRUNK
    try:
        def branch_done_trunk_running():
            if driver.poll() is not None:
                raise AssertionError(f"driver exited early: {driver.stderr.read().decode()[-2000:]}")
            done = [d for d in runs.glob("*-D*") if (d / "row.json").exists()]
            return done if done and not (trunk_dir / "row.json").exists() else None

        # A branch finished while its trunk still trains: branches do not wait for the trunk to end.
        wait_for(branch_done_trunk_running, 240, "a finished branch beside a running trunk")
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait(timeout=30)
    before = {d.name: (d / "row.json").stat().st_mtime_ns for d in runs.glob("*") if (d / "row.json").exists()}
    assert TRUNK not in before

    assert main(["sweep", "status", str(storage)]) == 0
    assert "WSD trunk(s) counted once" in capsys.readouterr().out
    assert main(["sweep", "resume", str(storage), "--quiet"]) == 0, capsys.readouterr()
    assert "4 of 4 trials finished" in capsys.readouterr().out
    for name, mtime in before.items():  # finished branches were not rerun
        assert (runs / name / "row.json").stat().st_mtime_ns == mtime
    assert json.loads((trunk_dir / "attempt.json").read_text())["attempt"] == 2

    out = tmp_path / "results.parquet"
    assert main(["sweep", "results", str(storage), "-o", str(out), "--complete"]) == 0
    df = pd.read_parquet(out).set_index("run_id")
    assert sorted(df.index) == sorted(d.name for d in runs.glob("*-D*")) and len(df) == 3  # no trunk row
    assert (df["schedule"] == "wsd").all() and (df["trunk"] == TRUNK).all()
    assert (df["flops"] == 6 * df["n_params"] * df["tokens"]).all()
    trunk_flops = df["trunk_flops"].iloc[0]
    spent = df["spent_flops"].sum() + trunk_flops
    sweep = json.loads((storage / "sweep.json").read_text())
    assert spent == pytest.approx(sweep["total_flops"]) and spent < df["flops"].sum()
    assert (df["wall_tokens_per_s"] < df["tokens_per_s"]).all()
