"""The unit dataset on disk: the contract between `tokenization/` (writes) and `models/` (reads).

A unit dataset is a directory:

    UNITS_DIR/
      meta.json              provenance + counts (see `UnitsMeta`)
      shard-00000.parquet    rows of UNIT_SHARD_SCHEMA, written atomically
      shard-00001.parquet
      rejects.parquet        inputs that could not be encoded (REJECTS_SCHEMA)

Every unit id is in [0, meta["vocab_size"]). A language model over units uses ids vocab_size (EOS) and
vocab_size + 1 (pad) on top (paper: 500 units + EOS 500 + pad 501 = 502).
This module is deliberately light (pyarrow only) so that `models/` can read units without loading audio code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, atomic_write_json, read_json, sha256_bytes

SCHEMA_VERSION = 1

UNIT_SHARD_SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),  # stable id: source-relative path without extension (+ chunk suffix)
        pa.field("units", pa.list_(pa.uint16()), nullable=False),  # after consecutive-duplicate collapse if dedup
        pa.field("durations", pa.list_(pa.uint16())),  # frames each unit lasted before the collapse (all 1 without dedup)
        pa.field("n_frames", pa.int32()),  # feature frames before collapse
        pa.field("n_units", pa.int32()),  # len(units)
        pa.field("duration_s", pa.float32()),
        pa.field("source", pa.string()),  # corpus / source name (e.g. "librispeech", "stinystories")
        pa.field("sha256", pa.string()),  # of the audio file the units come from
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),  # the input path / manifest entry
        pa.field("reason", pa.string()),  # short machine-readable reason: empty, truncated, not_audio, nan, ...
        pa.field("detail", pa.string()),  # human-readable detail
    ]
)


@dataclass
class UnitsMeta:
    """meta.json of a unit dataset. `tokenizer.hash` identifies the tokenizer exactly (model weights + layer +
    k-means codebook): units from different hashes are not comparable, and evaluation refuses to mix them."""

    vocab_size: int  # K: number of distinct unit ids (k-means clusters, or unigram vocabulary)
    tokenizer: dict[str, Any]  # {"kind": "mfcc"|"hubert"|"unigram", "hash": str, "layer": int|None, "frame_rate_hz": float, ...}
    dedup: bool = True
    counts: dict[str, Any] = field(default_factory=dict)  # {"utterances", "units", "frames", "hours", "rejected", "shards"}
    code_version: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # anything else (e.g. parent dataset provenance for unigram)

    def validate(self, where: str = "meta.json") -> UnitsMeta:
        if not isinstance(self.vocab_size, int) or self.vocab_size <= 0 or self.vocab_size > 65535:
            raise SlmscaleError(f"{where}: field 'vocab_size' must be an int in [1, 65535], got {self.vocab_size!r}")
        if not isinstance(self.tokenizer, dict) or not self.tokenizer.get("kind") or not self.tokenizer.get("hash"):
            raise SlmscaleError(f"{where}: field 'tokenizer' must be an object with 'kind' and 'hash', got {self.tokenizer!r}")
        return self

    @property
    def tokenizer_hash(self) -> str:
        return str(self.tokenizer["hash"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def meta_path(units_dir: str | Path) -> Path:
    """UNITS_DIR/meta.json: the file whose presence makes a folder a unit dataset."""
    return Path(units_dir) / "meta.json"


def write_meta(units_dir: str | Path, meta: UnitsMeta) -> Path:
    meta.validate()
    return atomic_write_json(meta_path(units_dir), meta.to_dict())


def read_meta(units_dir: str | Path) -> UnitsMeta:
    path = meta_path(units_dir)
    if not Path(units_dir).is_dir():
        raise SlmscaleError(f"unit dataset not found: {units_dir} is not a directory")
    if not path.is_file():
        raise SlmscaleError(f"{units_dir}: no meta.json — not a unit dataset (run `slmscale tokenize encode` first)")
    raw = read_json(path, "unit dataset meta")
    missing = [k for k in ("vocab_size", "tokenizer") if k not in raw]
    if missing:
        raise SlmscaleError(f"{path}: missing field(s) {missing}")
    known = {f for f in UnitsMeta.__dataclass_fields__}
    meta = UnitsMeta(**{k: v for k, v in raw.items() if k in known})
    return meta.validate(str(path))


def meta_hash(units_dir: str | Path) -> str:
    """sha256 of meta.json: identifies a unit dataset in results-table provenance."""
    return sha256_bytes(meta_path(units_dir).read_bytes())


def shard_paths(units_dir: str | Path) -> list[Path]:
    return sorted(Path(units_dir).glob("shard-*.parquet"))


def write_shard(path: str | Path, table: pa.Table) -> Path:
    """Write one shard atomically (temp file + rename); a reader never sees a partial shard."""
    table = table.cast(UNIT_SHARD_SCHEMA) if table.schema != UNIT_SHARD_SCHEMA else table
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_units_table(units_dir: str | Path, columns: tuple[str, ...] | None = None) -> pa.Table:
    paths = shard_paths(units_dir)
    if not paths:
        raise SlmscaleError(f"{units_dir}: no shard-*.parquet files — the unit dataset is empty")
    return pa.concat_tables([pq.read_table(p, columns=list(columns) if columns else None) for p in paths])
