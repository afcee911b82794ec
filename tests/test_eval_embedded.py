"""The audio path: embedded benchmark (espeak-ng TTS, official layouts) -> tokenization.encode (Ray Data, mfcc)
-> cached units -> scores; a model recorded with another tokenizer hash is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmscale.errors import SlmscaleError
from slmscale.models.evaluation import evaluate
from slmscale.models.evaluation.benchmarks import load_benchmark
from slmscale.models.evaluation.embedded import ensure_embedded, sblimp_pairs, storycloze_questions

pytestmark = pytest.mark.ray


def _random_run(root: Path, tokenizer_hash: str | None = None) -> Path:
    """A random-init model in the RUN_DIR layout whose run.json records the mfcc tokenizer (or another hash:
    a model trained on units of a tokenizer this machine cannot rebuild)."""
    import torch

    from slmscale.models.ladder import build_model
    from slmscale.tokenization.tokenizer import load_tokenizer

    tok = load_tokenizer("mfcc")
    k = tok.vocab_size
    torch.manual_seed(0)
    build_model("tiny-100K", k).save_pretrained(root / "model")
    (root / "run.json").write_text(json.dumps({
        "tokenizer": "mfcc", "tokenizer_hash": tokenizer_hash or tok.hash,
        "tokenizer_info": {**tok.info(), "hash": tokenizer_hash or tok.hash},
        "units_vocab_size": k, "eos_id": k, "pad_id": k + 1}))
    return root


def test_embedded_grammar_is_deterministic_and_covers_phenomena():
    pairs = sblimp_pairs(seed=0)
    assert pairs == sblimp_pairs(seed=0) and pairs != sblimp_pairs(seed=1)
    assert {p["phenomenon"] for p in pairs} == {"subject_verb_agreement", "determiner_noun_agreement", "word_order",
                                                "tense_agreement", "irregular_past"}
    assert len(pairs) == 40 and all(p["correct"] != p["incorrect"] for p in pairs)
    # the correct sentences use the story corpus' own vocabulary (what a demo model is trained on)
    from slmscale.tokenization.stories import generate_stories

    corpus_words = set(" ".join(generate_stories(300, seed=1)).lower().replace(".", " ").replace(",", " ").split())
    correct_words = set(" ".join(p["correct"] for p in pairs).lower().replace(",", " ").split())
    assert correct_words <= corpus_words, correct_words - corpus_words
    stories = storycloze_questions(seed=0)
    assert len(stories) == 24 and all(q["correct"] != q["incorrect"] for q in stories)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One eval cache for this module: the storycloze encoding is done once and reused."""
    return tmp_path_factory.mktemp("evalcache")


def test_embedded_storycloze_end_to_end_with_cache(ray_local, tmp_path, shared_cache, monkeypatch):
    cache = shared_cache
    run = _random_run(tmp_path / "run")
    folder = ensure_embedded("storycloze", cache, progress=False)
    bench = load_benchmark(folder)  # the released-layout reader loads the generated folder
    assert bench.task == "tsc" and bench.n_questions == 24  # topic-style negatives -> tsc column
    result = evaluate(run, "embedded:storycloze", cache_dir=cache, progress=False)
    assert set(result["metrics"]) == {"tsc"} and 0.0 <= result["metrics"]["tsc"] <= 1.0
    assert result["details"]["n_questions"] == 24
    units_dir = Path(result["provenance"]["units_dir"])
    assert json.loads((units_dir / "meta.json").read_text())["tokenizer"]["hash"] == result["provenance"]["tokenizer_hash"]
    # second evaluation reuses the cached units: encoding must not run again
    import slmscale.tokenization.encode

    monkeypatch.setattr(slmscale.tokenization.encode, "encode", lambda *a, **k: pytest.fail("re-encoded a cached benchmark"))
    again = evaluate(run, "embedded:storycloze", cache_dir=cache, progress=False)
    assert again["metrics"] == result["metrics"]
    # the same benchmark for a model whose units came from another tokenizer: refused, cache untouched
    other = _random_run(tmp_path / "other", tokenizer_hash="f" * 64)
    monkeypatch.undo()
    with pytest.raises(SlmscaleError, match="scores across tokenizers are meaningless"):
        evaluate(other, "embedded:storycloze", cache_dir=cache, progress=False)
    assert (units_dir / "meta.json").is_file()


