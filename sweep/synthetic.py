"""A small synthetic unit dataset (tokenization/schema.py layout) for tests, benchmarks and smoke runs of a grid.

Utterances are drawn from a fixed random first-order Markov chain over K units, so a language model has
something learnable and bigger/longer-trained models reach lower loss, as on real units.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from analysis.io import code_version

__all__ = ["write_synthetic_units"]


def write_synthetic_units(
    out_dir: str | Path, *, n_utterances: int = 400, n_units: int = 50, mean_length: int = 120,
    shards: int = 2, seed: int = 0,
) -> Path:
    """Write shards + meta.json of a synthetic unit dataset; returns the directory."""
    from tokenization.schema import UnitsMeta, write_meta, write_shard

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Sparse transition matrix: each unit has a handful of likely successors.
    logits = rng.normal(size=(n_units, n_units)) * 3.0
    trans = np.exp(logits - logits.max(axis=1, keepdims=True))
    trans /= trans.sum(axis=1, keepdims=True)
    cum = np.cumsum(trans, axis=1)
    rows = []
    for i in range(n_utterances):
        length = int(rng.integers(mean_length // 2, mean_length * 3 // 2))
        seq = np.empty(length, dtype=np.uint16)
        state = int(rng.integers(n_units))
        draws = rng.random(length)
        for t in range(length):
            state = min(int(np.searchsorted(cum[state], draws[t])), n_units - 1)
            seq[t] = state
        rows.append(dict(utt_id=f"synthetic/{i:05d}", units=seq.tolist(), durations=[1] * length, n_frames=length,
                         n_units=length, duration_s=length / 25.0, source="synthetic", sha256=f"{i:064x}"))
    per = -(-len(rows) // shards)
    for s in range(shards):
        part = rows[s * per:(s + 1) * per]
        if part:
            write_shard(out / f"shard-{s:05d}.parquet", pa.Table.from_pylist(part))
    total = sum(r["n_units"] for r in rows)
    write_meta(out, UnitsMeta(
        vocab_size=n_units,
        tokenizer={"kind": "synthetic", "hash": f"synthetic-markov-k{n_units}-seed{seed}", "layer": None, "frame_rate_hz": 25.0},
        dedup=False,
        counts={"utterances": len(rows), "units": total, "frames": total, "hours": total / 25.0 / 3600, "rejected": 0, "shards": shards},
        code_version=code_version(),
    ))
    return out
