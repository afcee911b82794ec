"""`sweep status`: one line per trial — state, tokens done, loss, tokens/s, ETA — from files on the storage,
and the compute spent so far against the plan (a WSD trunk counted once, a branch for its cooldown only).

Sources, all plain JSON (nothing is unpickled, so status is safe on any storage and needs no Ray), named
through sweep/storage.py:
  runs/<id>/row.json        present = FINISHED
  runs/<id>/metrics.jsonl   progress of the newest attempt (tokens, train/val loss, tokens/s, time)
  runs/<id>/attempt.json    attempt number, host and pid of the newest attempt
  tune/experiment_state-*.json  Tune's trial status (PENDING / RUNNING / ERROR ...) at its last snapshot
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from slmscale.sweep.grid import format_count
from slmscale.sweep.storage import read_sweep

__all__ = ["sweep_status", "render_status", "tune_trial_states"]


def tune_trial_states(tune_dir: Path) -> dict[str, dict[str, Any]]:
    """run_id -> {"status", "num_failures", "error_file"} from Tune's newest experiment-state snapshot."""
    snapshots = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not snapshots:
        return {}
    try:
        state = json.loads(snapshots[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # mid-write by a live driver; the next call will read it
    out = {}
    snapshot_time = snapshots[-1].stat().st_mtime
    for entry in state.get("trial_data", []):
        try:
            trial, runtime = json.loads(entry[0]), json.loads(entry[1])
            run_id = trial["config"]["run_id"]
        except (KeyError, TypeError, IndexError, json.JSONDecodeError):
            continue
        out[run_id] = {
            "status": trial.get("status"),
            "num_failures": runtime.get("num_failures", 0),
            "error_file": runtime.get("error_filename"),
            "snapshot_time": snapshot_time,
        }
    return out


def _number(value: Any) -> float:
    """A number of row.json; null (unknown: written for NaN, e.g. no update timed in a resumed session) is NaN."""
    return math.nan if value is None else float(value)


def _last_metrics(path: Path) -> dict[str, Any]:
    """The newest report, and the newest val_loss (reports between evaluations carry val_loss None)."""
    if not path.is_file():
        return {}
    last, val = {}, None
    with path.open() as f:  # (a Path, or a StorePath on object storage)
        for line in f:
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            last = m
            if m.get("val_loss") is not None:
                val = m["val_loss"]
    return {**last, "last_val_loss": val}


def sweep_status(storage: str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per trial of the sweep, in grid order."""
    store, sweep = read_sweep(storage)
    tune_states = tune_trial_states(store.tune_dir)
    now = time.time()
    rows = []
    for trial in sweep["trials"]:
        run_dir = store.run_dir(trial["run_id"])
        tune_state = tune_states.get(trial["run_id"], {})
        attempt = run_dir.read_attempt()
        m = _last_metrics(run_dir.metrics)
        target = int(trial["tokens"])
        row: dict[str, Any] = {
            "run_id": trial["run_id"], "model": trial["model"], "n_params": trial["n_params"], "tokens_target": target,
            "attempts": int(attempt.get("attempt", 0)), "host": attempt.get("host"),
            "tune_status": tune_state.get("status"), "failures": tune_state.get("num_failures", 0),
        }
        if run_dir.is_done():
            final = run_dir.read_row()
            row.update(state="FINISHED", tokens_done=int(final["tokens"]), loss=_number(final.get("loss")),
                       tokens_per_s=_number(final.get("tokens_per_s")), eta_s=0.0, loss_kind="test")
        else:
            state = tune_state.get("status") or ("STARTED" if attempt else "PENDING")
            if state == "PENDING" and attempt.get("started", 0) > tune_state.get("snapshot_time", 0):
                state = "RUNNING"  # started after Tune's last snapshot
            if state == "TERMINATED":  # Tune says done but no row: the trial body never completed
                state = "INCOMPLETE"
            tokens_done = int(m.get("tokens", 0))
            tps = float(m.get("tokens_per_s") or math.nan)
            loss = m.get("last_val_loss")
            kind = "val"
            if loss is None and m.get("train_loss") is not None:
                loss, kind = m["train_loss"], "train"
            remaining = max(0, target - tokens_done)
            row.update(
                state=state, tokens_done=tokens_done, loss=float(loss) if loss is not None else math.nan,
                loss_kind=kind if loss is not None else "", tokens_per_s=tps,
                eta_s=remaining / tps if tps and math.isfinite(tps) and tps > 0 and state != "ERROR" else math.nan,
                last_report_age_s=now - float(m["time"]) if "time" in m else math.nan,
            )
        # A branch starts at its trunk's branch point: only the tokens after it are this trial's spend.
        start = int(trial.get("branch_tokens", 0))
        row.update(schedule=trial.get("schedule", "cosine"), trunk=trial.get("trunk"),
                   flops_planned=6.0 * trial["n_params"] * (target - start),
                   flops_spent=6.0 * trial["n_params"] * max(0, min(row["tokens_done"], target) - start))
        rows.append(row)
    return rows


def _fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def render_status(rows: list[dict[str, Any]]) -> str:
    # "last report" tells a live trial from one whose driver died (Tune's state still says RUNNING then).
    head = (f"{'run_id':<28} {'state':<10} {'tokens done':>17} {'loss':>12} {'tok/s':>8} {'ETA':>8} {'tries':>5} "
            f"{'last report':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        done = f"{format_count(r['tokens_done'])}/{format_count(r['tokens_target'])}"
        loss = f"{r['loss']:.4f} {r['loss_kind']}" if math.isfinite(r["loss"]) else "-"
        tps = f"{r['tokens_per_s']:.3g}" if math.isfinite(r["tokens_per_s"]) else "-"
        age = r.get("last_report_age_s", math.nan)
        lines.append(f"{r['run_id']:<28} {r['state']:<10} {done:>17} {loss:>12} {tps:>8} {_fmt_duration(r['eta_s']):>8} "
                     f"{r['attempts']:>5} {(_fmt_duration(age) + ' ago') if math.isfinite(age) else '-':>11}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("-" * len(head))
    lines.append(", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) + f" of {len(rows)} trials")
    spent, planned = sum(r["flops_spent"] for r in rows), sum(r["flops_planned"] for r in rows)
    trunks = sum(r["schedule"] == "constant" for r in rows)
    lines.append(f"compute spent {spent:.3g} of {planned:.3g} FLOPs planned"
                 + (f" ({trunks} WSD trunk(s) counted once, branches for their cooldown)" if trunks else ""))
    return "\n".join(lines)
