"""Benchmark audio -> units, through the same tokenizer as the model's training units, cached by tokenizer hash.

Scores are only meaningful when the benchmark is tokenized exactly like the training corpus (same features,
layer and k-means codebook), so the unit dataset used for scoring must carry the tokenizer hash recorded in the
model's run.json; anything else is refused. Encoding reuses `tokenization.encode` (Ray Data), and its output is
kept under

    CACHE/units/<task>-<benchmark fingerprint[:16]>/<tokenizer hash[:16]>/   (a unit dataset, contract §2)

so evaluating another checkpoint trained on the same units does not re-encode the benchmark.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, code_version
from slmscale.models.evaluation.benchmarks import Benchmark

__all__ = ["default_cache_dir", "tokenizer_spec", "check_units_match", "read_candidate_units", "encode_benchmark",
           "encode_in_process"]


def default_cache_dir() -> Path:
    """$SLMSCALE_CACHE/eval, else ~/.cache/slmscale/eval."""
    base = os.environ.get("SLMSCALE_CACHE") or Path.home() / ".cache" / "slmscale"
    return Path(base) / "eval"


def tokenizer_spec(run_info: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer the model was trained with: the training unit dataset's meta.json `tokenizer` block (kind,
    hash, layer, k-means codebook, ...), falling back to run.json's `tokenizer` / `tokenizer_hash`."""
    from slmscale.tokenization.schema import read_meta

    spec: dict[str, Any] = {}
    units_dir = run_info.get("units_dir")
    source = "run.json tokenizer_info"
    if units_dir and (Path(units_dir) / "meta.json").is_file():
        meta = read_meta(units_dir)
        spec, source = {**meta.tokenizer, "dedup": meta.dedup}, f"{units_dir}/meta.json"
    elif run_info.get("tokenizer_info"):
        spec = dict(run_info["tokenizer_info"])
    spec.setdefault("id", run_info.get("tokenizer"))
    expected = run_info.get("tokenizer_hash")
    if not expected:
        raise SlmscaleError("run.json: field 'tokenizer_hash' is missing; cannot check the benchmark's tokenization")
    if spec.get("hash") and spec["hash"] != expected:
        raise SlmscaleError(
            f"{source}: tokenizer hash {spec['hash']} differs from run.json tokenizer_hash {expected}; "
            "the run directory and the tokenizer it records disagree"
        )
    spec["hash"] = expected
    return spec


def check_units_match(units_dir: str | Path, run_info: dict[str, Any]) -> None:
    """Refuse a unit dataset whose tokenizer is not the model's (meta.json tokenizer.hash vs run.json)."""
    from slmscale.tokenization.schema import read_meta

    meta = read_meta(units_dir)
    expected = run_info.get("tokenizer_hash")
    if meta.tokenizer_hash != expected:
        raise SlmscaleError(
            f"{units_dir}/meta.json: benchmark units were made with tokenizer hash {meta.tokenizer_hash} "
            f"({meta.tokenizer.get('kind')}), but the model was trained on units of tokenizer hash {expected} "
            f"({run_info.get('tokenizer')}); scores across tokenizers are meaningless — encode the benchmark with "
            "the model's tokenizer (omit --units to let eval do it)"
        )
    vocab = run_info.get("units_vocab_size")
    if vocab is not None and meta.vocab_size != int(vocab):
        raise SlmscaleError(f"{units_dir}/meta.json: vocab_size {meta.vocab_size}, expected the model's {vocab}")


def read_candidate_units(units_dir: str | Path, bench: Benchmark) -> list[list[int]]:
    """Unit sequences of the benchmark's candidates, in candidate order; missing utterances are named."""
    import pyarrow.parquet as pq

    from slmscale.tokenization.schema import read_units_table

    table = read_units_table(units_dir, columns=("utt_id", "units"))
    by_id = dict(zip(table.column("utt_id").to_pylist(), table.column("units").to_pylist()))
    missing = [c.utt_id for c in bench.candidates if c.utt_id not in by_id]
    if missing:
        reasons = ""
        rejects = Path(units_dir) / "rejects.parquet"
        if rejects.is_file():
            rows = pq.read_table(rejects).to_pylist()
            if rows:
                reasons = f"; encoder rejects: {[(r['source'], r['reason']) for r in rows[:3]]}"
        raise SlmscaleError(
            f"{units_dir}: {len(missing)} of the benchmark's {len(bench.candidates)} utterances have no units, "
            f"e.g. {missing[:3]} (expected one row per candidate, utt_id = file name without extension){reasons}"
        )
    return [by_id[c.utt_id] for c in bench.candidates]


