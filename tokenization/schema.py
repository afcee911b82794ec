"""The unit dataset on disk: the contract between `tokenization/` (writes) and `models/` (reads).

A unit dataset is a directory:

    UNITS_DIR/
      meta.json              provenance + counts (see `UnitsMeta`)
      shard-00000.parquet    rows of UNIT_SHARD_SCHEMA, written atomically
      shard-00001.parquet
      .shards/shard-00000.json  rows, bytes and SHA-256 of that shard as written (`ShardRecord`), next to it
      rejects.parquet        inputs that could not be encoded (REJECTS_SCHEMA)

Every unit id is in [0, meta["vocab_size"]). A language model over units uses ids vocab_size (EOS) and
vocab_size + 1 (pad) on top (paper: 500 units + EOS 500 + pad 501 = 502).
A shard's record is written right after the shard and copied into meta.json (`shards`) when the dataset is
complete: a rerun of `encode` redoes a shard whose bytes no longer match it, and `stats` refuses one, instead of
a truncated or overwritten file passing for finished work.
This module is deliberately light (pyarrow only) so that `models/` can read units without loading audio code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, atomic_write_json, read_json, sha256_bytes, sha256_file

# 2: meta.json has `shards` {name: {"rows", "bytes", "sha256"}} and each shard a `.shards/NAME.json` record.
# Version-1 datasets (no records) stay readable; a rerun of `encode` checks their shards by reading them whole.
SCHEMA_VERSION = 2
SHARD_RECORDS_DIR = ".shards"

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
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard name -> record as written (see above)

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


def shard_record_path(shard: str | Path) -> Path:
    """UNITS_DIR/.shards/shard-NNNNN.json: the record of UNITS_DIR/shard-NNNNN.parquet."""
    shard = Path(shard)
    return shard.parent / SHARD_RECORDS_DIR / f"{shard.stem}.json"


def read_shard_record(shard: str | Path) -> dict[str, Any] | None:
    """The record written with `shard`, or None when there is none (a version-1 dataset, or a writer killed
    between the shard and its record) or it is unreadable (then the shard is checked as if it had none)."""
    path = shard_record_path(shard)
    try:
        record = read_json(path, "shard record")
    except (SlmscaleError, OSError):
        return None
    return record if isinstance(record, dict) and {"rows", "bytes", "sha256"} <= record.keys() else None


def shard_record(shard: str | Path, rows: int | None = None) -> dict[str, Any]:
    """{"rows", "bytes", "sha256"} of a shard file as it is now (`rows` read from its footer unless given)."""
    shard = Path(shard)
    if rows is None:
        rows = pq.ParquetFile(shard).metadata.num_rows
    return {"rows": int(rows), "bytes": shard.stat().st_size, "sha256": sha256_file(shard)}


def write_shard(path: str | Path, table: pa.Table) -> Path:
    """Write one shard atomically (temp file + rename), then its record (rows, bytes, SHA-256) under `.shards/`.

    A reader never sees a partial shard; a shard whose record is missing (killed in between) is checked by
    reading it whole on resume."""
    table = table.cast(UNIT_SHARD_SCHEMA) if table.schema != UNIT_SHARD_SCHEMA else table
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    atomic_write_json(shard_record_path(path), shard_record(path, rows=table.num_rows))
    return Path(path)


def shard_problem(shard: str | Path, record: dict[str, Any] | None, full: bool = True) -> str | None:
    """What is wrong with a shard file compared with its record, or None when it is intact.

    Cheap checks first (size, then the row count in the Parquet footer); `full` also compares the SHA-256 of
    the bytes, or, without a record, reads the whole table. `full=False` costs a stat and a footer read."""
    shard = Path(shard)
    try:
        size = shard.stat().st_size
    except FileNotFoundError:
        return "the file is missing"
    if record is not None and size != record["bytes"]:
        return f"it has {size} bytes, but {record['bytes']} were written (truncated or overwritten)"
    try:
        rows = pq.ParquetFile(shard).metadata.num_rows
    except Exception as exc:  # pyarrow.ArrowInvalid: no footer (truncated), not Parquet at all
        return f"it is not readable Parquet ({_first_line(exc)})"
    if record is not None and rows != record["rows"]:
        return f"it has {rows} rows, but {record['rows']} were written"
    if full and record is not None and sha256_file(shard) != record["sha256"]:
        return "its SHA-256 differs from the one recorded when it was written (the bytes changed)"
    if full and record is None:
        try:
            pq.read_table(shard)
        except Exception as exc:  # a corrupt page or column chunk behind a valid footer
            return f"it is not readable Parquet ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _corrupt(shard: Path, problem: str) -> SlmscaleError:
    return SlmscaleError(f"{shard}: corrupt unit shard: {problem}; expected the shard as `slmscale tokenize encode` "
                         f"wrote it (rerun the same encode command: it redoes damaged shards)")


def check_shards(units_dir: str | Path, meta: UnitsMeta) -> list[Path]:
    """The dataset's shard files after the cheap checks (every shard meta.json lists is there, sizes and row
    counts match the records); raises SlmscaleError naming the first bad file."""
    units_dir = Path(units_dir)
    paths = shard_paths(units_dir)
    missing = sorted(set(meta.shards) - {p.name for p in paths})
    if missing:
        raise _corrupt(units_dir / missing[0], "meta.json lists it, but the file is missing")
    for path in paths:
        problem = shard_problem(path, meta.shards.get(path.name) or read_shard_record(path), full=False)
        if problem:
            raise _corrupt(path, problem)
    return paths


def read_shard(shard: str | Path, columns: list[str] | tuple[str, ...] | None = None) -> pa.Table:
    """One shard's table; a file Parquet cannot read is a one-line SlmscaleError naming it, not a traceback."""
    try:
        return pq.read_table(shard, columns=list(columns) if columns else None)
    except Exception as exc:  # pyarrow.ArrowInvalid / OSError from a truncated or overwritten file
        raise _corrupt(Path(shard), f"it is not readable Parquet ({_first_line(exc)})") from None


def read_units_table(units_dir: str | Path, columns: tuple[str, ...] | None = None) -> pa.Table:
    paths = shard_paths(units_dir)
    if not paths:
        raise SlmscaleError(f"{units_dir}: no shard-*.parquet files — the unit dataset is empty")
    return pa.concat_tables([read_shard(p, columns) for p in paths])
