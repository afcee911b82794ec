"""`sweep status` from the files alone (no Ray): states, progress, loss, throughput and ETA of each trial."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slmscale.sweep.status import render_status, sweep_status


def make_sweep(root: Path, trials: list[str], tune_status: dict[str, str]) -> Path:
    (root / "runs").mkdir(parents=True)
    (root / "tune").mkdir()
    sweep = {"grid": {"name": "s"}, "units_meta_hash": "h", "settings": {"run_root": str(root / "runs")},
             "trials": [{"run_id": r, "model": "tiny-100K", "n_params": 1000, "tokens": 10_000, "budget": "tokens=10k"}
                        for r in trials]}
    (root / "sweep.json").write_text(json.dumps(sweep))
    # Tune's experiment state: trial JSON strings (config.run_id, status) + runtime JSON (num_failures).
    data = [[json.dumps({"config": {"run_id": r}, "status": st}), json.dumps({"num_failures": int(st == "ERROR")})]
            for r, st in tune_status.items()]
    (root / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": data}))
    return root


def report(run_dir: Path, step: int, tokens: int, loss: float, val: float | None, tps: float, age: float = 1.0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "tokens": tokens, "train_loss": loss, "val_loss": val,
                            "tokens_per_s": tps, "time": time.time() - age}) + "\n")


def test_status_states_progress_and_eta(tmp_path):
    root = make_sweep(tmp_path, ["done", "running", "failed", "waiting", "late"],
                      {"done": "TERMINATED", "running": "RUNNING", "failed": "ERROR", "waiting": "PENDING",
                       "late": "PENDING"})
    runs = root / "runs"
    (runs / "done").mkdir()
    (runs / "done" / "row.json").write_text(json.dumps({"tokens": 10_000, "loss": 2.5, "tokens_per_s": 100.0}))
    report(runs / "running", 1, 2_000, 4.0, 3.9, 500.0)
    report(runs / "running", 2, 4_000, 3.5, None, 1000.0)
    (runs / "running" / "metrics.jsonl").open("a").write('{"step": 3, "tok')  # a line cut by a kill
    report(runs / "failed", 1, 1_000, 4.2, None, 800.0, age=3600)
    # Started after Tune's snapshot: Tune still says PENDING.
    (runs / "late").mkdir()
    (runs / "late" / "attempt.json").write_text(json.dumps({"attempt": 1, "started": time.time() + 10}))

    rows = {r["run_id"]: r for r in sweep_status(root)}
    assert rows["done"]["state"] == "FINISHED" and rows["done"]["loss"] == 2.5 and rows["done"]["loss_kind"] == "test"
    run = rows["running"]
    assert run["state"] == "RUNNING" and run["tokens_done"] == 4_000
    assert run["loss"] == 3.9 and run["loss_kind"] == "val"  # newest validation loss, not the train loss
    assert run["eta_s"] == pytest.approx(6_000 / 1000.0)
    assert rows["failed"]["state"] == "ERROR" and rows["failed"]["failures"] == 1 and rows["failed"]["eta_s"] != rows["failed"]["eta_s"]
    assert rows["failed"]["loss_kind"] == "train" and rows["failed"]["last_report_age_s"] > 3000
    assert rows["waiting"]["state"] == "PENDING" and rows["waiting"]["tokens_done"] == 0
    assert rows["late"]["state"] == "RUNNING"

    text = render_status(list(rows.values()))
    assert "4k/10k" in text and "6s" in text and "1 error" in text and "of 5 trials" in text
    assert "1h00m ago" in text  # the stale trial shows how old its last report is


def test_moved_storage_finds_its_run_dirs_next_to_sweep_json(tmp_path):
    """sweep.json records the run dirs' absolute folder; when that folder is gone (the storage was moved or is
    mounted elsewhere), status reads the runs/ folder next to sweep.json."""
    import shutil

    old = make_sweep(tmp_path / "old place", ["a", "b"], {"a": "TERMINATED", "b": "RUNNING"})
    (old / "runs" / "a").mkdir()
    (old / "runs" / "a" / "row.json").write_text(json.dumps({"tokens": 10_000, "loss": 2.25, "tokens_per_s": 50.0}))
    report(old / "runs" / "b", 1, 3_000, 4.0, 3.75, 100.0)
    new = tmp_path / "new place"
    shutil.move(old, new)
    assert json.loads((new / "sweep.json").read_text())["settings"]["run_root"] == str(old / "runs")  # stale
    rows = {r["run_id"]: r for r in sweep_status(new)}
    assert rows["a"]["state"] == "FINISHED" and rows["a"]["loss"] == 2.25
    assert rows["b"]["state"] == "RUNNING" and rows["b"]["tokens_done"] == 3_000 and rows["b"]["loss"] == 3.75
    # A copy whose original still exists reads (and a resumed trial trains into) its own runs/, never the original.
    copy = tmp_path / "copy"
    shutil.copytree(new, copy)
    shutil.copytree(new, old)  # the recorded run_root exists again, with other contents
    (old / "runs" / "a" / "row.json").unlink()
    rows = {r["run_id"]: r for r in sweep_status(copy)}
    assert rows["a"]["state"] == "FINISHED" and rows["a"]["loss"] == 2.25


def test_a_row_that_is_not_json_is_a_clear_error(tmp_path):
    from slmscale.errors import SlmscaleError

    root = make_sweep(tmp_path, ["a"], {"a": "TERMINATED"})
    (root / "runs" / "a").mkdir()
    (root / "runs" / "a" / "row.json").write_text('{"tokens": 10')
    with pytest.raises(SlmscaleError, match=r"row.json is not valid JSON.*sweep resume"):
        sweep_status(root)


def test_a_finished_row_with_unknown_throughput(tmp_path):
    """row.json is standard JSON: a trial whose resumed session timed no update has tokens_per_s null (NaN in
    Python); status shows it as unknown instead of failing (found by the demo killed mid-sweep, then rerun)."""
    root = make_sweep(tmp_path, ["done"], {"done": "TERMINATED"})
    (root / "runs" / "done").mkdir()
    (root / "runs" / "done" / "row.json").write_text(json.dumps({"tokens": 10_000, "loss": 2.5, "tokens_per_s": None}))
    [row] = sweep_status(root)
    assert row["state"] == "FINISHED" and row["loss"] == 2.5 and row["tokens_per_s"] != row["tokens_per_s"]
    assert "FINISHED" in render_status([row])
