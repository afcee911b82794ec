"""The audio manifest: one Parquet row per audio file (contract §1 of docs/architecture.md).

`build_manifest(src, out)` accepts a folder (wav/flac/ogg/mp3, recursive) or a TSV/JSONL list and records each
file's size, SHA-256 and header (sample rate, channels, duration). Files that cannot be read go to
`<out stem>.rejects.parquet` (REJECTS_SCHEMA), never into an exception, so one bad file does not stop a corpus.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, sha256_file
from slmscale.tokenization.schema import REJECTS_SCHEMA

__all__ = ["MANIFEST_SCHEMA", "AUDIO_EXTENSIONS", "build_manifest", "read_manifest", "write_manifest",
           "manifest_rows_for_files", "rejects_path_for"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # absolute
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int16()),
        pa.field("duration_s", pa.float64()),  # from the header; decoding may find fewer samples (truncation)
        pa.field("transcript", pa.string()),
        pa.field("speaker", pa.string()),
        pa.field("source", pa.string()),
    ]
)


def rejects_path_for(manifest: str | Path) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(manifest.name.removesuffix(".parquet") + ".rejects.parquet")


def _probe(entry: dict[str, Any], source: str) -> tuple[dict | None, dict | None]:
    """(manifest row, None) or (None, rejects row) for one file. Never raises for a bad file."""
    import soundfile as sf

    path = Path(entry["path"]).resolve()
    label = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, {"source": label, "reason": "missing", "detail": f"cannot stat: {exc.strerror or exc}"}
    if size == 0:
        return None, {"source": label, "reason": "empty", "detail": "file has 0 bytes"}
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile.LibsndfileError, RuntimeError: not an audio file
        return None, {"source": label, "reason": "not_audio", "detail": f"not a readable audio file: {exc}"}
    if info.samplerate <= 0 or info.channels <= 0:
        return None, {"source": label, "reason": "not_audio",
                      "detail": f"header has sample rate {info.samplerate} and {info.channels} channel(s)"}
    row = {
        "utt_id": entry["utt_id"],
        "path": label,
        "size": int(size),
        "sha256": sha256_file(path),
        "sample_rate": int(info.samplerate),
        "channels": int(info.channels),
        "duration_s": float(info.frames) / float(info.samplerate),
        "transcript": entry.get("transcript"),
        "speaker": entry.get("speaker"),
        "source": entry.get("source") or source,
    }
    return row, None


def manifest_rows_for_files(
    entries: Iterable[dict[str, Any]], source: str, threads: int = 8, progress: bool = True
) -> tuple[list[dict], list[dict]]:
    """Probe entries ({path, utt_id, transcript?, speaker?, source?}) in a thread pool (hashing is I/O bound and
    hashlib/libsndfile release the GIL). Returns (manifest rows, rejects rows), in input order."""
    from tqdm.auto import tqdm

    entries = list(entries)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(tqdm(pool.map(lambda e: _probe(e, source), entries), total=len(entries),
                            desc="manifest", unit="file", disable=not progress))
    rows = [r for r, _ in results if r is not None]
    rejects = [j for _, j in results if j is not None]
    return rows, rejects


def _utt_id_from_path(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _entries_from_folder(root: Path) -> list[dict]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    entries = [{"path": p, "utt_id": _utt_id_from_path(p, root)} for p in files]
    ids = [e["utt_id"] for e in entries]
    if len(set(ids)) != len(ids):  # a.wav next to a.flac
        seen: set[str] = set()
        for e, p in zip(entries, files):
            if e["utt_id"] in seen or ids.count(e["utt_id"]) > 1:
                e["utt_id"] = p.relative_to(root).as_posix()  # keep the extension to disambiguate
            seen.add(e["utt_id"])
    return entries


def _entries_from_list(list_path: Path) -> list[dict]:
    base = list_path.parent
    suffix = list_path.suffix.lower()
    records: list[dict] = []
    if suffix in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SlmscaleError(f"{list_path}:{lineno}: invalid JSON ({exc}), expected one object per line") from None
            if not isinstance(rec, dict):
                raise SlmscaleError(f"{list_path}:{lineno}: expected a JSON object with a 'path' field, got {rec!r}")
            records.append({**rec, "_line": lineno})
    else:
        with list_path.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise SlmscaleError(f"{list_path}: expected a TSV with a header containing 'path' "
                                    f"(optional: utt_id, transcript, speaker, source), got {reader.fieldnames}")
            for lineno, rec in enumerate(reader, 2):
                records.append({**rec, "_line": lineno})
    entries = []
    for rec in records:
        raw = rec.get("path")
        if not raw:
            raise SlmscaleError(f"{list_path}:{rec['_line']}: field 'path' is missing or empty")
        path = Path(os.path.expanduser(str(raw)))
        path = path if path.is_absolute() else base / path
        utt_id = rec.get("utt_id") or (_utt_id_from_path(path.resolve(), base.resolve())
                                       if path.resolve().is_relative_to(base.resolve()) else path.stem)
        entries.append({"path": path, "utt_id": str(utt_id), "transcript": rec.get("transcript") or None,
                        "speaker": rec.get("speaker") or None, "source": rec.get("source") or None})
    ids = [e["utt_id"] for e in entries]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise SlmscaleError(f"{list_path}: duplicate utt_id(s) {dup}; utt_id must be unique")
    return entries


def write_manifest(rows: list[dict], out: str | Path, rejects: list[dict] | None = None) -> Path:
    """Write the manifest (and its rejects table, also when empty) atomically."""
    out = Path(out)
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    if rejects is not None:
        with atomic_path(rejects_path_for(out), suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), tmp)
    return out


def build_manifest(src: str | Path, out: str | Path, source: str | None = None, threads: int = 8,
                   progress: bool = True) -> Path:
    """Scan `src` (folder or .tsv/.jsonl list) and write the manifest Parquet at `out`; returns `out`.

    Unreadable files (empty, not audio, missing) are written to `<out>.rejects.parquet` with their reason.
    `source` names the corpus (default: the folder or list name).
    """
    src = Path(src)
    if src.is_dir():
        entries = _entries_from_folder(src)
        default_source = src.resolve().name
        if not entries:
            raise SlmscaleError(f"{src}: no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)}, recursively)")
    elif src.is_file() and src.suffix.lower() in (".tsv", ".jsonl", ".ndjson", ".txt"):
        entries = _entries_from_list(src)
        default_source = src.stem
        if not entries:
            raise SlmscaleError(f"{src}: the list has no entries")
    elif src.is_file():
        raise SlmscaleError(f"{src}: expected a folder of audio files or a .tsv/.jsonl list, got a '{src.suffix}' file")
    else:
        raise SlmscaleError(f"{src}: no such folder or list file")
    rows, rejects = manifest_rows_for_files(entries, source=source or default_source, threads=threads, progress=progress)
    return write_manifest(rows, out, rejects)


def read_manifest(path: str | Path) -> pa.Table:
    """Read and check a manifest: the contract columns must be present and utt_id unique."""
    path = Path(path)
    if not path.is_file():
        raise SlmscaleError(f"manifest not found: {path} (build one with `slmscale tokenize manifest`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow.ArrowInvalid for non-Parquet bytes
        raise SlmscaleError(f"{path}: not a readable Parquet manifest: {exc}") from None
    missing = [c for c in ("utt_id", "path") if c not in table.column_names]
    if missing:
        raise SlmscaleError(f"{path}: missing column(s) {missing}; expected {MANIFEST_SCHEMA.names}")
    for name in MANIFEST_SCHEMA.names:  # tolerate hand-made manifests with only utt_id + path
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), MANIFEST_SCHEMA.field(name).type))
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    ids = table.column("utt_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise SlmscaleError(f"{path}: column 'utt_id' must be unique; duplicates {dup}")
    return table
