"""The two Ray Data stages of `encode`: decoding (a stateless map) and unit assignment (an actor pool).

    GPU actors:  manifest rows --map_batches(decode_batch) [CPU tasks]--> 16 kHz chunks --UnitActor [actors]--> units
    CPU actors:  manifest rows --UnitActor(decode=...) [actors: decode_batch inside]--> unit rows

`decode_row` turns one manifest row into one row per chunk (or one reject row); `decode_batch` does it for a
block of manifest rows and yields the chunks a few at a time, so a 2-hour file never sits in memory whole.
`UnitActor` loads the tokenizer once in its constructor (the HuBERT weights stay on the actor's GPU), and
turns a batch of chunks into unit rows. A failure on one chunk becomes that chunk's reject, never the batch's.
Which layout runs is `encode`'s choice (see `_resources` there).
Both stages pass the bookkeeping columns `row, shard, chunk, n_chunks` through so the driver can tell when a
shard is complete.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["decode_row", "decode_batch", "UnitActor", "RESULT_SCHEMA", "keep_freed_memory"]

_PASS = ("row", "shard", "utt_id", "source", "sha256")

RESULT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),
        pa.field("shard", pa.int64()),
        pa.field("chunk", pa.int32()),
        pa.field("n_chunks", pa.int32()),
        pa.field("utt_id", pa.string()),
        pa.field("units", pa.list_(pa.uint16())),
        pa.field("durations", pa.list_(pa.uint16())),
        pa.field("n_frames", pa.int32()),
        pa.field("n_units", pa.int32()),
        pa.field("duration_s", pa.float32()),
        pa.field("source", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("path", pa.string()),
        pa.field("reason", pa.string()),  # "" when encoded
        pa.field("detail", pa.string()),
    ]
)


def decode_row(row: dict[str, Any], chunk_s: float, min_samples: int) -> Iterator[dict[str, Any]]:
    from slmscale.tokenization.audio import AudioReject, decode_chunks

    base = {k: row.get(k) for k in _PASS}
    base["path"] = row["path"]
    try:
        for chunk in decode_chunks(row["path"], chunk_s=chunk_s, min_samples=min_samples):
            yield {**base, "chunk": chunk.index, "n_chunks": chunk.n_chunks, "wav": chunk.wav, "reason": "", "detail": ""}
    except AudioReject as rej:
        yield {**base, "chunk": 0, "n_chunks": 1, "wav": np.zeros(0, np.float32), "reason": rej.reason, "detail": rej.detail}
    except Exception as exc:  # an unexpected decoder failure is this file's problem, not the corpus'
        yield {**base, "chunk": 0, "n_chunks": 1, "wav": np.zeros(0, np.float32), "reason": "decode_error",
               "detail": f"{type(exc).__name__}: {exc}"}


_CHUNK_COLUMNS = (*_PASS, "path", "chunk", "n_chunks", "wav", "reason", "detail")


def decode_batch(batch: dict[str, np.ndarray], chunk_s: float, min_samples: int, max_samples: int = 16_000 * 600,
                 max_chunks: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """`decode_row` over a batch of manifest rows, yielding column batches of decoded chunks (column `wav`: a 1-D
    object array of float32 waveforms) each holding at most `max_samples` samples (or a single chunk) and at
    most `max_chunks` chunks."""
    rows: list[dict[str, Any]] = []
    held = 0
    for i in range(len(batch["row"])):
        row = {k: (batch[k][i] if k in batch else None) for k in (*_PASS, "path")}
        for chunk in decode_row(row, chunk_s=chunk_s, min_samples=min_samples):
            if rows and (held + len(chunk["wav"]) > max_samples or (max_chunks and len(rows) >= max_chunks)):
                yield _columns(rows)
                rows, held = [], 0
            rows.append(chunk)
            held += len(chunk["wav"])
    if rows:
        yield _columns(rows)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    cols = {k: np.array([r[k] for r in rows]) for k in _CHUNK_COLUMNS if k != "wav"}
    wav = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):  # element by element: equal-length waveforms must not become one 2-D array
        wav[i] = r["wav"]
    cols["wav"] = wav
    return cols


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Tell glibc malloc to serve blocks under `mmap_threshold` from the heap and to keep up to `trim_threshold`
    of freed heap instead of returning it to the kernel. Feature extraction allocates and frees many
    megabyte-sized temporaries per file; with glibc's defaults each one is a fresh mmap whose pages fault in
    again, which measured 40 % of the CPU time of tokenization with the previous numpy MFCC (12.5 s of system
    time in a 31 s run; kaldi-native-fbank, used now, works frame by frame).
    Process-wide, so meant for worker processes (Ray actors, benchmark loops). Returns False where the C library
    is not glibc (nothing changes there)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> parameter numbers
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(mallopt(m_trim_threshold, int(trim_threshold)))


class UnitActor:
    """Holds one tokenizer for its lifetime; `__call__` maps a batch of decoded chunks to unit rows.

    With `decode={"chunk_s": ..., "min_samples": ..., "batch_size": ...}` the actor takes manifest rows instead
    and decodes them itself (`decode_batch`), tokenizing `batch_size` chunks at a time: the layout `encode`
    uses on CPU-only clusters, where the waveforms then never leave the process that decodes them.
    The constructor applies `keep_freed_memory()` to its process (an actor's own Ray worker in `encode`)."""

    def __init__(self, spec, dedup: bool = True, threads: int | None = None, decode: dict | None = None):
        from slmscale.tokenization.tokenizer import UnitTokenizer

        self.decode = dict(decode) if decode else None

        keep_freed_memory()  # the actor's own process: its large feature temporaries are reused, not re-faulted

        if threads and spec.kind == "hubert":  # mfcc is numpy only: importing torch would cost seconds per actor
            import torch

            torch.set_num_threads(threads)
        self.tokenizer = UnitTokenizer(spec)
        if threads:
            # After the tokenizer is built: threadpoolctl only limits BLAS libraries already loaded, and numpy's
            # and scipy's OpenBLAS load with the extractor and codebook.
            try:
                from threadpoolctl import threadpool_limits

                threadpool_limits(threads)
            except ImportError:  # optional: BLAS then uses its default thread count (Ray sets OMP_NUM_THREADS)
                pass
        self.dedup = dedup

    def _rows(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        return {
            "row": int(batch["row"][i]), "shard": int(batch["shard"][i]), "chunk": int(batch["chunk"][i]),
            "n_chunks": int(batch["n_chunks"][i]), "utt_id": str(batch["utt_id"][i]), "source": _s(batch["source"][i]),
            "sha256": _s(batch["sha256"][i]), "path": str(batch["path"][i]),
        }

    def _encoded(self, meta: dict, frame_units: np.ndarray, n_samples: int) -> dict:
        from slmscale.tokenization.dedup import collapse_runs

        if self.dedup:
            units, durations = collapse_runs(frame_units)
        else:
            units, durations = frame_units.astype(np.uint16), np.ones(len(frame_units), np.uint16)
        return {**meta, "units": units, "durations": durations, "n_frames": len(frame_units), "n_units": len(units),
                "duration_s": n_samples / 16000.0, "reason": "", "detail": ""}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if self.decode is None:
            return self._encode_chunks(batch)
        tables = [self._encode_chunks(chunks) for chunks in decode_batch(
            batch, chunk_s=self.decode["chunk_s"], min_samples=self.decode["min_samples"],
            max_chunks=self.decode.get("batch_size"))]
        return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()

    def _encode_chunks(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["row"])
        out: list[dict | None] = [None] * n
        todo = []
        for i in range(n):
            meta = self._rows(batch, i)
            reason = str(batch["reason"][i])
            if reason:
                out[i] = {**meta, "units": None, "durations": None, "n_frames": 0, "n_units": 0, "duration_s": 0.0,
                          "reason": reason, "detail": str(batch["detail"][i])}
            else:
                todo.append((i, meta, np.asarray(batch["wav"][i], dtype=np.float32)))
        if todo:
            try:
                frame_units = self.tokenizer.frame_units([w for _, _, w in todo])
                for (i, meta, w), fu in zip(todo, frame_units):
                    out[i] = self._encoded(meta, fu, len(w))
            except Exception:  # retry one by one so that only the chunk that fails is rejected
                for i, meta, w in todo:
                    try:
                        out[i] = self._encoded(meta, self.tokenizer.frame_units([w])[0], len(w))
                    except Exception as exc:
                        out[i] = {**meta, "units": None, "durations": None, "n_frames": 0, "n_units": 0,
                                  "duration_s": 0.0, "reason": "encode_error", "detail": f"{type(exc).__name__}: {exc}"}
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def _s(value) -> str | None:
    if value is None:
        return None
    value = str(value)
    return None if value in ("None", "nan") else value
