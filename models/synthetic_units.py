"""A learnable synthetic unit dataset (repeated n-gram patterns) for tests, benchmarks and the demo.

Each utterance repeats one of a few random unit patterns, so after a few units the next unit is
predictable and a working training loop drives the loss far below ln(K) (the loss of guessing).
Written with the real unit-dataset writers (`tokenization.schema.write_shard` / `write_meta`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from slmscale.io import code_version
from slmscale.tokenization.schema import UNIT_SHARD_SCHEMA, UnitsMeta, write_meta, write_shard

__all__ = ["write_pattern_units"]


def write_pattern_units(
    out_dir: str | Path,
    n_units: int = 50,
    n_utterances: int = 400,
    n_patterns: int = 4,
    pattern_len: int = 8,
    min_len: int = 20,
    max_len: int = 80,
    n_shards: int = 2,
    seed: int = 0,
) -> Path:
    """Write `n_utterances` utterances over `n_units` unit ids into `out_dir` (meta.json + shards)."""
    rng = np.random.default_rng(seed)
    patterns = [rng.integers(0, n_units, size=pattern_len) for _ in range(n_patterns)]
    rows = []
    for i in range(n_utterances):
        length = int(rng.integers(min_len, max_len + 1))
        offset = int(rng.integers(0, pattern_len))
        units = np.resize(np.roll(patterns[int(rng.integers(n_patterns))], -offset), length).astype(np.uint16)
        rows.append({
            "utt_id": f"synthetic/{i:06d}",
            "units": units.tolist(),
            "durations": [1] * length,
            "n_frames": length,
            "n_units": length,
            "duration_s": length / 25.0,
            "source": "synthetic-patterns",
            "sha256": "",
        })
    out = Path(out_dir)
    per = -(-n_utterances // n_shards)
    for s in range(n_shards):
        chunk = rows[s * per:(s + 1) * per]
        if chunk:
            write_shard(out / f"shard-{s:05d}.parquet", pa.Table.from_pylist(chunk, schema=UNIT_SHARD_SCHEMA))
    total = sum(r["n_units"] for r in rows)
    write_meta(out, UnitsMeta(
        vocab_size=n_units,
        tokenizer={"kind": "synthetic", "hash": f"synthetic-patterns-k{n_units}-s{seed}", "layer": None, "frame_rate_hz": 25.0},
        dedup=False,
        counts={"utterances": n_utterances, "units": total, "frames": total, "hours": total / 25 / 3600,
                "rejected": 0, "shards": n_shards},
        code_version=code_version(),
    ))
    return out
