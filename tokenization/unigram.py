"""The paper's unigram ablation: a SentencePiece unigram model over unit sequences.

Each unit id u is mapped to one character (U+4E00 + u: CJK ideographs, so no piece ever contains a space and
SentencePiece sees every unit as one symbol); an utterance becomes a string, SentencePiece learns a vocabulary
of V pieces, and `apply` rewrites a unit dataset into piece ids. The applied dataset has its own meta.json
(kind "unigram", hash over the parent tokenizer hash and the SentencePiece model bytes) and keeps the parent's
provenance in `extra.parent`. Durations of a piece are the sum of the durations of the units it covers.
The SentencePiece model is its own protobuf file (not a pickle) plus a JSON sidecar.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, atomic_write_json, code_version, read_json
from slmscale.tokenization.schema import (
    UNIT_SHARD_SCHEMA,
    UnitsMeta,
    meta_hash,
    read_meta,
    read_shard,
    read_shard_record,
    shard_paths,
    shard_problem,
    write_meta,
    write_shard,
)

__all__ = ["train_unigram", "apply_unigram", "units_to_text", "UNIT_CHAR_BASE"]

UNIT_CHAR_BASE = 0x4E00  # 20,992 CJK ideographs follow: enough for any K used in practice
_MAX_CHARS = 20992


def units_to_text(units) -> str:
    return "".join(chr(UNIT_CHAR_BASE + int(u)) for u in units)


def _model_paths(model: str | Path) -> tuple[Path, Path]:
    model = Path(model)
    stem = model.with_suffix("") if model.suffix in (".model", ".json") else model
    return stem.with_name(stem.name + ".model"), stem.with_name(stem.name + ".json")


def train_unigram(units_dir: str | Path, vocab_size: int, out: str | Path, *, max_sentences: int = 1_000_000,
                  max_piece_units: int = 16, seed: int = 0) -> Path:
    """Train a unigram model with up to `vocab_size` pieces on the utterances of `units_dir`; writes OUT.model + OUT.json.

    The limit is soft: a corpus too small to support V distinct pieces gets fewer (recorded in OUT.json as
    `vocab_size` next to `vocab_size_requested`) rather than an error."""
    import sentencepiece as spm

    meta = read_meta(units_dir)
    if meta.vocab_size > _MAX_CHARS:
        raise SlmscaleError(f"{units_dir}: vocab_size {meta.vocab_size} exceeds the {_MAX_CHARS} unit characters available")
    if vocab_size <= meta.vocab_size:
        raise SlmscaleError(f"--vocab-size {vocab_size}: must exceed the unit vocabulary K={meta.vocab_size} "
                            "(every unit is a piece of its own, and pieces are added on top)")
    model_path, json_path = _model_paths(out)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "units.txt"
        n = 0
        with text.open("w", encoding="utf-8") as f:
            # Every unit id once, so that each is a piece even if the corpus sample lacks it.
            f.write(units_to_text(range(meta.vocab_size)) + "\n")
            for path in shard_paths(units_dir):
                for units in read_shard(path, columns=["units"]).column("units").to_pylist():
                    if n >= max_sentences:
                        break
                    # SentencePiece caps sentence length; long utterances are cut into pieces for training only.
                    for s in range(0, len(units), 1000):
                        f.write(units_to_text(units[s: s + 1000]) + "\n")
                    n += 1
        if n == 0:
            raise SlmscaleError(f"{units_dir}: no utterances to train on")
        prefix = Path(tmp) / "spm"
        try:
            spm.SentencePieceTrainer.train(
                input=str(text), model_prefix=str(prefix), model_type="unigram", vocab_size=vocab_size,
                character_coverage=1.0, add_dummy_prefix=False, split_by_unicode_script=False,
                split_by_number=False, split_by_whitespace=False, max_sentencepiece_length=max_piece_units,
                max_sentence_length=1 << 16, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, unk_surface="?",
                num_threads=1, minloglevel=2, hard_vocab_limit=False,
                input_sentence_size=max_sentences, shuffle_input_sentence=True,
            )
        except RuntimeError as exc:  # e.g. vocab_size too large for the corpus
            raise SlmscaleError(f"--vocab-size {vocab_size}: SentencePiece could not train: {exc}") from None
        model_bytes = (Path(tmp) / "spm.model").read_bytes()
        trained_vocab = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "spm.model")).get_piece_size()
    with atomic_path(model_path, suffix=".model") as t:
        t.write_bytes(model_bytes)
    atomic_write_json(json_path, {
        "vocab_size": trained_vocab, "vocab_size_requested": vocab_size, "unit_vocab_size": meta.vocab_size, "unit_char_base": UNIT_CHAR_BASE,
        "parent_tokenizer": meta.tokenizer, "parent_units_meta_hash": meta_hash(units_dir), "sentences": n,
        "sha256": hashlib.sha256(model_bytes).hexdigest(), "seed": seed, "code_version": code_version(),
    })
    return model_path


def apply_unigram(units_dir: str | Path, model: str | Path, out_dir: str | Path) -> UnitsMeta:
    """Rewrite every shard of `units_dir` into piece ids of `model` (resumable: finished shards are skipped)."""
    import sentencepiece as spm

    model_path, json_path = _model_paths(model)
    if not model_path.is_file():
        raise SlmscaleError(f"unigram model not found: {model_path} (train one with `slmscale tokenize unigram train`)")
    info = read_json(json_path, "unigram model metadata")
    parent = read_meta(units_dir)
    if info.get("parent_tokenizer", {}).get("hash") != parent.tokenizer_hash:
        raise SlmscaleError(f"{json_path}: trained on units of tokenizer {info.get('parent_tokenizer', {}).get('hash')!r}, "
                            f"but {units_dir} holds units of tokenizer {parent.tokenizer_hash!r}")
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    model_sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    tok_hash = hashlib.sha256(json.dumps({"parent": parent.tokenizer_hash, "spm": model_sha}).encode()).hexdigest()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"slmscale.tokenizer": "unigram", "slmscale.tokenizer_hash": tok_hash,
                  "slmscale.parent_tokenizer_hash": parent.tokenizer_hash, "slmscale.code_version": code_version()}
    utts = pieces = frames = 0
    seconds = 0.0
    for path in shard_paths(units_dir):
        target = out_dir / path.name
        if not target.is_file() or shard_problem(target, read_shard_record(target)):  # missing or damaged
            table = read_shard(path)
            new_units, new_durs = [], []
            for units, durs in zip(table.column("units").to_pylist(), table.column("durations").to_pylist()):
                ids = sp.encode(units_to_text(units), out_type=int)
                lengths = [len(p) for p in sp.id_to_piece(ids)] if ids else []
                ends = np.cumsum(lengths)
                cum = np.concatenate([[0], np.cumsum(durs if durs is not None else np.ones(len(units)))])
                piece_durs = np.diff(np.concatenate([[0], cum[ends]])) if ids else np.zeros(0)
                new_units.append(np.asarray(ids, np.uint16))
                new_durs.append(np.minimum(piece_durs, 65535).astype(np.uint16))
            out = table.set_column(table.schema.get_field_index("units"), "units",
                                   pa.array(new_units, pa.list_(pa.uint16())))
            out = out.set_column(out.schema.get_field_index("durations"), "durations",
                                 pa.array(new_durs, pa.list_(pa.uint16())))
            out = out.set_column(out.schema.get_field_index("n_units"), "n_units",
                                 pa.array([len(u) for u in new_units], pa.int32()))
            write_shard(target, out.cast(UNIT_SHARD_SCHEMA).replace_schema_metadata(provenance))
        t = read_shard(target, columns=["n_units", "n_frames", "duration_s"])
        utts += len(t)
        pieces += int(pa.compute.sum(t["n_units"]).as_py() or 0)
        frames += int(pa.compute.sum(t["n_frames"]).as_py() or 0)
        seconds += float(pa.compute.sum(t["duration_s"]).as_py() or 0.0)
    meta = UnitsMeta(
        vocab_size=int(sp.get_piece_size()),
        tokenizer={"kind": "unigram", "hash": tok_hash, "layer": parent.tokenizer.get("layer"),
                   "frame_rate_hz": parent.tokenizer.get("frame_rate_hz"), "spm_model": str(model_path.resolve()),
                   "spm_sha256": model_sha, "parent": parent.tokenizer},
        dedup=parent.dedup,
        counts={"utterances": utts, "units": pieces, "frames": frames, "hours": seconds / 3600.0,
                "shards": len(shard_paths(units_dir)), "parent_units": parent.counts.get("units"),
                "compression": (parent.counts.get("units") or 0) / max(pieces, 1)},
        code_version=code_version(),
        extra={"parent": {"units_dir": str(Path(units_dir).resolve()), "units_meta_hash": meta_hash(units_dir),
                          "tokenizer": parent.tokenizer, "code_version": parent.code_version}},
        shards={p.name: record for p in shard_paths(out_dir) if (record := read_shard_record(p)) is not None},
    )
    parent_rejects = Path(units_dir) / "rejects.parquet"
    if parent_rejects.is_file():
        with atomic_path(out_dir / "rejects.parquet", suffix=".parquet") as tmp:
            tmp.write_bytes(parent_rejects.read_bytes())
    write_meta(out_dir, meta)
    return meta
