"""Training data from a unit dataset: split by utterance-id hash, pack into sequences, sample deterministically.

The whole data order is a pure function of (dataset, seed, sequence index): update `s` of a run reads global
sequences `[s * B, (s + 1) * B)`, and global sequence `g` is sequence `perm_e[g mod n]` of the packed
training stream, with `e = g div n` the epoch and `perm_e` a permutation seeded by (seed, e). The data position
saved in a checkpoint is therefore just the number of updates done, and resuming reads exactly what an
uninterrupted run would have read.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slmscale.errors import SlmscaleError
from slmscale.tokenization.schema import read_meta, shard_paths

__all__ = ["split_of", "UnitStreams", "load_unit_streams", "cached_unit_streams", "SequenceSampler", "eval_sequences"]

SPLITS = ("train", "val", "test")


def split_of(utt_id: str, val_fraction: float, test_fraction: float) -> str:
    """'test' / 'val' / 'train' from a hash of the utterance id alone: stable across runs, shards and
    dataset growth (an utterance never moves between splits when more data is added)."""
    h = int.from_bytes(hashlib.sha256(utt_id.encode()).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class UnitStreams:
    """Each split as one token stream: utterances (utt_id order; train shuffled by seed) each followed by EOS."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    n_units: int  # K
    utterances: dict[str, int]  # per split

    @property
    def eos_id(self) -> int:
        return self.n_units

    @property
    def pad_id(self) -> int:
        return self.n_units + 1


def stream_dtype(n_units: int) -> np.dtype:
    """uint16 while EOS (= K) fits, halving memory and disk for the paper's K = 500."""
    return np.dtype(np.uint16) if n_units <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def _list_parts(units) -> tuple[np.ndarray, np.ndarray]:
    """(values, int64 offsets starting at 0) of a pyarrow list<uint16> array, without copying the values."""
    if isinstance(units, pa.ChunkedArray):
        units = pa.concat_arrays(units.chunks) if units.num_chunks != 1 else units.chunk(0)
    offsets = units.offsets.to_numpy().astype(np.int64)
    values = units.values.to_numpy(zero_copy_only=False)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


def _scatter(out: np.ndarray, starts: np.ndarray, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
             chunk: int = 65536) -> None:
    """out[starts[i] : starts[i] + len(row i)] = units of row `rows[i]`, vectorised per chunk of rows."""
    for lo in range(0, len(rows), chunk):
        r, st = rows[lo:lo + chunk], starts[lo:lo + chunk]
        lens = offsets[r + 1] - offsets[r]
        total = int(lens.sum())
        if not total:
            continue
        seg = np.repeat(np.arange(len(r)), lens)
        within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        out[st[seg] + within] = values[offsets[r][seg] + within]


def _read_shard(path: Path, columns: list[str]) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # ArrowInvalid (not Parquet / truncated), missing column, ...
        raise SlmscaleError(f"{path}: cannot read as a unit shard ({exc}); expected Parquet with "
                            f"columns utt_id (string) and units (list<uint16>)") from None
    units_type = table.schema.field("units").type
    if not (pa.types.is_list(units_type) or pa.types.is_large_list(units_type)) or not pa.types.is_integer(units_type.value_type):
        raise SlmscaleError(f"{path}: column 'units' has type {units_type}, expected list<uint16>")
    return table


def _empty_split(units_dir, name: str, n_utts: int, val_fraction: float, test_fraction: float) -> SlmscaleError:
    return SlmscaleError(
        f"{units_dir}: the {name} split is empty ({n_utts} utterances, val_fraction={val_fraction}, "
        f"test_fraction={test_fraction}); expected at least one utterance in each split — "
        f"use a larger dataset or larger fractions"
    )