def test_in_process_encoding_matches_ray_data_encoding(ray_local, tmp_path, shared_cache):
    """Inside a Ray worker (a sweep trial) eval encodes in-process with the pipeline's own stages; the units
    must be identical to tokenization.encode's, and prepare_benchmark fills the cache the trials then read."""
    from slmscale.models.evaluation.encoding import encode_in_process
    from slmscale.models.evaluation.evaluator import prepare_benchmark
    from slmscale.tokenization.manifest import manifest_rows_for_files
    from slmscale.tokenization.schema import read_meta, read_units_table
    from slmscale.tokenization.tokenizer import load_tokenizer

    # a training unit dataset's meta.json is all prepare_benchmark needs (tokenizer + hash)
    train_units = tmp_path / "train_units"
    train_units.mkdir()
    (train_units / "meta.json").write_text(json.dumps({"vocab_size": load_tokenizer("mfcc").vocab_size,
                                                       "tokenizer": load_tokenizer("mfcc").info()}))
    cached = prepare_benchmark("embedded:storycloze", train_units, cache_dir=shared_cache, progress=False)
    bench = load_benchmark(ensure_embedded("storycloze", shared_cache, progress=False))
    manifest, rejects = manifest_rows_for_files([{"path": c.path, "utt_id": c.utt_id} for c in bench.candidates],
                                                source="test", progress=False)
    assert not rejects
    local = encode_in_process(manifest, tmp_path / "local", tokenizer="mfcc")
    a = read_units_table(cached, columns=("utt_id", "units")).sort_by("utt_id").to_pylist()
    b = read_units_table(local, columns=("utt_id", "units")).sort_by("utt_id").to_pylist()
    assert len(a) == 48 and a == b
    assert read_meta(local).tokenizer_hash == read_meta(cached).tokenizer_hash


