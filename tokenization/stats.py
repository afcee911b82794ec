"""`unit_stats(units_dir)`: hours, units and units per second by source — the shape of paper Table 2."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from slmscale.errors import SlmscaleError
from slmscale.tokenization.schema import check_shards, read_meta, read_shard

__all__ = ["unit_stats", "format_stats"]


def unit_stats(units_dir: str | Path) -> pd.DataFrame:
    """One row per source plus a `total` row: utterances, hours, units, frames, units_per_s, frames_per_unit.

    A shard that is missing, or whose size or row count differs from its record, or that Parquet cannot read,
    is a one-line SlmscaleError naming the file (the numbers would otherwise be silently wrong)."""
    meta = read_meta(units_dir)
    paths = check_shards(units_dir, meta)
    if not paths:
        raise SlmscaleError(f"{units_dir}: no shard-*.parquet files — the unit dataset is empty")
    parts = [read_shard(p, ["source", "n_units", "n_frames", "duration_s"]).to_pandas() for p in paths]
    df = pd.concat(parts, ignore_index=True)
    df["source"] = df["source"].fillna("(none)")
    grouped = df.groupby("source").agg(utterances=("n_units", "size"), units=("n_units", "sum"),
                                       frames=("n_frames", "sum"), seconds=("duration_s", "sum"))
    grouped.loc["total"] = grouped.sum()
    grouped["hours"] = grouped["seconds"] / 3600.0
    grouped["units_per_s"] = grouped["units"] / grouped["seconds"].where(grouped["seconds"] > 0)
    grouped["frames_per_unit"] = grouped["frames"] / grouped["units"].where(grouped["units"] > 0)
    grouped.attrs["tokenizer"] = meta.tokenizer.get("id", meta.tokenizer.get("kind"))
    grouped.attrs["vocab_size"] = meta.vocab_size
    grouped.attrs["rejected"] = meta.counts.get("rejected", 0)
    rejects = Path(units_dir) / "rejects.parquet"
    if rejects.is_file():
        try:
            reasons = pq.read_table(rejects, columns=["reason"]).column("reason").to_pylist()
        except Exception as exc:  # pyarrow.ArrowInvalid from a truncated file
            raise SlmscaleError(f"{rejects}: not a readable rejects table ({str(exc).strip().splitlines()[0]}); "
                                f"expected the Parquet file `slmscale tokenize encode` wrote") from None
        grouped.attrs["rejected_by_reason"] = {r: reasons.count(r) for r in sorted(set(reasons))}
    return grouped.drop(columns=["seconds"]).reset_index()[
        ["source", "utterances", "hours", "units", "frames", "units_per_s", "frames_per_unit"]]


def format_stats(df: pd.DataFrame) -> str:
    out = df.copy()
    out["hours"] = out["hours"].map(lambda h: f"{h:,.3f}")
    out["units"] = out["units"].map(lambda u: f"{int(u):,}")
    out["frames"] = out["frames"].map(lambda u: f"{int(u):,}")
    out["units_per_s"] = out["units_per_s"].map(lambda u: f"{u:.2f}")
    out["frames_per_unit"] = out["frames_per_unit"].map(lambda u: f"{u:.2f}")
    by_reason = df.attrs.get("rejected_by_reason") or {}
    reasons = f" ({', '.join(f'{k}: {v}' for k, v in by_reason.items())})" if by_reason else ""
    header = f"tokenizer {df.attrs.get('tokenizer')}  K={df.attrs.get('vocab_size')}  rejected files: {df.attrs.get('rejected')}{reasons}"
    return header + "\n" + out.to_string(index=False)
