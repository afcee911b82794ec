"""Known answers end to end through `evaluate()`: a model trained (models.train) on a corpus where the correct
member of every pair is frequent and the incorrect one never occurs scores far above chance; the same benchmark
under a random-init model scores near 0.5; units from another tokenizer are refused; results are merged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import soundfile as sf

from slmscale.errors import SlmscaleError
from slmscale.models.evaluation import evaluate
from slmscale.tokenization.schema import UnitsMeta, write_meta, write_shard

K = 32
TOKENIZER = {"kind": "mfcc", "hash": "tok-A", "layer": None, "frame_rate_hz": 100.0}
PHENOMENA = ("agreement", "word_order")
VOICES = ("v1", "v2")


def _write_units(units_dir: Path, utterances: dict[str, list[int]], tokenizer=TOKENIZER) -> Path:
    ids = sorted(utterances)
    table = pa.table({
        "utt_id": ids,
        "units": [utterances[i] for i in ids],
        "durations": [[1] * len(utterances[i]) for i in ids],
        "n_frames": [len(utterances[i]) for i in ids],
        "n_units": [len(utterances[i]) for i in ids],
        "duration_s": [len(utterances[i]) / 100.0 for i in ids],
        "source": ["test"] * len(ids),
        "sha256": [""] * len(ids),
    })
    write_shard(units_dir / "shard-00000.parquet", table)
    write_meta(units_dir, UnitsMeta(vocab_size=K, tokenizer=dict(tokenizer), dedup=True,
                                    counts={"utterances": len(ids)}))
    return units_dir


@pytest.fixture(scope="module")
def pairs_benchmark(tmp_path_factory):
    """An sBLIMP-layout folder (gold.csv + tiny WAVs) of 24 pairs x 2 voices, plus its unit dataset.

    Every pair is two random unit sequences differing in two positions; which one is 'correct' is a coin flip,
    so a model that knows nothing about them is at chance in expectation."""
    root = tmp_path_factory.mktemp("bench")
    split = root / "syntactic" / "dev"
    split.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows, units, correct_seqs = [], {}, []
    for pair in range(24):
        base = rng.integers(0, K, size=12)
        other = base.copy()
        pos = rng.choice(12, size=2, replace=False)
        other[pos] = (other[pos] + rng.integers(1, K, size=2)) % K
        good, bad = (base, other) if rng.random() < 0.5 else (other, base)
        correct_seqs.append(good.tolist())
        for v in VOICES:
            for label, seq in ((1, good), (0, bad)):
                name = f"p{pair}_{v}_{label}"
                rows.append(f"{pair},{name},{PHENOMENA[pair % 2]},s,{label},x,{v}")
                units[name] = seq.tolist()
                sf.write(split / f"{name}.wav", np.zeros(160, np.float32), 16000)
    (split / "gold.csv").write_text("id,filename,type,subtype,correct,transcription,voice\n" + "\n".join(rows) + "\n")
    bench_units = _write_units(root / "units", units)
    return split, bench_units, correct_seqs


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, pairs_benchmark):
    """train() on a corpus: each correct sequence 40 times, plus random filler; incorrect ones never."""
    from slmscale.models.config import TrainConfig
    from slmscale.models.train import train

    _, _, correct_seqs = pairs_benchmark
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(2)
    corpus = {}
    for i, seq in enumerate(correct_seqs):
        for r in range(40):
            corpus[f"c{i:02d}_{r:02d}"] = seq
    for j in range(200):
        corpus[f"f{j:03d}"] = rng.integers(0, K, size=int(rng.integers(4, 16))).tolist()
    units = _write_units(root / "units", corpus)
    cfg = TrainConfig(units_dir=str(units), model="tiny-100K", out_dir=str(root / "run"), tokens=32_000,
                      lr=3e-3, min_lr=3e-4, val_fraction=0.05, test_fraction=0.05, eval_tokens=2048,
                      test_tokens=2048, progress=False, threads=2, report_every=10_000, eval_every=10_000, checkpoint_every=10_000)
    train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """A random-init model saved in the RUN_DIR layout (model/ + run.json), as models.train would."""
    import torch

    from slmscale.models.ladder import build_model

    run = tmp_path_factory.mktemp("random") / "run"
    torch.manual_seed(123)
    build_model("tiny-100K", K).save_pretrained(run / "model")
    (run / "run.json").write_text(json.dumps({"tokenizer": "mfcc", "tokenizer_hash": TOKENIZER["hash"],
                                              "units_vocab_size": K, "eos_id": K, "pad_id": K + 1}))
    return run


def test_trained_model_prefers_frequent_member(trained_run, pairs_benchmark):
    split, bench_units, _ = pairs_benchmark
    result = evaluate(trained_run, split, units_dir=bench_units, progress=False, batch_size=16)
    print("known-answer trained model:", result["metrics"])
    assert result["metrics"]["sblimp_macro"] > 0.85, result["details"]
    assert result["metrics"]["sblimp_pair"] > 0.85
    assert set(result["details"]["by_phenomenon"]) == set(PHENOMENA)
    assert result["details"]["n_voice_pairs"] == 48
    assert "mean NLL per unit" in result["convention"] and "ties count 0.5" in result["convention"]
    # the JSON is written and the metric columns are merged into the run's own results row
    assert (trained_run / "eval").is_dir() and list((trained_run / "eval").glob("*.json"))
    row = pd.read_parquet(trained_run / "results.parquet").iloc[0]
    assert row["sblimp_macro"] == pytest.approx(result["metrics"]["sblimp_macro"])
    # summed NLL gives the same verdicts here (the two members have equal length)
    summed = evaluate(trained_run, split, units_dir=bench_units, score="sum", progress=False, write=False)
    assert summed["metrics"] == result["metrics"] and "score=sum" in summed["convention"]


def test_random_init_model_is_near_chance(random_run, pairs_benchmark):
    split, bench_units, _ = pairs_benchmark
    result = evaluate(random_run, split, units_dir=bench_units, progress=False)
    assert 0.3 <= result["metrics"]["sblimp_pair"] <= 0.7, result["details"]
    assert 0.25 <= result["metrics"]["sblimp_macro"] <= 0.75


def test_units_from_another_tokenizer_are_refused(random_run, pairs_benchmark, tmp_path):
    split, bench_units, _ = pairs_benchmark
    other = _write_units(tmp_path / "other", {"x": [1, 2]}, tokenizer={**TOKENIZER, "hash": "tok-B"})
    with pytest.raises(SlmscaleError, match=r"tokenizer hash tok-B.*trained on units of tokenizer hash tok-A"):
        evaluate(random_run, split, units_dir=other, progress=False)


def test_cli_json_and_results_merge(random_run, pairs_benchmark, tmp_path, capsys):
    from slmscale.cli import main

    split, bench_units, _ = pairs_benchmark
    table = tmp_path / "results.csv"
    pd.DataFrame({"run_id": ["other", random_run.name], "n_params": [1.0, 2.0], "tokens": [3.0, 4.0],
                  "loss": [5.0, 6.0]}).to_csv(table, index=False)
    rc = main(["eval", "--model", str(random_run), "--benchmark", str(split), "--units", str(bench_units),
               "--results", str(table), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    merged = pd.read_csv(table)
    assert merged.loc[merged.run_id == random_run.name, "sblimp_macro"].item() == pytest.approx(out["metrics"]["sblimp_macro"])
    assert merged.loc[merged.run_id == "other", "sblimp_macro"].isna().item()
    assert merged["loss"].tolist() == [5.0, 6.0]
    # a benchmark folder in the wrong layout: one-line error, exit code 2
    assert main(["eval", "--model", str(random_run), "--benchmark", str(tmp_path)]) == 2
    assert "expected <question>_correct.wav" in capsys.readouterr().err


@pytest.fixture(scope="module")
def words_benchmark(tmp_path_factory, pairs_benchmark):
    """An sWUGGY-layout folder (lexical/dev/gold.csv + tiny WAVs): the 'word' of pair i is the sequence the trained
    model met 40 times (pairs_benchmark's correct member), the non-word the same sequence with one unit swapped
    (a phoneme substitution), never seen. Pair 24 has identical word and non-word units: an exact tie."""
    _, _, correct_seqs = pairs_benchmark
    root = tmp_path_factory.mktemp("words")
    split = root / "lexical" / "dev"
    split.mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows, units = [], {}
    for pair, word in enumerate([*correct_seqs, [5, 6, 7, 8]]):
        nonword = list(word)
        if pair < len(correct_seqs):
            pos = int(rng.integers(len(word)))
            nonword[pos] = (nonword[pos] + int(rng.integers(1, K))) % K
        for v in VOICES:
            for label, seq in ((1, word), (0, nonword)):
                name = f"w{pair}_{v}_{label}"
                rows.append(f"{pair},{name},{v},{10 + pair},{'w' + str(pair) if label else ''},x y,{len(seq)},{label}")
                units[name] = seq
                sf.write(split / f"{name}.wav", np.zeros(160, np.float32), 16000)
    (split / "gold.csv").write_text("id,filename,voice,frequency,word,phones,length,correct\n" + "\n".join(rows) + "\n")
    return split, _write_units(root / "units", units)


def test_trained_model_picks_the_word(trained_run, words_benchmark):
    split, bench_units = words_benchmark
    result = evaluate(trained_run, split, units_dir=bench_units, progress=False, write=False)
    assert set(result["metrics"]) == {"swuggy"}
    # 24 pairs the model knows (word more likely) + 1 exact tie (0.5): accuracy (24*x + 0.5) / 25 with x ~ 1
    assert result["metrics"]["swuggy"] > 0.85, result["details"]
    assert result["details"]["n_pairs"] == 25 and result["details"]["n_voice_pairs"] == 50
    assert result["details"]["ties"] == 2  # the tie pair, once per voice
    assert "swuggy = mean over (word, non-word) pairs" in result["convention"]


def test_random_model_on_words_is_near_chance(random_run, words_benchmark):
    split, bench_units = words_benchmark
    result = evaluate(random_run, split, units_dir=bench_units, progress=False, write=False)
    assert 0.25 <= result["metrics"]["swuggy"] <= 0.75, result["details"]


# The official ZeroSpeech 2021 scorer (zerospeech-benchmarks, dev extra), run in a child process on the files
# `--zerospeech-out` wrote. 0.9.1 is the newest release pip installs (0.9.2-0.9.4 declare a git URL in an extra,
# which pip refuses from PyPI, and 0.9.4 pins pydantic<2); it is written against pydantic v1, which pydantic 2
# ships as `pydantic.v1`, so its modules are imported with `pydantic` aliased to it. Its by-pair functions call
# groupby(...).apply(f) with f reading the grouping columns by position, which pandas >= 3 no longer passes
# (include_groups=True was removed): the child restores that pandas-2 behaviour for these calls. Its import
# fetches a repository index from the network unless a local one under $APP_DIR is older than a week.
OFFICIAL_SCORER = r"""
import importlib, json, sys
from pathlib import Path
import pandas as pd
import pydantic.v1
from pandas.core.groupby.generic import DataFrameGroupBy

def apply_with_group_columns(self, func, *args, **kwargs):
    keys, values = [], []
    for key, group in self:
        keys.append(key if not isinstance(key, tuple) or len(key) > 1 else key[0])
        values.append(func(group, *args, **kwargs))
    index = pd.MultiIndex.from_tuples(keys) if keys and isinstance(keys[0], tuple) else pd.Index(keys)
    return pd.Series(values, index=index, dtype=object)

DataFrameGroupBy.apply = apply_with_group_columns
saved = {k: v for k, v in sys.modules.items() if k == "pydantic" or k.startswith("pydantic.")}
sys.modules["pydantic"] = pydantic.v1
for sub in ("generics", "fields", "main", "types", "networks", "validators", "error_wrappers"):
    sys.modules[f"pydantic.{sub}"] = importlib.import_module(f"pydantic.v1.{sub}")
try:
    from zerospeech.benchmarks.tasks.lm.lexical import LexicalTask
    from zerospeech.benchmarks.tasks.lm.syntactic import SyntacticTask
    from zerospeech.model import data_items
    from zerospeech.model.meta_file import MetaFile
finally:
    sys.modules.update(saved)
item = lambda p: data_items.FileItem.from_file(Path(p))
sub, lexical_gold, syntactic_gold = map(Path, sys.argv[1:4])
lexical = LexicalTask.eval_by_pair(LexicalTask.load_and_format(item(sub / "lexical/dev.txt"), item(lexical_gold)))
syntactic, by_type = SyntacticTask().run_syntactic_comparison(item(syntactic_gold), item(sub / "syntactic/dev.txt"))
meta = MetaFile.from_file(sub / "meta.yaml", enforce=True)
# what SLM21ScoreDir.lexical_scores / syntactic_scores report: the mean of the by-pair scores
print(json.dumps({"lexical": float(lexical["score"].mean()), "syntactic": float(syntactic["score"].mean()),
                  "benchmark_name": meta.benchmark_name}))
"""


def test_official_zerospeech_scorer_agrees(random_run, pairs_benchmark, words_benchmark, tmp_path, capsys):
    import importlib.util
    import os
    import subprocess
    import sys
    import time

    from slmscale.cli import main

    # a dev dependency (pyproject [dev]); its import is only safe in the child, with the shims above
    assert importlib.util.find_spec("zerospeech"), "zerospeech-benchmarks is not installed: pip install -e '.[dev]'"

    syntactic, syntactic_units = pairs_benchmark[:2]
    lexical, lexical_units = words_benchmark
    sub = tmp_path / "submission"
    ours = {}
    for bench, units in ((syntactic, syntactic_units), (lexical, lexical_units)):
        capsys.readouterr()
        assert main(["eval", "--model", str(random_run), "--benchmark", str(bench), "--units", str(units),
                     "--zerospeech-out", str(sub), "--json"]) == 0
        ours.update(json.loads(capsys.readouterr().out)["metrics"])
    lines = (sub / "lexical" / "dev.txt").read_text().splitlines()
    assert len(lines) == 100 and all(len(line.split(" ")) == 2 for line in lines)  # every WAV, `filename score`
    app_dir = tmp_path / "zr-app"
    app_dir.mkdir()
    (app_dir / "repo.json").write_text('{"last_modified": "2023-01-01T00:00:00"}')
    week_ago = time.time() - 30 * 86400
    os.utime(app_dir / "repo.json", (week_ago, week_ago))
    proc = subprocess.run([sys.executable, "-c", OFFICIAL_SCORER, str(sub), str(lexical / "gold.csv"), str(syntactic / "gold.csv")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "APP_DIR": str(app_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    official = json.loads(proc.stdout.strip().splitlines()[-1])
    print("official:", official, "slmscale:", ours)
    assert official["benchmark_name"] == "sLM21"
    assert official["lexical"] == pytest.approx(ours["swuggy"], abs=1e-12)
    assert official["syntactic"] == pytest.approx(ours["sblimp_pair"], abs=1e-12)
    assert 0.0 < ours["swuggy"] < 1.0 and ours["swuggy"] != 0.5  # a non-trivial number, not a constant both agree on
    # (0.9.1's by-type table takes its label columns by position and is shifted by one column, so only the overall
    # by-pair scores, what the leaderboard reports, are compared)