def test_cli_embedded_sblimp_summary_line(ray_local, tmp_path, capsys):
    from slmscale.cli import main

    run = _random_run(tmp_path / "run")
    rc = main(["eval", "--model", str(run), "--benchmark", "embedded:sblimp", "--cache-dir", str(tmp_path / "c"),
               "--score", "sum", "--batch-size", "64"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "embedded:sblimp" in line and "sblimp_macro=" in line and "sblimp_pair=" in line and "80 questions" in line
    saved = json.loads((run / "eval" / "embedded-sblimp.json").read_text())
    assert saved["details"]["n_phenomena"] == 5 and saved["details"]["n_voice_pairs"] == 80
    assert set(saved["details"]["by_voice"]) == {"en", "en-us+f2"}
    assert saved["provenance"]["score"] == "sum" and saved["provenance"]["code_version"].startswith("slmscale")


def test_unigram_model_gets_benchmark_in_its_pieces(ray_local, tmp_path, shared_cache):
    """A model trained on unigram tokens (SentencePiece over mfcc units): the benchmark's base units come from the
    cache (parent tokenizer hash) and are rewritten by the same SentencePiece model; hashes match, scores exist."""
    from slmscale.models.evaluation.benchmarks import load_benchmark
    from slmscale.models.evaluation.encoding import encode_benchmark
    from slmscale.tokenization.schema import read_meta, read_units_table
    from slmscale.tokenization.tokenizer import load_tokenizer
    from slmscale.tokenization.unigram import apply_unigram, train_unigram

    tok = load_tokenizer("mfcc")
    bench = load_benchmark(ensure_embedded("storycloze", shared_cache, progress=False))
    base = encode_benchmark(bench, {"tokenizer": "mfcc", "tokenizer_hash": tok.hash, "tokenizer_info": tok.info()},
                            shared_cache, progress=False)  # cached by the end-to-end test
    spm = train_unigram(base, tok.vocab_size + 50, tmp_path / "spm")
    train_meta = apply_unigram(base, spm, tmp_path / "train_pieces")  # stands in for the training corpus
    import torch

    from slmscale.models.ladder import build_model

    run = tmp_path / "run"
    torch.manual_seed(0)
    build_model("tiny-100K", train_meta.vocab_size).save_pretrained(run / "model")
    (run / "run.json").write_text(json.dumps({
        "tokenizer": "unigram", "tokenizer_hash": train_meta.tokenizer_hash, "units_dir": str(tmp_path / "train_pieces"),
        "units_vocab_size": train_meta.vocab_size, "eos_id": train_meta.vocab_size, "pad_id": train_meta.vocab_size + 1}))
    result = evaluate(run, "embedded:storycloze", cache_dir=shared_cache, progress=False)
    pieces = Path(result["provenance"]["units_dir"])
    assert read_meta(pieces).tokenizer_hash == train_meta.tokenizer_hash != tok.hash
    n_pieces = sum(map(len, read_units_table(pieces, columns=("units",)).column("units").to_pylist()))
    n_units = sum(map(len, read_units_table(base, columns=("units",)).column("units").to_pylist()))
    assert n_pieces < n_units  # pieces merge units
    assert 0.0 <= result["metrics"]["tsc"] <= 1.0


def test_embedded_swuggy_words_and_nonwords():
    """Words come from the story corpus; each non-word differs from its word in exactly one phoneme, swapped for
    one of the same class with the stress kept; no non-word sounds like a word of the set; deterministic."""
    from slmscale.models.evaluation.embedded import PHONEME_CLASSES, swuggy_pairs
    from slmscale.tokenization.stories import generate_stories

    pairs = swuggy_pairs(seed=0)
    assert pairs == swuggy_pairs(seed=0) and [p["word"] for p in pairs] != [p["word"] for p in swuggy_pairs(seed=1)]
    assert len(pairs) == 40
    corpus_words = set(" ".join(generate_stories(300, seed=1)).lower().replace(".", " ").replace(",", " ").split())
    assert {p["word"] for p in pairs} <= corpus_words
    class_of = {ph: c for c in PHONEME_CLASSES for ph in c}
    word_sounds = {" ".join(x.lstrip("',") for x in p["phones"]) for p in pairs}
    for p in pairs:
        word, nonword = p["phones"], p["nonword_phones"]
        diff = [(a, b) for a, b in zip(word, nonword) if a != b]
        assert len(word) == len(nonword) and len(diff) == 1, p
        (a, b), = diff
        assert a[: len(a) - len(a.lstrip("',"))] == b[: len(b) - len(b.lstrip("',"))], p  # stress kept
        assert class_of[a.lstrip("',")] == class_of[b.lstrip("',")], p
        assert " ".join(x.lstrip("',") for x in nonword) not in word_sounds, p


def test_cli_embedded_swuggy_json(ray_local, tmp_path, capsys):
    """`slmscale eval --benchmark embedded:swuggy --json`: generated (espeak-ng phoneme input) -> encoded (mfcc)
    -> scored; `swuggy` in [0, 1], and --zerospeech-out writes one `filename score` line per WAV."""
    from slmscale.cli import main

    run = _random_run(tmp_path / "run")
    rc = main(["eval", "--model", str(run), "--benchmark", "embedded:swuggy", "--cache-dir", str(tmp_path / "c"),
               "--json", "--zerospeech-out", str(tmp_path / "zr")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]) == {"swuggy"} and 0.0 <= result["metrics"]["swuggy"] <= 1.0
    assert result["task"] == "swuggy" and result["details"]["n_pairs"] == 40 and result["details"]["n_voice_pairs"] == 80
    assert set(result["details"]["by_voice"]) == {"en", "en-us+f2"}
    lines = (tmp_path / "zr" / "lexical" / "dev.txt").read_text().splitlines()
    assert len(lines) == 160 and all(float(line.split(" ")[1]) < 0 for line in lines)  # -NLL: higher = more probable
    assert "benchmark_name: sLM21" in (tmp_path / "zr" / "meta.yaml").read_text()
    # StoryCloze has no sLM21 task: refused before any scoring
    assert main(["eval", "--model", str(run), "--benchmark", "embedded:storycloze", "--cache-dir", str(tmp_path / "c"),
                 "--zerospeech-out", str(tmp_path / "zr")]) == 2
    assert "no ZeroSpeech 2021 sLM task" in capsys.readouterr().err
