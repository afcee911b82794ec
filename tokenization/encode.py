"""`encode(manifest, tokenizer, out_dir)`: audio manifest -> unit dataset (contract §2), on Ray Data.

Manifest rows are split into shards of `rows_per_shard` consecutive rows; shard i is `shard-0000i.parquet`.
The pipeline (tokenization/pipeline.py) streams every pending row through decoding and a tokenizer actor pool
(on CPU-only clusters the actors decode their own rows; beside GPU actors, separate CPU tasks decode); the
driver collects the small unit rows per shard and writes a shard (atomically, rows in manifest order) as soon
as all of its files are accounted for. A shard file on disk that matches the record written with it (rows, bytes,
SHA-256; tokenization/schema.py) means "done": a rerun after a crash or Ctrl-C skips it, so no row is written
twice, and redoes a shard that was truncated or overwritten since (saying which and why). Each shard's rejects
are written to `.rejects/` before the shard itself and merged into `rejects.parquet` at the end, with `meta.json`.
A file whose audio (SHA-256 in the manifest) equals an earlier row's is not encoded again: it is rejected as
`duplicate`, naming the first, so one recording never lands in a dataset twice (e.g. in train and test).
Everything that can be checked without Ray (manifest, tokenizer, settings, the cluster address) is checked before
Ray starts, and Ray is not started at all when every shard is already done.
`encode.json` pins what the directory is being built from (manifest checksum, tokenizer hash, sharding,
chunking, dedup); resuming with anything different is refused instead of mixing two datasets.
The settings are one typed `EncodeConfig` (tokenization/config.py); `encode` builds it from its arguments or
takes one directly.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, atomic_write_json, code_version, read_json, sha256_file
from slmscale.tokenization.config import EncodeConfig
from slmscale.tokenization.manifest import read_manifest
from slmscale.tokenization.schema import (
    REJECTS_SCHEMA,
    SHARD_RECORDS_DIR,
    UNIT_SHARD_SCHEMA,
    UnitsMeta,
    read_meta,
    read_shard,
    read_shard_record,
    shard_problem,
    shard_record,
    shard_record_path,
    write_meta,
    write_shard,
)
from slmscale.tokenization.tokenizer import MIN_SAMPLES, TokenizerSpec, UnitTokenizer, parse_tokenizer

__all__ = ["EncodeConfig", "encode", "shard_name"]

_REJECTS_PARTS = ".rejects"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _note(message: str) -> None:
    """A line for the user about something encode decided (stderr, so that stdout stays the result)."""
    print(f"encode: {message}", file=sys.stderr, flush=True)


def _check_plan(out_dir: Path, plan: dict[str, Any]) -> None:
    path = out_dir / "encode.json"
    if path.is_file():
        old = read_json(path, "encode plan")
        for key, value in plan.items():
            if old.get(key) != value:
                raise SlmscaleError(
                    f"{path}: this directory is being built with {key}={old.get(key)!r}, but this run has "
                    f"{key}={value!r}; use a new output directory (or delete {out_dir} to start over)"
                )
    else:
        if any(out_dir.glob("shard-*.parquet")):
            raise SlmscaleError(f"{out_dir}: holds shards but no encode.json, so they cannot be checked; use an empty directory")
        atomic_write_json(path, plan)


def _resources(spec: TokenizerSpec, cfg: EncodeConfig) -> tuple[int, float, float, int]:
    """(actors, cpus per actor, gpus per actor, batch size) fitted to the running cluster.

    With GPU actors, decoding runs in separate CPU tasks (cfg.decode_cpus each) so that it overlaps GPU work. With
    CPU-only actors, each actor decodes its own block of manifest rows (`UnitActor(decode=...)`): the same CPUs
    would do both anyway, and the waveforms never cross the object store or Ray Data's block conversion."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
    gpa = cfg.gpus_per_actor
    if gpa is None:
        gpa = 1.0 if (spec.kind == "hubert" and gpus >= 1) else 0.0
    if gpa > 0:
        if gpus < gpa:
            raise SlmscaleError(f"--gpus-per-actor {gpa}: the Ray cluster has {gpus:g} GPU(s)")
        actors = cfg.actors or max(1, int(gpus // gpa))
        if actors * gpa > gpus:  # the pool would wait forever for GPUs that do not exist
            raise SlmscaleError(f"--actors {actors} x --gpus-per-actor {gpa:g} needs {actors * gpa:g} GPUs; "
                                f"the Ray cluster has {gpus:g}")
        cpa = max(0.5, min(2.0, (cpus - cfg.decode_cpus) / actors))
        batch = cfg.batch_size or 32
    else:
        actors = cfg.actors or max(1, int(cpus))
        if actors > max(1, int(cpus)):  # more actors than CPUs would only share them, each with its own model copy
            _note(f"--actors {actors} capped at {max(1, int(cpus))}, the CPUs of the Ray cluster")
            actors = max(1, int(cpus))
        cpa = max(0.1, cpus / actors)  # the actors decode too, so they share all the CPUs
        batch = cfg.batch_size or 8
    return actors, cpa, gpa, batch


class _ShardCollector:
    """Driver-side bookkeeping: which files of which shard are done, and the rows to write."""

    def __init__(self, out_dir: Path, pending: dict[int, list[int]], provenance: dict[str, str]):
        self.out_dir = out_dir
        self.waiting = {s: set(rows) for s, rows in pending.items()}  # shard -> rows not yet accounted for
        self.chunks: dict[int, dict[int, dict]] = {}  # row -> chunk index -> result row
        self.rows: dict[int, list[dict]] = {s: [] for s in pending}  # finished unit rows per shard
        self.rejects: dict[int, list[dict]] = {s: [] for s in pending}
        self.finished_rows: set[int] = set()
        self.provenance = provenance

    def add(self, r: dict) -> int:
        """Take one result row; returns the number of files this completed (0 or 1)."""
        row, shard = r["row"], r["shard"]
        if row in self.finished_rows or shard not in self.waiting:
            return 0  # a late chunk of a file that already failed
        if r["reason"]:
            self.rejects[shard].append({"source": r["path"], "reason": r["reason"],
                                        "detail": f"utt_id={r['utt_id']}: {r['detail']}", "_row": row})
            self.chunks.pop(row, None)
            return self._finish_file(row, shard)
        got = self.chunks.setdefault(row, {})
        got[r["chunk"]] = r
        if len(got) < r["n_chunks"]:
            return 0
        for c in sorted(got):
            unit_row = {k: got[c][k] for k in UNIT_SHARD_SCHEMA.names}
            if got[c]["n_chunks"] > 1:
                unit_row["utt_id"] = f"{got[c]['utt_id']}#{c:04d}"
            unit_row["_row"] = row
            self.rows[shard].append(unit_row)
        del self.chunks[row]
        return self._finish_file(row, shard)

    def _finish_file(self, row: int, shard: int) -> int:
        self.finished_rows.add(row)
        self.waiting[shard].discard(row)
        if not self.waiting[shard]:
            self._write(shard)
        return 1

    def _write(self, shard: int) -> None:
        rejects = sorted(self.rejects.pop(shard), key=lambda x: x.pop("_row"))
        with atomic_path(self.out_dir / _REJECTS_PARTS / shard_name(shard), suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), tmp)
        rows = sorted(self.rows.pop(shard), key=lambda x: (x.pop("_row"), x["utt_id"]))
        table = pa.Table.from_pylist(rows, schema=UNIT_SHARD_SCHEMA).replace_schema_metadata(
            {f"slmscale.{k}": str(v) for k, v in self.provenance.items()}
        )
        write_shard(self.out_dir / shard_name(shard), table)  # last: its existence marks the shard done
        del self.waiting[shard]

    @property
    def unfinished(self) -> list[int]:
        return sorted(self.waiting)


def _run_pipeline(manifest: pa.Table, pending: dict[int, list[int]], spec: TokenizerSpec, cfg: EncodeConfig,
                  resources: tuple[int, float, float, int], collector: _ShardCollector, bar) -> dict[str, Any]:
    import ray

    from slmscale.tokenization.pipeline import UnitActor, decode_batch
    from slmscale.tokenization.ray_utils import quiet_ray_data

    actors, cpa, gpa, batch = resources
    rows = sorted(r for rs in pending.values() for r in rs)
    shard_of = {r: s for s, rs in pending.items() for r in rs}
    table = manifest.take(pa.array(rows, pa.int64())).select(["utt_id", "path", "source", "sha256"])
    table = table.append_column("row", pa.array(rows, pa.int64())).append_column(
        "shard", pa.array([shard_of[r] for r in rows], pa.int64()))
    # Input blocks of at most 64 files (and at least 4 per actor): one actor call per block, so fewer blocks
    # mean less of Ray's per-task cost (64 instead of 16 files took a 2,400-file MFCC encode from 17.3 s to 15.6 s
    # on 2 CPUs), while one slow file still holds back few others. What a call holds in memory is bounded by
    # decode_batch (at most `batch` chunks or 10 minutes of audio at a time), not by the block.
    per_block = max(1, min(64, math.ceil(len(rows) / max(4 * actors, 1))))
    blocks = [table.slice(i, per_block) for i in range(0, len(rows), per_block)]
    actors = min(actors, len(blocks))  # an actor with no block to work on would only cost its start-up

    with quiet_ray_data():  # our own tqdm below counts files, which is what users care about
        ds = ray.data.from_arrow(blocks)
        decode = {"chunk_s": cfg.chunk_s, "min_samples": MIN_SAMPLES}
        if gpa > 0:  # CPU tasks decode while the GPU actors compute
            ds = ds.map_batches(decode_batch, fn_kwargs=decode, batch_size=None, batch_format="numpy",
                                zero_copy_batch=True, num_cpus=cfg.decode_cpus)
        ds = ds.map_batches(
            UnitActor,
            fn_constructor_kwargs={"spec": spec, "dedup": cfg.dedup, "threads": max(1, int(round(cpa))),
                                   "decode": None if gpa > 0 else {**decode, "batch_size": batch}},
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=batch if gpa > 0 else None,  # CPU: one input block of manifest rows per call
            batch_format="numpy",
            num_cpus=cpa,
            num_gpus=gpa,
            zero_copy_batch=True,
        )
        for out in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1):
            for r in out.to_pylist():
                bar.update(collector.add(r))
    return {"actors": actors, "cpus_per_actor": round(cpa, 3), "gpus_per_actor": gpa, "batch_size": batch,
            "operators": _operator_names(ds)}


