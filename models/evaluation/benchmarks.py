"""Readers for the released layouts of the spoken benchmarks (sBLIMP, sWUGGY, sStoryCloze, tStoryCloze).

All readers return a `Benchmark`: a flat list of `Candidate` utterances, each knowing which question it belongs
to and whether it is the correct member. Scoring never looks at the folder again, so the embedded synthetic
benchmark (written in the same layouts) goes through exactly the same code.

ZeroSpeech 2021 sLM21 syntactic (sBLIMP), `syntactic/{dev,test}/`:
    gold.csv            one row per WAV: filename (no extension), id (the minimal pair, shared by its two
                        sentences), voice, type (the phenomenon, 12 in the release), subtype, correct (1 / 0),
                        transcription; columns in any order, extra columns ignored
    <filename>.wav      16 kHz mono; every (id, voice) has one correct and one incorrect sentence

ZeroSpeech 2021 sLM21 lexical (sWUGGY), `lexical/{dev,test}/`:
    gold.csv            one row per WAV: filename, id (the (word, non-word) pair, shared by both and by every
                        voice), voice, frequency (the word's LibriSpeech count), word (empty for non-words in
                        some splits), phones, length, correct (1 = the word, 0 = the non-word); columns in any
                        order, extra columns ignored; filename, id, voice, correct are required
    <filename>.wav      16 kHz mono; every (id, voice) has one word and one non-word

Spoken / Topic StoryCloze (Hassid et al. 2023, TWIST), one folder per benchmark (`sSC/`, `tSC/`):
    <question>_correct.wav      the story with its real fifth sentence
    <question>_incorrect.wav    the same four sentences with the wrong ending (1,871 questions each)
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from slmscale.errors import SlmscaleError

__all__ = ["Candidate", "Benchmark", "read_sblimp", "read_swuggy", "read_storycloze", "load_benchmark", "TASKS"]

TASKS = ("sblimp", "swuggy", "ssc", "tsc")
SBLIMP_COLUMNS = ("filename", "id", "voice", "type", "subtype", "correct")
SWUGGY_COLUMNS = ("filename", "id", "voice", "correct")
STORYCLOZE_NAME = re.compile(r"^(?P<question>.+)_(?P<label>[A-Za-z]+)$")
STORYCLOZE_LABELS = {"correct": True, "incorrect": False}
_TRUE = {"1", "true", "True", "TRUE"}
_FALSE = {"0", "false", "False", "FALSE"}


@dataclass(frozen=True)
class Candidate:
    """One utterance of a two-choice question."""

    utt_id: str  # unique within the benchmark; the audio manifest's utt_id (path relative to root, no extension)
    path: Path
    question: str  # sBLIMP pair id / StoryCloze question id
    correct: bool
    voice: str = ""
    phenomenon: str = ""  # sBLIMP `type`
    subtype: str = ""
    text: str = ""  # sBLIMP transcription; sWUGGY word (or its phones when the word column is empty)


@dataclass(frozen=True)
class Benchmark:
    task: str  # "sblimp" | "swuggy" | "ssc" | "tsc"
    name: str
    root: Path  # the folder the candidates' utt_ids are relative to
    candidates: tuple[Candidate, ...]

    def fingerprint(self) -> str:
        """sha256 over (utt_id, label, file size, mtime): identifies the benchmark's audio for the units cache."""
        h = hashlib.sha256(self.task.encode())
        for c in self.candidates:
            st = c.path.stat()
            h.update(f"{c.utt_id}\t{int(c.correct)}\t{c.question}\t{st.st_size}\t{int(st.st_mtime)}\n".encode())
        return h.hexdigest()

    @property
    def n_questions(self) -> int:
        return len({(c.question, c.voice) for c in self.candidates})


def _find_gold(path: Path, kind: str = "syntactic") -> Path | None:
    """gold.csv of a split folder, or of `<kind>/dev/` under a dataset root (kind: syntactic | lexical)."""
    for candidate in (path / "gold.csv", path / kind / "dev" / "gold.csv", path / "dev" / "gold.csv"):
        if candidate.is_file():
            return candidate
    return None


def _gold_columns(gold: Path) -> list[str]:
    with open(gold, newline="") as f:
        return [h.strip() for h in next(csv.reader(f), [])]


