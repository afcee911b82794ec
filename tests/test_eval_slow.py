"""Slow: the known-answer test through the whole audio path. The embedded sBLIMP is spoken (espeak-ng), encoded
(Ray Data, mfcc), and a tiny model is trained with models.train on a corpus holding the units of every correct
sentence (20 copies, both voices) and never an incorrect one; it must score far above chance on embedded:sblimp."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from slmscale.models.evaluation import evaluate
from slmscale.tokenization.schema import UnitsMeta, read_meta, read_units_table, write_meta, write_shard

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_model_trained_on_correct_sentences_beats_chance_on_embedded_sblimp(ray_local, tmp_path):
    from slmscale.models.config import TrainConfig
    from slmscale.models.evaluation.benchmarks import load_benchmark
    from slmscale.models.evaluation.embedded import ensure_embedded
    from slmscale.models.evaluation.encoding import encode_benchmark
    from slmscale.models.train import train
    from slmscale.tokenization.tokenizer import load_tokenizer

    cache = tmp_path / "cache"
    tok = load_tokenizer("mfcc")
    info = {"tokenizer": "mfcc", "tokenizer_hash": tok.hash, "tokenizer_info": tok.info(), "units_vocab_size": tok.vocab_size}
    bench = load_benchmark(ensure_embedded("sblimp", cache, progress=False))
    bench_units = encode_benchmark(bench, info, cache, progress=False)
    table = read_units_table(bench_units, columns=("utt_id", "units")).to_pylist()
    correct_ids = {c.utt_id for c in bench.candidates if c.correct}
    rng = np.random.default_rng(0)
    corpus = []
    for row in table:
        if row["utt_id"] in correct_ids:
            corpus += [(f"{row['utt_id']}_{r:02d}", row["units"]) for r in range(20)]
    corpus += [(f"filler{j:03d}", rng.integers(0, tok.vocab_size, size=60).tolist()) for j in range(100)]
    units_dir = tmp_path / "train_units"
    write_shard(units_dir / "shard-00000.parquet", pa.table({
        "utt_id": [u for u, _ in corpus], "units": [x for _, x in corpus],
        "durations": [[1] * len(x) for _, x in corpus], "n_frames": [len(x) for _, x in corpus],
        "n_units": [len(x) for _, x in corpus], "duration_s": [0.0] * len(corpus),
        "source": ["test"] * len(corpus), "sha256": [""] * len(corpus)}))
    write_meta(units_dir, UnitsMeta(vocab_size=tok.vocab_size, tokenizer=read_meta(bench_units).tokenizer))
    cfg = TrainConfig(units_dir=str(units_dir), model="tiny-100K", out_dir=str(tmp_path / "run"), tokens=150_000,
                      context=256, tokens_per_update=1024, lr=3e-3, min_lr=3e-4, val_fraction=0.05,
                      test_fraction=0.05, eval_tokens=4096, test_tokens=4096, progress=False,
                      report_every=10_000, eval_every=10_000, checkpoint_every=10_000)
    train(cfg)
    result = evaluate(tmp_path / "run", "embedded:sblimp", cache_dir=cache, progress=False)
    assert result["provenance"]["units_dir"] == str(bench_units)  # cached units reused, not re-encoded
    assert result["metrics"]["sblimp_macro"] > 0.8, json.dumps(result["details"], indent=1)
    assert result["metrics"]["sblimp_pair"] > 0.8
