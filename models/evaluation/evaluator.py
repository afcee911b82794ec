"""`evaluate(run_dir, benchmark)`: one trained model on one benchmark -> accuracies, details and convention.

Steps: load the model and its provenance (models.checkpoint.load_model) -> read the benchmark folder (or generate
the embedded one) -> get its units through the model's tokenizer (cached) -> score every candidate -> accuracies.
The result is written to RUN_DIR/eval/<benchmark>.json and its metric columns into RUN_DIR/results.parquet
(and into another results table with `merge_into_results`).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, code_version
from slmscale.models.evaluation.benchmarks import Benchmark, load_benchmark
from slmscale.models.evaluation.encoding import check_units_match, encode_benchmark, read_candidate_units
from slmscale.models.evaluation.metrics import benchmark_metrics, convention
from slmscale.models.evaluation.scoring import ScoreConfig, pick_device, sequence_nll
from slmscale.models.rundir import RunDir

__all__ = ["evaluate", "prepare_benchmark", "score_benchmark", "resolve_benchmark", "merge_into_results", "run_id_of",
           "EMBEDDED"]

EMBEDDED = ("embedded:sblimp", "embedded:swuggy", "embedded:storycloze")
_EMBEDDED_TASK = {"sblimp": "sblimp", "swuggy": "swuggy", "storycloze": "tsc"}  # storycloze: topic-style negatives


def resolve_benchmark(benchmark: str | Path, cache_dir: str | Path | None = None, task: str | None = None,
                      progress: bool = True) -> Benchmark:
    """A folder in a released layout, or `embedded:sblimp` / `embedded:swuggy` / `embedded:storycloze` (generated
    on first use)."""
    text = str(benchmark)
    if text.startswith("embedded:"):
        from slmscale.models.evaluation.embedded import ensure_embedded

        kind = text.split(":", 1)[1]
        folder = ensure_embedded(kind, cache_dir, progress=progress)
        return load_benchmark(folder, _EMBEDDED_TASK[kind])
    return load_benchmark(text, task)


def prepare_benchmark(benchmark: str | Path, units_dir: str | Path, *, cache_dir: str | Path | None = None,
                      task: str | None = None, progress: bool = True) -> Path:
    """Encode `benchmark` with the tokenizer of the training unit dataset `units_dir` into the cache, so that
    later `evaluate` calls (e.g. inside sweep trials) find its units ready. Returns the cached unit dataset."""
    from slmscale.tokenization.schema import read_meta

    meta = read_meta(units_dir)
    info = {"tokenizer": meta.tokenizer.get("id"), "tokenizer_hash": meta.tokenizer_hash,
            "units_dir": str(units_dir), "units_vocab_size": meta.vocab_size}
    bench = resolve_benchmark(benchmark, cache_dir, task, progress=progress)
    return encode_benchmark(bench, info, cache_dir, progress=progress)


def score_benchmark(model, run_info: dict[str, Any], bench: Benchmark, units: list[list[int]],
                    config: ScoreConfig | None = None) -> tuple[dict, dict, np.ndarray]:
    """(metrics, details, per-candidate NLL) of `model` on `bench` whose candidates have unit sequences `units`."""
    eos_id, pad_id = run_info.get("eos_id"), run_info.get("pad_id")
    if eos_id is None or pad_id is None:
        raise SlmscaleError("run.json: fields 'eos_id' and 'pad_id' are required to score unit sequences")
    nll = sequence_nll(model, units, eos_id=int(eos_id), pad_id=int(pad_id), config=config or ScoreConfig())
    metrics, details = benchmark_metrics(bench, nll)
    context = getattr(model.config, "max_position_embeddings", None)
    lengths = np.array([len(u) for u in units])
    details.update(
        n_candidates=len(units),
        units_per_candidate={"mean": float(lengths.mean()), "max": int(lengths.max())},
        longer_than_context=int((lengths > context).sum()) if context else 0,
    )
    return metrics, details, nll


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "benchmark"


def evaluate(
    run_dir: str | Path,
    benchmark: str | Path,
    *,
    cache_dir: str | Path | None = None,
    score: str = "mean",
    batch_size: int = 32,
    units_dir: str | Path | None = None,
    task: str | None = None,
    device: str | None = None,
    write: bool = True,
    progress: bool = True,
    zerospeech_out: str | Path | None = None,
) -> dict[str, Any]:
    """Score the model in `run_dir` on `benchmark` (folder in a released layout, or embedded:sblimp /
    embedded:swuggy / embedded:storycloze). `units_dir` uses an already-encoded unit dataset of the benchmark
    instead of encoding (its tokenizer hash must match the model's). `zerospeech_out` also writes the per-file
    scores in the ZeroSpeech 2021 sLM submission layout (models.evaluation.zerospeech). Returns {"benchmark",
    "task", "metrics", "details", "convention", "provenance"}; `metrics` keys are results-table columns."""
    from slmscale.models.checkpoint import load_model

    config = ScoreConfig(score=score, batch_size=batch_size, progress=progress).validate()
    run_dir = Path(run_dir)
    bench = resolve_benchmark(benchmark, cache_dir, task, progress=progress)  # layout errors before loading weights
    if zerospeech_out is not None:
        from slmscale.models.evaluation.zerospeech import check_zerospeech_task

        check_zerospeech_task(bench)  # before spending any compute
    model, info = load_model(run_dir, device=str(pick_device(device)))
    if units_dir is None:
        units_dir = encode_benchmark(bench, info, cache_dir, progress=progress)
    else:
        check_units_match(units_dir, info)
    units = read_candidate_units(units_dir, bench)
    start = time.perf_counter()
    metrics, details, nll = score_benchmark(model, info, bench, units, config)
    elapsed = time.perf_counter() - start
    result = {
        "benchmark": str(benchmark),
        "task": bench.task,
        "metrics": metrics,
        "details": details,
        "convention": convention(score),
        "provenance": {
            "run_dir": str(run_dir.resolve()),
            "run_id": run_id_of(run_dir, info),
            "model": info.get("model"),
            "n_params": info.get("n_params"),
            "seed": info.get("seed"),
            "units_vocab_size": info.get("units_vocab_size"),
            "model_dir": info.get("model_dir"),
            "step": info.get("step"),
            "finished": info.get("finished"),
            "tokenizer": info.get("tokenizer"),
            "tokenizer_hash": info.get("tokenizer_hash"),
            "tokenizer_layer": (info.get("tokenizer_info") or {}).get("layer"),
            "benchmark_root": str(bench.root),
            "benchmark_fingerprint": bench.fingerprint(),
            "units_dir": str(units_dir),
            "score": score,
            "batch_size": batch_size,
            "device": str(next(model.parameters()).device),
            "scoring_seconds": round(elapsed, 3),
            "code_version": code_version(),
        },
    }
    if zerospeech_out is not None:
        from slmscale.models.evaluation.zerospeech import write_zerospeech_scores

        result["zerospeech_scores"] = str(write_zerospeech_scores(zerospeech_out, bench, nll, result["provenance"]))
    if write:
        name = _slug(str(benchmark) if str(benchmark).startswith("embedded:") else f"{bench.task}-{bench.name}")
        atomic_write_json(RunDir(run_dir).eval_result(name), result)
        own_table = RunDir(run_dir).results
        if own_table.is_file():
            merge_into_results(own_table, result["provenance"]["run_id"], metrics)
    return result


def run_id_of(run_dir: Path, info: dict[str, Any]) -> str:
    """The run's id in the results table: RUN_DIR/results.parquet's run_id, else run.json's, else the folder name."""
    table = RunDir(run_dir).results
    if table.is_file():
        import pandas as pd

        ids = pd.read_parquet(table, columns=["run_id"])["run_id"].dropna().unique().tolist()
        if len(ids) == 1:
            return str(ids[0])
    return str(info.get("run_id") or Path(run_dir).resolve().name)


def merge_into_results(path: str | Path, run_id: str, metrics: dict[str, float]) -> Path:
    """Set `metrics` (results-table metric columns) on the row(s) of `path` whose run_id is `run_id`, atomically.
    Other rows and columns are kept as they are."""
    import pandas as pd

    from slmscale.analysis.schema import METRIC_COLUMNS, write_results

    path = Path(path)
    unknown = [k for k in metrics if k not in METRIC_COLUMNS]
    if unknown:
        raise SlmscaleError(f"metrics {unknown}: not results-table metric columns {list(METRIC_COLUMNS)}")
    suffix = path.suffix.lower()
    if not path.is_file():
        raise SlmscaleError(f"results table not found: {path}")
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix == ".csv":
        df = pd.read_csv(path)
    else:
        raise SlmscaleError(f"results table {path}: expected a .csv or .parquet file")
    if "run_id" not in df.columns:
        raise SlmscaleError(f"{path}: no 'run_id' column; expected a results table written by slmscale")
    rows = df["run_id"].astype(str) == str(run_id)
    if not rows.any():
        sample = df["run_id"].astype(str).head(5).tolist()
        raise SlmscaleError(f"{path}: no row with run_id {run_id!r} (first run_ids: {sample})")
    for col, value in metrics.items():
        if col not in df.columns:
            df[col] = np.nan
        df[col] = df[col].astype(float)
        df.loc[rows, col] = float(value)
    return write_results(df, path)