def encode_benchmark(bench: Benchmark, run_info: dict[str, Any], cache_dir: str | Path | None = None,
                     progress: bool = True) -> Path:
    """Encode the benchmark's audio with the model's tokenizer (cached); returns the unit dataset folder."""
    spec = tokenizer_spec(run_info)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    out = cache / "units" / f"{bench.task}-{bench.fingerprint()[:16]}" / spec["hash"][:16]
    if (out / "meta.json").is_file():
        check_units_match(out, run_info)
        return out
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")  # concurrent trials never share a work dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if spec.get("kind") == "unigram":
        _encode_unigram(bench, spec, cache, work / "units", progress)
    else:
        _encode_audio(bench, spec, work, progress)
    check_units_match(work / "units", run_info)  # the hash the encoder produced must be the model's
    atomic_write_json(work / "units" / "benchmark.json", {"task": bench.task, "name": bench.name,
                                                          "root": str(bench.root), "fingerprint": bench.fingerprint()})
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(work / "units", out)  # the cache entry appears complete or not at all
    except OSError:  # another process completed the same entry first: keep its copy (identical by hash)
        check_units_match(out, run_info)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _encode_audio(bench: Benchmark, spec: dict[str, Any], work: Path, progress: bool) -> None:
    """Audio -> units with a feature tokenizer (mfcc / hubert + k-means) into `work/units`."""
    from slmscale.tokenization.encode import encode
    from slmscale.tokenization.manifest import manifest_rows_for_files, write_manifest
    from slmscale.tokenization.tokenizer import load_tokenizer

    kwargs = _encode_kwargs(spec)
    # Refuse before spending compute: the tokenizer we can build here must be the one the model was trained on.
    have = load_tokenizer(kwargs["tokenizer"], layer=kwargs.get("layer"), kmeans=kwargs.get("kmeans"), device="cpu").hash
    if have != spec["hash"]:
        raise SlmscaleError(
            f"tokenizer {kwargs['tokenizer']!r} (kmeans {kwargs.get('kmeans') or 'shipped'}) has hash {have}, but the "
            f"model was trained on units of tokenizer hash {spec['hash']}; scores across tokenizers are meaningless "
            "— make the model's tokenizer (checkpoint, layer and k-means codebook) available at the paths in its "
            "unit dataset's meta.json, or pass --units with the benchmark encoded by it"
        )
    entries = [{"path": c.path, "utt_id": c.utt_id, "transcript": c.text or None, "speaker": c.voice or None}
               for c in bench.candidates]
    rows, rejects = manifest_rows_for_files(entries, source=f"eval-{bench.task}", progress=progress)
    if rejects:
        raise SlmscaleError(f"{bench.root}: {len(rejects)} benchmark file(s) unreadable, first: {rejects[0]}")
    manifest = write_manifest(rows, work / "manifest.parquet")
    if _inside_ray_worker():
        # A Tune trial (or any task/actor) holds the CPUs/GPUs that a nested Ray Data actor pool would wait for
        # forever; run the same two pipeline stages in this process instead (identical units, same hash).
        encode_in_process(rows, work / "units", **kwargs)
    else:
        encode(manifest, out_dir=work / "units", progress=progress, **kwargs)