def _read_gold(gold: Path, required: tuple[str, ...], task: str) -> list[dict[str, str]]:
    with open(gold, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise SlmscaleError(f"{gold}: missing column(s) {missing}, expected at least {list(required)} ({task} "
                                f"gold.csv); found {header}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise SlmscaleError(f"{gold}: no rows, expected one row per WAV file")
    return rows


def _check_pairs_and_wavs(gold: Path, root: Path, candidates: list[Candidate], members: tuple[str, str]) -> None:
    """Every (id, voice) holds exactly one correct and one incorrect member, and every listed WAV exists."""
    pairs: dict[tuple[str, str], list[bool]] = {}
    for c in candidates:
        pairs.setdefault((c.question, c.voice), []).append(c.correct)
    good, bad = members
    for (pair_id, voice), labels in pairs.items():
        if sorted(labels) != [False, True]:
            have = ", ".join(good if x else bad for x in labels)
            raise SlmscaleError(
                f"{gold}: pair id {pair_id!r} voice {voice!r} has [{have}], expected exactly one {good} (1) and "
                f"one {bad} (0) — a partner row is missing or duplicated"
            )
    missing_wavs = [c.utt_id for c in candidates if not c.path.is_file()]
    if missing_wavs:
        raise SlmscaleError(
            f"{root}: {len(missing_wavs)} WAV file(s) listed in gold.csv are missing, e.g. {missing_wavs[:3]} "
            "(expected <filename>.wav next to gold.csv)"
        )


def _parse_correct(value: str, where: str) -> bool:
    value = (value or "").strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SlmscaleError(f"{where}: column 'correct' has unknown label {value!r}, expected 1 or 0")


def _named_rows(gold: Path, rows: list[dict[str, str]]):
    """(where, filename, row) for each row of a ZeroSpeech gold.csv, refusing an empty filename or id and a
    filename given twice; `where` names the file and line for later errors."""
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{gold} line {line}"
        name = row["filename"]
        if not name or not row["id"]:
            raise SlmscaleError(f"{where}: empty 'filename' or 'id'")
        if name in seen:
            raise SlmscaleError(f"{where}: duplicate filename {name!r}")
        seen.add(name)
        yield where, name, row


def read_sblimp(path: str | Path) -> Benchmark:
    """Read a ZeroSpeech 2021 syntactic split (the folder holding gold.csv and the WAVs, or a dataset root
    holding `syntactic/dev/`)."""
    path = Path(path)
    gold = _find_gold(path, "syntactic")
    if gold is None:
        raise SlmscaleError(
            f"{path}: not an sBLIMP folder, expected gold.csv (columns {', '.join(SBLIMP_COLUMNS)}) next to "
            "<filename>.wav files, as in ZeroSpeech 2021 syntactic/dev"
        )
    root = gold.parent
    rows = _read_gold(gold, SBLIMP_COLUMNS, "sBLIMP")
    candidates = [
        Candidate(
            utt_id=name, path=root / f"{name}.wav", question=row["id"], correct=_parse_correct(row["correct"], where),
            voice=row["voice"], phenomenon=row["type"], subtype=row["subtype"], text=row.get("transcription", ""),
        )
        for where, name, row in _named_rows(gold, rows)
    ]
    _check_pairs_and_wavs(gold, root, candidates, ("correct", "incorrect"))
    return Benchmark("sblimp", _benchmark_name(root), root, tuple(candidates))


def read_swuggy(path: str | Path) -> Benchmark:
    """Read a ZeroSpeech 2021 lexical split (the folder holding gold.csv and the WAVs, or a dataset root holding
    `lexical/dev/`). A pair is a word and a non-word sharing an `id`; `correct` is 1 for the word."""
    path = Path(path)
    gold = _find_gold(path, "lexical")
    if gold is None:
        raise SlmscaleError(
            f"{path}: not an sWUGGY folder, expected gold.csv (columns {', '.join(SWUGGY_COLUMNS)}, usually also "
            "frequency, word, phones, length) next to <filename>.wav files, as in ZeroSpeech 2021 lexical/dev"
        )
    root = gold.parent
    rows = _read_gold(gold, SWUGGY_COLUMNS, "sWUGGY")
    candidates = [
        Candidate(
            utt_id=name, path=root / f"{name}.wav", question=row["id"], correct=_parse_correct(row["correct"], where),
            voice=row["voice"], text=row.get("word") or row.get("phones", ""),
        )
        for where, name, row in _named_rows(gold, rows)
    ]
    _check_pairs_and_wavs(gold, root, candidates, ("word", "non-word"))
    return Benchmark("swuggy", _benchmark_name(root), root, tuple(candidates))


def _storycloze_root(path: Path) -> Path:
    if any(path.glob("*.wav")):
        return path
    subdirs = [d for d in sorted(path.iterdir()) if d.is_dir() and any(d.glob("*.wav"))] if path.is_dir() else []
    if len(subdirs) == 1:  # the released zip unpacks to one folder (sSC/ or tSC/)
        return subdirs[0]
    raise SlmscaleError(
        f"{path}: not a StoryCloze folder, expected <question>_correct.wav and <question>_incorrect.wav files "
        f"(the sSC/ or tSC/ release folder){'; found several audio subfolders ' + str([d.name for d in subdirs]) if subdirs else ''}"
    )


def read_storycloze(path: str | Path, task: str | None = None) -> Benchmark:
    """Read a spoken StoryCloze release folder. `task` is 'ssc' or 'tsc'; by default it is guessed from the
    folder name (tSC / tStoryCloze / topic -> 'tsc', anything else -> 'ssc')."""
    path = Path(path)
    if not path.is_dir():
        raise SlmscaleError(f"benchmark folder not found: {path}")
    root = _storycloze_root(path)
    by_question: dict[str, dict[bool, Path]] = {}
    for wav in sorted(root.glob("*.wav")):
        m = STORYCLOZE_NAME.match(wav.stem)
        label = m.group("label").lower() if m else None
        if label not in STORYCLOZE_LABELS:
            raise SlmscaleError(
                f"{wav}: unknown label {wav.stem.rsplit('_', 1)[-1] if '_' in wav.stem else wav.stem!r}, "
                "expected a file named <question>_correct.wav or <question>_incorrect.wav"
            )
        correct = STORYCLOZE_LABELS[label]
        slot = by_question.setdefault(m.group("question"), {})
        if correct in slot:
            raise SlmscaleError(f"{wav}: question {m.group('question')!r} has two {label} files ({slot[correct].name})")
        slot[correct] = wav
    incomplete = [(q, "correct" if True not in s else "incorrect") for q, s in by_question.items() if len(s) != 2]
    if incomplete:
        q, lacking = incomplete[0]
        raise SlmscaleError(
            f"{root}: {len(incomplete)} question(s) lack their partner file, e.g. {q!r} has no {q}_{lacking}.wav "
            "(expected one <question>_correct.wav and one <question>_incorrect.wav per question)"
        )
    candidates = tuple(
        Candidate(utt_id=wav.stem, path=wav, question=q, correct=correct)
        for q in sorted(by_question, key=_natural_key)
        for correct, wav in sorted(by_question[q].items(), reverse=True)
    )
    task = task or _guess_storycloze_task(path, root)
    if task not in ("ssc", "tsc"):
        raise SlmscaleError(f"StoryCloze task {task!r}: expected 'ssc' (spoken) or 'tsc' (topic)")
    return Benchmark(task, _benchmark_name(root), root, candidates)


def _guess_storycloze_task(*paths: Path) -> str:
    for p in paths:
        name = p.name.lower()
        if name.startswith("tsc") or "tstory" in name or "topic" in name:
            return "tsc"
    return "ssc"


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _benchmark_name(root: Path) -> str:
    parts = [p for p in root.resolve().parts[-3:] if p not in ("/",)]
    return "/".join(parts)


def _gold_task(gold: Path) -> str:
    """sBLIMP and sWUGGY both ship a gold.csv: sBLIMP's has the phenomenon column `type`, sWUGGY's does not."""
    return "sblimp" if "type" in _gold_columns(gold) else "swuggy"


def load_benchmark(path: str | Path, task: str | None = None) -> Benchmark:
    """Read a benchmark folder in any layout: gold.csv -> sBLIMP (has a `type` column) or sWUGGY, a dataset root
    -> its syntactic/dev (else lexical/dev), `*_correct.wav` files -> StoryCloze."""
    path = Path(path)
    if not path.is_dir():
        raise SlmscaleError(f"benchmark folder not found: {path} (expected a folder, or embedded:sblimp / "
                            "embedded:swuggy / embedded:storycloze)")
    if task not in (None, *TASKS):
        raise SlmscaleError(f"task {task!r}: expected one of {list(TASKS)}")
    if task == "sblimp":
        return read_sblimp(path)
    if task == "swuggy":
        return read_swuggy(path)
    if task is None:
        gold = _find_gold(path, "syntactic") or _find_gold(path, "lexical")
        if gold is not None:
            return read_sblimp(path) if _gold_task(gold) == "sblimp" else read_swuggy(path)
    return read_storycloze(path, task)