def check_splits(units_dir: str | Path, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Utterances per split (counting non-empty utterances, as `load_unit_streams` does), one shard in memory at a
    time and without packing anything. Raises the same error as `load_unit_streams` for an empty split, so a
    sweep can refuse a dataset before launching any trial."""
    paths = shard_paths(units_dir)
    if not paths:
        raise SlmscaleError(f"{units_dir}: no shard-*.parquet files — the unit dataset is empty")
    counts = dict.fromkeys(SPLITS, 0)
    n_utts = 0
    for path in paths:
        table = _read_shard(path, ["utt_id", "units"])
        lengths = np.diff(_list_parts(table.column("units"))[1])
        for utt_id, length in zip(table.column("utt_id").to_pylist(), lengths):
            n_utts += 1
            if length > 0:
                counts[split_of(utt_id, val_fraction, test_fraction)] += 1
    for name in SPLITS:
        if counts[name] == 0:
            raise _empty_split(units_dir, name, n_utts, val_fraction, test_fraction)
    return counts


def load_unit_streams(units_dir: str | Path, val_fraction: float, test_fraction: float, seed: int) -> UnitStreams:
    """Read every shard, check unit ids against meta.json's K, split by utt_id hash and pack each split.

    Two passes over the shards, one shard in memory at a time: the first checks ids and collects utterance
    ids and lengths, the second copies each utterance straight to its place in the output streams. The
    order depends on utt_ids and the seed only, not on how utterances are spread over shards.
    Raises SlmscaleError (before any training compute) for an empty dataset, ids >= K, or an empty split."""
    meta = read_meta(units_dir)
    k = meta.vocab_size
    paths = shard_paths(units_dir)
    if not paths:
        raise SlmscaleError(f"{units_dir}: no shard-*.parquet files — the unit dataset is empty")

    utt_ids: list[str] = []
    lengths, shard_of, row_of = [], [], []
    for s, path in enumerate(paths):
        table = _read_shard(path, ["utt_id", "units"])
        values, offsets = _list_parts(table.column("units"))
        if values.size and int(values.max()) >= k:
            first = int(np.argmax(values >= k))
            bad = int(np.searchsorted(offsets, first, side="right") - 1)
            raise SlmscaleError(
                f"{path}: unit id {int(values.max())} is out of range for vocab_size {k} in meta.json "
                f"(first offending utterance {table.column('utt_id')[bad].as_py()!r}); expected ids in [0, {k})"
            )
        if values.size and int(values.min()) < 0:
            raise SlmscaleError(f"{path}: negative unit id {int(values.min())}; expected ids in [0, {k})")
        utt_ids.extend(table.column("utt_id").to_pylist())
        lengths.append(np.diff(offsets))
        shard_of.append(np.full(table.num_rows, s, dtype=np.int32))
        row_of.append(np.arange(table.num_rows, dtype=np.int64))
    if not utt_ids:
        raise SlmscaleError(f"{units_dir}: the unit shards hold no utterances")
    length = np.concatenate(lengths)
    shard_of, row_of = np.concatenate(shard_of), np.concatenate(row_of)
    if not length.any():
        raise SlmscaleError(f"{units_dir}: all {len(utt_ids)} utterances are empty (no units)")

    by_id = np.array(sorted(range(len(utt_ids)), key=utt_ids.__getitem__), dtype=np.int64)  # stable
    split = np.array([SPLITS.index(split_of(u, val_fraction, test_fraction)) for u in utt_ids], dtype=np.int8)
    start = np.zeros(len(utt_ids), dtype=np.int64)  # where each utterance goes in its split's stream
    streams, counts = {}, {}
    for code, name in enumerate(SPLITS):
        idx = by_id[(split[by_id] == code) & (length[by_id] > 0)]
        counts[name] = int(idx.size)
        if idx.size == 0:
            raise _empty_split(units_dir, name, len(utt_ids), val_fraction, test_fraction)
        if name == "train":
            idx = idx[np.random.default_rng([seed, 0x5EED]).permutation(idx.size)]
        ends = np.cumsum(length[idx] + 1)
        start[idx] = ends - length[idx] - 1
        streams[name] = np.full(int(ends[-1]), k, dtype=stream_dtype(k))  # EOS everywhere, units copied over
    in_split = length > 0
    for s, path in enumerate(paths):
        values, offsets = _list_parts(_read_shard(path, ["units"]).column("units"))
        mine = np.flatnonzero((shard_of == s) & in_split)
        for code, name in enumerate(SPLITS):
            sel = mine[split[mine] == code]
            _scatter(streams[name], start[sel], values, offsets, row_of[sel])
    return UnitStreams(streams["train"], streams["val"], streams["test"], k, counts)


class SequenceSampler:
    """Fixed-length training sequences over epochs of the (optionally capped) packed train stream."""

    def __init__(self, stream: np.ndarray, context: int, seed: int, unique_tokens: int | None = None):
        n_avail = len(stream) // context
        if n_avail == 0:
            raise SlmscaleError(
                f"training split has {len(stream)} tokens, fewer than one sequence of context {context}"
            )
        n = n_avail
        if unique_tokens is not None:
            if unique_tokens < context:
                raise SlmscaleError(f"unique_tokens: {unique_tokens} is smaller than one sequence ({context} tokens)")
            if unique_tokens > n_avail * context:
                raise SlmscaleError(
                    f"unique_tokens: {unique_tokens} exceeds the {n_avail * context} tokens of the training split"
                )
            n = unique_tokens // context
        self.context = context
        self.seed = seed
        self.n_sequences = n
        self.sequences = stream[: n * context].reshape(n, context)

    @property
    def unique_tokens(self) -> int:
        return self.n_sequences * self.context

    def _perm(self, epoch: int) -> np.ndarray:
        # A batch touches one epoch (two at a boundary); keep the last few permutations, per sampler.
        cache = self.__dict__.setdefault("_perms", {})
        if epoch not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_sequences)
        return cache[epoch]

    def batch(self, start: int, count: int) -> np.ndarray:
        """Global sequences [start, start + count) as an int64 array [count, context]."""
        g = np.arange(start, start + count)
        epochs, pos = np.divmod(g, self.n_sequences)
        rows = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            rows[sel] = self._perm(int(e))[pos[sel]]
        return self.sequences[rows].astype(np.int64)


def eval_sequences(stream: np.ndarray, context: int, max_tokens: int | None, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `max_tokens` of an eval stream as sequences [n, context] plus a mask of real tokens
    (the last sequence is right-padded, and padded positions are excluded from the loss)."""
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n = -(-len(stream) // context)
    ids = np.full(n * context, pad_id, dtype=np.int64)
    ids[: len(stream)] = np.asarray(stream)
    mask = np.zeros(n * context, dtype=bool)
    mask[: len(stream)] = True
    return ids.reshape(n, context), mask.reshape(n, context)


def cached_unit_streams(units_dir: str | Path, cache_root: str | Path, val_fraction: float, test_fraction: float,
                        seed: int, units_meta_hash: str) -> UnitStreams:
    """`load_unit_streams`, packed once into CACHE_ROOT/<key>/{train,val,test}.npy and memory-mapped after.

    Every Ray Train worker (and every resume) maps the same files instead of re-reading and re-packing the
    shards into its own memory; runs of a sweep can share one cache root. The key (folder name) is a hash of
    the dataset's meta.json hash, the seed and the split fractions. Files are written atomically, and runs
    packing the same key at once write identical bytes."""
    from slmscale.io import atomic_path, atomic_write_json, sha256_bytes

    key = {"units_meta_hash": units_meta_hash, "seed": seed, "val_fraction": val_fraction,
           "test_fraction": test_fraction, "version": 1}
    root = Path(cache_root) / sha256_bytes(json.dumps(key, sort_keys=True).encode())[:16]
    info_path = root / "packing.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("key") == key and all((root / f"{s}.npy").is_file() for s in SPLITS):
            arrays = {s: np.load(root / f"{s}.npy", mmap_mode="r") for s in SPLITS}
            return UnitStreams(arrays["train"], arrays["val"], arrays["test"], info["n_units"], info["utterances"])
    streams = load_unit_streams(units_dir, val_fraction, test_fraction, seed)
    dtype = stream_dtype(streams.n_units)
    root.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        with atomic_path(root / f"{s}.npy", suffix=".npy") as tmp:
            np.save(tmp, getattr(streams, s).astype(dtype))
    atomic_write_json(info_path, {"key": key, "n_units": streams.n_units, "utterances": streams.utterances,
                                  "tokens": {s: int(len(getattr(streams, s))) for s in SPLITS}})
    return streams