def _encode_unigram(bench: Benchmark, spec: dict[str, Any], cache: Path, out: Path, progress: bool) -> None:
    """Unigram (SentencePiece over units) models: the benchmark's base units (cached under the parent tokenizer's
    hash, so they are shared with models trained on the base units) rewritten into pieces by the same model."""
    from slmscale.tokenization.unigram import apply_unigram

    parent, model = spec.get("parent") or {}, spec.get("spm_model")
    if not parent.get("hash") or not model:
        raise SlmscaleError(f"unigram tokenizer {spec['hash'][:12]}: meta.json lacks 'parent' or 'spm_model', "
                            "expected the tokenizer block written by `slmscale tokenize unigram apply`")
    if not Path(model).is_file():
        raise SlmscaleError(f"unigram model {model} (recorded in the model's unit dataset) is not on this machine; "
                            "the benchmark cannot be tokenized like the training units")
    base_info = {"tokenizer": parent.get("id"), "tokenizer_hash": parent["hash"],
                 "tokenizer_info": {**parent, "dedup": spec.get("dedup", True)}}
    base = encode_benchmark(bench, base_info, cache, progress=progress)
    apply_unigram(base, model, out)


def _inside_ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray._private.worker.WORKER_MODE
    except Exception:  # Ray internals moved: assume the driver (the Ray Data path)
        return False


def encode_in_process(manifest_rows: list[dict[str, Any]], out_dir: Path, *, tokenizer: str, layer: int | None = None,
                      kmeans: str | None = None, dedup: bool = True, batch_size: int = 16) -> Path:
    """Encode a (small) benchmark in this process with tokenization's pipeline stage (`UnitActor` decoding its
    own rows, as on a CPU-only cluster), writing a regular unit dataset. Used inside Ray workers only."""
    import numpy as np
    import pyarrow as pa

    from slmscale.tokenization.pipeline import UnitActor
    from slmscale.tokenization.schema import REJECTS_SCHEMA, UNIT_SHARD_SCHEMA, UnitsMeta, write_meta, write_shard
    from slmscale.tokenization.tokenizer import MIN_SAMPLES, parse_tokenizer

    actor = UnitActor(parse_tokenizer(tokenizer, layer=layer, kmeans=kmeans), dedup=dedup,
                      decode={"chunk_s": 3600.0, "min_samples": MIN_SAMPLES, "batch_size": batch_size})
    rows = {"row": np.arange(len(manifest_rows)), "shard": np.zeros(len(manifest_rows), np.int64)}
    rows.update({k: np.array([r.get(k) for r in manifest_rows], dtype=object)
                 for k in ("utt_id", "source", "sha256", "path")})
    results = actor(rows).to_pylist()
    ok = [r for r in results if not r["reason"]]
    rejects = [{"source": r["path"], "reason": r["reason"], "detail": f"utt_id={r['utt_id']}: {r['detail']}"}
               for r in results if r["reason"]]
    out_dir = Path(out_dir)
    write_shard(out_dir / "shard-00000.parquet",
                pa.Table.from_pylist([{k: r[k] for k in UNIT_SHARD_SCHEMA.names} for r in ok], schema=UNIT_SHARD_SCHEMA))
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), out_dir / "rejects.parquet")
    meta = UnitsMeta(vocab_size=actor.tokenizer.vocab_size, tokenizer=actor.tokenizer.info(), dedup=dedup,
                     counts={"utterances": len(ok), "units": int(sum(r["n_units"] for r in ok)),
                             "rejected": len(rejects), "shards": 1},
                     code_version=code_version(), extra={"encoded_by": "slmscale.models.evaluation in-process (inside a Ray worker)"})
    write_meta(out_dir, meta)
    return out_dir


def _encode_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """Map a tokenizer spec (meta.json `tokenizer` block) onto `tokenization.encode` arguments."""
    kind = spec.get("kind") or spec.get("id")
    tokenizer = spec.get("id") or kind
    if kind == "hubert" and spec.get("model") and not str(tokenizer).startswith("hubert:"):
        tokenizer = f"hubert:{spec['model']}"
    kwargs: dict[str, Any] = {"tokenizer": tokenizer, "dedup": bool(spec.get("dedup", True))}
    if spec.get("layer") is not None:
        kwargs["layer"] = spec["layer"]
    kmeans = spec.get("kmeans")
    if kmeans and (Path(kmeans).exists() or kind != "mfcc"):
        # mfcc falls back to the codebook shipped with the package when the recorded path is gone (another
        # machine); the hash check after encoding still guarantees it is the same codebook
        kwargs["kmeans"] = kmeans
    return kwargs