def _operator_names(ds) -> list[str]:
    """The physical operators Ray Data ran (fused maps read "A->B"): recorded in meta.json, for the record."""
    def walk(summary) -> list[str]:  # upstream operators sit in the summary's parents
        return [n for parent in summary.parents for n in walk(parent)] + [
            op.operator_name for op in summary.operators_stats]

    try:
        return walk(ds.get_stats_summary())
    except Exception:  # a stats API that moved must not fail a finished encode
        return []


def _windows(pending: dict[int, list[int]], window_rows: int) -> list[dict[int, list[int]]]:
    """Whole shards grouped into runs of at most `window_rows` rows (at least one shard each). Each window is one
    Ray Data execution, so the driver's per-row bookkeeping never exceeds a window, whatever the corpus size."""
    windows: list[dict[int, list[int]]] = [{}]
    size = 0
    for shard in sorted(pending):
        if windows[-1] and size + len(pending[shard]) > window_rows:
            windows.append({})
            size = 0
        windows[-1][shard] = pending[shard]
        size += len(pending[shard])
    return windows


def _merge_rejects(out_dir: Path, n_shards: int) -> int:
    parts = [out_dir / _REJECTS_PARTS / shard_name(i) for i in range(n_shards)]
    tables = [read_shard(p) for p in parts if p.is_file()]
    table = pa.concat_tables(tables).cast(REJECTS_SCHEMA) if tables else REJECTS_SCHEMA.empty_table()
    with atomic_path(out_dir / "rejects.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return len(table)


def _counts(out_dir: Path, n_shards: int, n_files: int, n_rejected: int) -> dict[str, Any]:
    utts = units = frames = 0
    seconds = 0.0
    for i in range(n_shards):
        t = read_shard(out_dir / shard_name(i), columns=["n_units", "n_frames", "duration_s"])
        utts += len(t)
        units += int(pa.compute.sum(t["n_units"]).as_py() or 0)
        frames += int(pa.compute.sum(t["n_frames"]).as_py() or 0)
        seconds += float(pa.compute.sum(t["duration_s"]).as_py() or 0.0)
    return {"files": n_files, "encoded_files": n_files - n_rejected, "rejected": n_rejected, "utterances": utts,
            "units": units, "frames": frames, "hours": seconds / 3600.0, "shards": n_shards}


def _duplicate_audio(table: pa.Table) -> dict[int, int]:
    """{row: earlier row with the same audio} by the manifest's SHA-256 (rows without one are not compared)."""
    first: dict[str, int] = {}
    duplicates: dict[int, int] = {}
    for row, sha in enumerate(table.column("sha256").to_pylist()):
        if sha:
            duplicates.update({row: first[sha]} if sha in first else {})
            first.setdefault(sha, row)
    return duplicates


def _duplicate_reject(table: pa.Table, row: int, first: int, shard: int) -> dict[str, Any]:
    """The result row `_ShardCollector.add` takes for a file whose audio is that of row `first`."""
    utt_id, path, sha = (table.column(c)[row].as_py() for c in ("utt_id", "path", "sha256"))
    first_id, first_path = (table.column(c)[first].as_py() for c in ("utt_id", "path"))
    return {"row": row, "shard": shard, "path": path, "utt_id": utt_id, "reason": "duplicate",
            "detail": f"same audio (sha256 {sha[:16]}) as utt_id={first_id} ({first_path}), which is kept"}


def _unfinished_shards(out_dir: Path, n_shards: int) -> list[int]:
    """Shards to (re)do: missing ones, and existing ones that no longer match the record written with them.

    The record is the shard's `.shards/` file, else meta.json's copy. A shard with neither (a version-1
    dataset, or a writer killed between shard and record) counts as done if Parquet reads it whole; its record
    is written now, so the next check is the checksum. A damaged shard is deleted and named with the reason."""
    meta_records = read_meta(out_dir).shards if (out_dir / "meta.json").is_file() else {}
    todo = []
    for s in range(n_shards):
        path = out_dir / shard_name(s)
        if not path.is_file():
            todo.append(s)
            continue
        record = read_shard_record(path) or meta_records.get(path.name)
        problem = shard_problem(path, record, full=True)
        if problem:
            _note(f"redoing {path}: {problem}")
            path.unlink()
            shard_record_path(path).unlink(missing_ok=True)
            todo.append(s)
        elif read_shard_record(path) is None:
            atomic_write_json(shard_record_path(path), record or shard_record(path))
    return todo


def encode(
    manifest: str | Path | EncodeConfig,
    tokenizer: str | None = None,
    out_dir: str | Path | None = None,
    *,
    address: str | None = None,
    **options: Any,
) -> UnitsMeta:
    """Encode every file of `manifest` with `tokenizer` ("mfcc" or "hubert:DIR") into the unit dataset `out_dir`.

    `options` are the other `EncodeConfig` fields (layer, kmeans, actors, gpus_per_actor, dedup, rows_per_shard,
    chunk_s, batch_size, decode_cpus, window_rows, progress; their descriptions and defaults are the schema's),
    or pass one `EncodeConfig` as the only argument: `encode(EncodeConfig(manifest=..., out_dir=..., ...))`.
    `address` is the Ray cluster to run on (None: the running one, $RAY_ADDRESS, else a new local Ray); it is
    checked, like everything else, before Ray starts. Resumable: finished shards are verified and skipped.
    Returns the written meta.json. Files that cannot be encoded, and files whose audio repeats an earlier
    file's, are listed in rejects.parquet with their reason; files in = encoded + rejected.
    """
    named = {k: v for k, v in (("tokenizer", tokenizer), ("out_dir", out_dir)) if v is not None}
    if isinstance(manifest, EncodeConfig):
        if named or options:
            raise TypeError(f"encode(EncodeConfig): the config holds every setting; also got "
                            f"{', '.join([*named, *options])}")
        return _encode(manifest, address)
    return _encode(EncodeConfig(manifest=manifest, **named, **options), address)


def _encode(cfg: EncodeConfig, address: str | None = None) -> UnitsMeta:
    from slmscale.ray_utils import check_address

    manifest = cfg.manifest
    table = read_manifest(manifest)
    if len(table) == 0:
        raise SlmscaleError(f"{manifest}: the manifest has no rows; nothing to encode")
    spec = parse_tokenizer(cfg.tokenizer, layer=cfg.layer, kmeans=cfg.kmeans, device="cpu")
    probe = UnitTokenizer(spec)  # on the driver only for the hash and info; actors load their own copy
    info = probe.info()
    vocab_size = probe.vocab_size
    del probe
    # seconds, where ray.init would wait minutes on a wrong address (ensure_ray checks it again, as every caller)
    if address:
        check_address(address)
    else:
        check_address(os.environ.get("RAY_ADDRESS"), flag="$RAY_ADDRESS")
    gpus_per_actor = cfg.gpus_per_actor
    actor_spec = TokenizerSpec(kind=spec.kind, model_dir=spec.model_dir, layer=spec.layer, kmeans=spec.kmeans,
                               device=None if (gpus_per_actor or 0) > 0 or gpus_per_actor is None else "cpu")
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_sha = sha256_file(manifest)
    _check_plan(out_dir, {"manifest_sha256": manifest_sha, "tokenizer_hash": info["hash"],
                          "rows_per_shard": cfg.rows_per_shard, "chunk_s": cfg.chunk_s, "dedup": cfg.dedup})

    for folder in (out_dir, out_dir / _REJECTS_PARTS, out_dir / SHARD_RECORDS_DIR):
        for stale in folder.glob(".shard-*"):
            stale.unlink(missing_ok=True)  # temp files of a writer killed mid-write: never a finished shard
    n_rows = len(table)
    n_shards = math.ceil(n_rows / cfg.rows_per_shard)
    pending = {s: list(range(s * cfg.rows_per_shard, min(n_rows, (s + 1) * cfg.rows_per_shard)))
               for s in _unfinished_shards(out_dir, n_shards)}
    duplicate_of = _duplicate_audio(table)
    provenance = {"tokenizer": info["id"], "tokenizer_hash": info["hash"], "layer": info["layer"],
                  "vocab_size": vocab_size, "frame_rate_hz": info["frame_rate_hz"], "dedup": cfg.dedup,
                  "manifest_sha256": manifest_sha, "code_version": code_version()}
    run_info: dict[str, Any] = {}
    if pending:
        from tqdm.auto import tqdm

        resources = None
        with tqdm(total=sum(map(len, pending.values())), desc="encoding", unit="file",
                  disable=not cfg.progress) as bar:
            for window in _windows(pending, cfg.window_rows):
                collector = _ShardCollector(out_dir, window, provenance)
                to_encode = {s: [r for r in rows if r not in duplicate_of] for s, rows in window.items()}
                for s, rows in window.items():
                    for r in rows:
                        if r in duplicate_of:
                            bar.update(collector.add(_duplicate_reject(table, r, duplicate_of[r], s)))
                to_encode = {s: rows for s, rows in to_encode.items() if rows}
                if to_encode:
                    if resources is None:  # Ray starts only when there is audio to encode
                        from slmscale.ray_utils import ensure_ray

                        ensure_ray(address)
                        resources = _resources(actor_spec, cfg)
                    run_info = _run_pipeline(table, to_encode, actor_spec, cfg, resources, collector, bar)
                if collector.unfinished:  # every row yields a result or a reject: a bug, not bad input
                    raise RuntimeError(f"encode: shards {collector.unfinished[:5]} did not receive all their rows")
    if not pending and (out_dir / "meta.json").is_file():
        # Already complete (the plan check above proved it is the same job): keep meta.json byte for byte,
        # because its hash identifies this dataset in every training run and results row made from it.
        return read_meta(out_dir)
    n_rejected = _merge_rejects(out_dir, n_shards)
    records = {shard_name(s): read_shard_record(out_dir / shard_name(s)) for s in range(n_shards)}
    meta = UnitsMeta(
        vocab_size=vocab_size,
        tokenizer=info,
        dedup=cfg.dedup,
        counts=_counts(out_dir, n_shards, n_rows, n_rejected),
        code_version=code_version(),
        extra={"manifest": str(manifest.resolve()), "manifest_sha256": manifest_sha, "encode": cfg.run_settings(),
               "resources": run_info},
        shards={name: record for name, record in records.items() if record is not None},
    )
    write_meta(out_dir, meta)
    return meta
