"""`sweep results`: the results table (analysis/schema.py) from the finished trials of a sweep.

Rows come from each trial's `row.json` (training row of models.train + evaluation metrics; the layout is
sweep/storage.py's), one per grid point by construction (the run dir is named by the trial's run_id), so a
trial retried or resumed any number of times still contributes exactly one row. A WSD trunk is a trial but no
grid point: it gives no row. Nothing here unpickles Tune state.

Compute columns: `flops` is 6 N D of the point's D whatever the schedule (fits and budgets compare across
schedules); `spent_flops` is what the point's own run cost (a WSD branch: its cooldown only) and `trunk_flops`
what its trunk cost (the same for every branch of one trunk, 0 for cosine), so the sweep's actual spend is
sum(spent_flops) + the sum of trunk_flops over distinct `trunk`s.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from slmscale.analysis.schema import validate_results, write_results
from slmscale.errors import SlmscaleError
from slmscale.objstore import StorePath, location
from slmscale.sweep.storage import read_sweep

__all__ = ["sweep_results", "write_sweep_results", "missing_trials"]


def _points(sweep: dict) -> list[dict]:
    """The trials that are grid points (all but WSD trunks), in grid order."""
    return [t for t in sweep["trials"] if t.get("schedule", "cosine") != "constant"]


def _compute_columns(row: dict, trial: dict, trunk: dict | None) -> dict:
    """schedule, trunk, spent_flops and trunk_flops of a point's row (see the module docstring)."""
    n = float(row["n_params"])
    return {
        "schedule": trial.get("schedule", "cosine"),
        "trunk": trial.get("trunk"),
        "spent_flops": 6.0 * n * (float(row["tokens"]) - int(trial.get("branch_tokens", 0))),
        "trunk_flops": 6.0 * n * int(trunk["tokens"]) if trunk else 0.0,
    }


def missing_trials(storage: str | os.PathLike) -> list[dict[str, str]]:
    """The trials without a results row, each with why: `{"run_id", "reason"}`, reason "run dir gone" (deleted
    or never created) or "not finished"."""
    store, sweep = read_sweep(storage)
    out = []
    for trial in _points(sweep):
        run_dir = store.run_dir(trial["run_id"])
        if not run_dir.is_done():
            out.append({"run_id": trial["run_id"], "reason": "not finished" if run_dir.path.is_dir() else "run dir gone"})
    return out


def sweep_results(storage: str | os.PathLike, *, allow_partial: bool = True) -> pd.DataFrame:
    """One row per finished trial, in grid order. Raises if none finished (or, with allow_partial=False, if any
    trial has not finished)."""
    store, sweep = read_sweep(storage)
    root = store.root
    rows, missing = [], []
    trunks = {t["run_id"]: t for t in sweep["trials"] if t.get("schedule") == "constant"}
    for trial in _points(sweep):
        run_dir = store.run_dir(trial["run_id"])
        if not run_dir.is_done():
            missing.append(trial["run_id"])
            continue
        row = run_dir.read_row()
        if row.get("units_meta_hash") not in (None, sweep["units_meta_hash"]):
            raise SlmscaleError(
                f"{run_dir.row}: trained on unit dataset {str(row.get('units_meta_hash'))[:12]}, but the sweep's is "
                f"{sweep['units_meta_hash'][:12]}; expected every trial on the same units"
            )
        row.update(run_id=trial["run_id"], sweep=sweep["grid"]["name"], budget=trial["budget"],
                   **_compute_columns(row, trial, trunks.get(trial.get("trunk") or "")))
        # Tokenizer layer and K complete the provenance (the hash identifies the tokenizer; these say what it is).
        if run_dir.run_info.is_file():
            info = run_dir.read_run_info()
            row.setdefault("tokenizer_layer", (info.get("tokenizer_info") or {}).get("layer"))
            row.setdefault("n_units", info.get("units_vocab_size"))
        rows.append(row)
    if not rows:
        raise SlmscaleError(f"{root}: no trial has finished yet ({len(missing)} pending); see `slmscale sweep status {root}`")
    if missing and not allow_partial:
        raise SlmscaleError(f"{root}: {len(missing)} trial(s) not finished: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    df = pd.DataFrame(rows)
    for col in df.columns:  # row.json writes an unknown number as null: a column of numbers and nulls is numeric
        values = df[col].dropna()
        if df[col].dtype == object and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    # A run that reads D tokens from a pool of U distinct ones has seen min(D, U) unique tokens (schema:
    # unique_tokens equals tokens for single-epoch runs); training rows give the pool size U.
    df["unique_tokens"] = np.minimum(df["unique_tokens"].astype(float), df["tokens"].astype(float))
    df["epochs"] = df["tokens"].astype(float) / df["unique_tokens"]
    validate_results(df, source=str(store.results))
    return df


def write_sweep_results(storage: str | os.PathLike, out: str | os.PathLike | None = None, *, allow_partial: bool = True) -> Path:
    """Write the results table (Parquet or CSV by extension; default STORAGE/results.parquet) atomically."""
    store, _ = read_sweep(storage)
    table = sweep_results(store, allow_partial=allow_partial)
    target = location(out) if out else store.results
    if not isinstance(target, StorePath):
        return write_results(table, target)
    import tempfile

    from slmscale.objstore import upload

    with tempfile.TemporaryDirectory(prefix="slmscale-results-") as tmp:  # written and checked here, then one PUT
        upload(write_results(table, Path(tmp) / target.name), target)
    return target
