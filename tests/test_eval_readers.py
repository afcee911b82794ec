"""Benchmark readers on small fixtures in the released layouts (ZeroSpeech 2021 sBLIMP, spoken StoryCloze)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slmscale.errors import SlmscaleError
from slmscale.models.evaluation.benchmarks import load_benchmark, read_sblimp, read_storycloze, read_swuggy

GOLD_HEADER = "id,filename,type,subtype,correct,transcription,voice\n"


def _wav(path: Path, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000, subtype="PCM_16")


def _sblimp(root: Path, rows: list[tuple], write_wavs: bool = True) -> Path:
    split = root / "syntactic" / "dev"
    split.mkdir(parents=True)
    lines = [GOLD_HEADER] + [",".join(map(str, r)) + "\n" for r in rows]
    (split / "gold.csv").write_text("".join(lines))
    if write_wavs:
        for r in rows:
            _wav(split / f"{r[1]}.wav")
    return split


GOOD_ROWS = [
    # id, filename, type, subtype, correct, transcription, voice
    (1, "aXq", "agreement", "sv", 1, "the dog runs", "Alex"),
    (1, "bYr", "agreement", "sv", 0, "the dog run", "Alex"),
    (1, "cZs", "agreement", "sv", 1, "the dog runs", "Bob"),
    (1, "dAt", "agreement", "sv", 0, "the dog run", "Bob"),
    (2, "eBu", "word_order", "svo", 0, "dog the runs", "Alex"),
    (2, "fCv", "word_order", "svo", 1, "the dog runs", "Alex"),
]


def test_sblimp_reads_zerospeech_layout_from_root_or_split(tmp_path):
    split = _sblimp(tmp_path, GOOD_ROWS)
    for where in (tmp_path, split):
        bench = read_sblimp(where)
        assert bench.task == "sblimp"
        assert len(bench.candidates) == 6
        assert bench.n_questions == 3  # (id, voice) pairs
        first = bench.candidates[0]
        assert (first.utt_id, first.question, first.correct, first.voice, first.phenomenon) == ("aXq", "1", True, "Alex", "agreement")
        assert first.path == split / "aXq.wav"
    assert load_benchmark(tmp_path).task == "sblimp"


def test_sblimp_missing_partner_row_is_named(tmp_path):
    _sblimp(tmp_path, GOOD_ROWS[:3])  # Bob's incorrect sentence of pair 1 is missing
    with pytest.raises(SlmscaleError, match=r"pair id '1' voice 'Bob'.*expected exactly one correct"):
        read_sblimp(tmp_path)


def test_sblimp_unknown_label_names_line(tmp_path):
    rows = list(GOOD_ROWS)
    rows[2] = rows[2][:4] + ("yes",) + rows[2][5:]
    _sblimp(tmp_path, rows)
    with pytest.raises(SlmscaleError, match=r"gold.csv line 4: column 'correct' has unknown label 'yes'"):
        read_sblimp(tmp_path)


def test_sblimp_missing_column_and_missing_wav(tmp_path):
    split = tmp_path / "a"
    split.mkdir()
    (split / "gold.csv").write_text("id,filename,correct\n1,x,1\n")
    with pytest.raises(SlmscaleError, match=r"missing column\(s\) \['voice', 'type', 'subtype'\]"):
        read_sblimp(split)
    _sblimp(tmp_path / "b", GOOD_ROWS, write_wavs=False)
    with pytest.raises(SlmscaleError, match=r"6 WAV file\(s\) listed in gold.csv are missing"):
        read_sblimp(tmp_path / "b")


def test_wrong_layout_says_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlmscaleError, match=r"expected <question>_correct.wav and <question>_incorrect.wav"):
        load_benchmark(tmp_path)
    with pytest.raises(SlmscaleError, match=r"expected gold.csv"):
        read_sblimp(tmp_path)
    with pytest.raises(SlmscaleError, match=r"benchmark folder not found"):
        load_benchmark(tmp_path / "nope")


def _storycloze(folder: Path, names: list[str]) -> Path:
    for n in names:
        _wav(folder / f"{n}.wav")
    return folder


def test_storycloze_reads_release_folder_and_guesses_task(tmp_path):
    _storycloze(tmp_path / "release" / "tSC", ["10_correct", "10_incorrect", "2_incorrect", "2_correct"])
    bench = load_benchmark(tmp_path / "release")  # the zip's single subfolder is found
    assert bench.task == "tsc"
    assert [(c.question, c.correct) for c in bench.candidates] == [("2", True), ("2", False), ("10", True), ("10", False)]
    _storycloze(tmp_path / "sSC", ["a_correct", "a_incorrect"])
    assert read_storycloze(tmp_path / "sSC").task == "ssc"
    assert read_storycloze(tmp_path / "sSC", task="tsc").task == "tsc"


def test_storycloze_missing_partner_and_unknown_label(tmp_path):
    _storycloze(tmp_path / "sSC", ["1_correct", "1_incorrect", "2_correct"])
    with pytest.raises(SlmscaleError, match=r"lack their partner file, e.g. '2' has no 2_incorrect.wav"):
        read_storycloze(tmp_path / "sSC")
    _storycloze(tmp_path / "x", ["1_correct", "1_wrong"])
    with pytest.raises(SlmscaleError, match=r"unknown label 'wrong'"):
        read_storycloze(tmp_path / "x")


LEXICAL_HEADER = "id,filename,voice,frequency,word,phones,length,correct\n"
LEXICAL_ROWS = [  # the ZeroSpeech 2021 lexical/dev gold.csv columns; the non-word's word may be empty
    (7, "gHq", "Alex", 120, "cat", "k a t", 3, 1),
    (7, "hJr", "Alex", 120, "", "k E t", 3, 0),
    (7, "iKs", "Bob", 120, "cat", "k a t", 3, 1),
    (7, "jLt", "Bob", 120, "", "k E t", 3, 0),
]


def _swuggy(root: Path, rows: list[tuple]) -> Path:
    split = root / "lexical" / "dev"
    split.mkdir(parents=True)
    (split / "gold.csv").write_text(LEXICAL_HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows))
    for r in rows:
        _wav(split / f"{r[1]}.wav")
    return split


def test_swuggy_reads_zerospeech_lexical_layout(tmp_path):
    split = _swuggy(tmp_path, LEXICAL_ROWS)
    for where in (tmp_path, split):  # dataset root holding only lexical/dev, or the split folder
        bench = load_benchmark(where)
        assert bench.task == "swuggy" and bench.n_questions == 2 and len(bench.candidates) == 4
        assert [(c.utt_id, c.question, c.correct, c.voice, c.text) for c in bench.candidates[:2]] == [
            ("gHq", "7", True, "Alex", "cat"), ("hJr", "7", False, "Alex", "k E t")]  # empty word -> its phones
    # a dataset root holding both splits reads syntactic unless told otherwise
    _sblimp(tmp_path, GOOD_ROWS)
    assert load_benchmark(tmp_path).task == "sblimp"
    assert load_benchmark(tmp_path, task="swuggy").task == "swuggy"


def test_swuggy_malformed_gold_is_named(tmp_path):
    rows = list(LEXICAL_ROWS)
    rows[1] = rows[1][:7] + (1,)  # Alex's non-word relabelled as a word
    _swuggy(tmp_path / "a", rows)
    with pytest.raises(SlmscaleError, match=r"pair id '7' voice 'Alex' has \[word, word\], expected exactly one word"):
        read_swuggy(tmp_path / "a")
    split = tmp_path / "b"
    split.mkdir()
    (split / "gold.csv").write_text("filename,word,correct\nx,cat,1\n")
    with pytest.raises(SlmscaleError, match=r"missing column\(s\) \['id', 'voice'\]"):
        read_swuggy(split)
    (tmp_path / "c").mkdir()
    with pytest.raises(SlmscaleError, match=r"not an sWUGGY folder, expected gold.csv"):
        read_swuggy(tmp_path / "c")
