"""Readers for the released layouts of the spoken benchmarks (sBLIMP, sStoryCloze, tStoryCloze).

Both readers return a `Benchmark`: a flat list of `Candidate` utterances, each knowing which question it belongs
to and whether it is the correct member. Scoring never looks at the folder again, so the embedded synthetic
benchmark (written in the same layouts) goes through exactly the same code.

ZeroSpeech 2021 sLM21 syntactic (sBLIMP), `syntactic/{dev,test}/`:
    gold.csv            one row per WAV: filename (no extension), id (the minimal pair, shared by its two
                        sentences), voice, type (the phenomenon, 12 in the release), subtype, correct (1 / 0),
                        transcription; columns in any order, extra columns ignored
    <filename>.wav      16 kHz mono; every (id, voice) has one correct and one incorrect sentence

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

__all__ = ["Candidate", "Benchmark", "read_sblimp", "read_storycloze", "load_benchmark", "TASKS"]

TASKS = ("sblimp", "ssc", "tsc")
SBLIMP_COLUMNS = ("filename", "id", "voice", "type", "subtype", "correct")
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
    text: str = ""


@dataclass(frozen=True)
class Benchmark:
    task: str  # "sblimp" | "ssc" | "tsc"
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


def _find_gold(path: Path) -> Path | None:
    for candidate in (path / "gold.csv", path / "syntactic" / "dev" / "gold.csv", path / "dev" / "gold.csv"):
        if candidate.is_file():
            return candidate
    return None


def _parse_correct(value: str, where: str) -> bool:
    value = (value or "").strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SlmscaleError(f"{where}: column 'correct' has unknown label {value!r}, expected 1 or 0")


def read_sblimp(path: str | Path) -> Benchmark:
    """Read a ZeroSpeech 2021 syntactic split (the folder holding gold.csv and the WAVs, or a dataset root
    holding `syntactic/dev/`)."""
    path = Path(path)
    gold = _find_gold(path)
    if gold is None:
        raise SlmscaleError(
            f"{path}: not an sBLIMP folder, expected gold.csv (columns {', '.join(SBLIMP_COLUMNS)}) next to "
            "<filename>.wav files, as in ZeroSpeech 2021 syntactic/dev"
        )
    root = gold.parent
    with open(gold, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in SBLIMP_COLUMNS if c not in header]
        if missing:
            raise SlmscaleError(f"{gold}: missing column(s) {missing}, expected at least {list(SBLIMP_COLUMNS)}; found {header}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise SlmscaleError(f"{gold}: no rows, expected one row per WAV file")
    candidates, seen, pairs = [], set(), {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{gold} line {line}"
        name = row["filename"]
        if not name or not row["id"]:
            raise SlmscaleError(f"{where}: empty 'filename' or 'id'")
        if name in seen:
            raise SlmscaleError(f"{where}: duplicate filename {name!r}")
        seen.add(name)
        correct = _parse_correct(row["correct"], where)
        key = (row["id"], row["voice"])
        pairs.setdefault(key, []).append(correct)
        candidates.append(
            Candidate(
                utt_id=name, path=root / f"{name}.wav", question=row["id"], correct=correct, voice=row["voice"],
                phenomenon=row["type"], subtype=row["subtype"], text=row.get("transcription", ""),
            )
        )
    for (pair_id, voice), labels in pairs.items():
        if sorted(labels) != [False, True]:
            have = ", ".join("correct" if x else "incorrect" for x in labels)
            raise SlmscaleError(
                f"{gold}: pair id {pair_id!r} voice {voice!r} has [{have}], expected exactly one correct (1) and "
                "one incorrect (0) sentence — a partner row is missing or duplicated"
            )
    missing_wavs = [c.utt_id for c in candidates if not c.path.is_file()]
    if missing_wavs:
        raise SlmscaleError(
            f"{root}: {len(missing_wavs)} WAV file(s) listed in gold.csv are missing, e.g. {missing_wavs[:3]} "
            "(expected <filename>.wav next to gold.csv)"
        )
    return Benchmark("sblimp", _benchmark_name(root), root, tuple(candidates))


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


def load_benchmark(path: str | Path, task: str | None = None) -> Benchmark:
    """Read a benchmark folder in either layout: gold.csv -> sBLIMP, `*_correct.wav` files -> StoryCloze."""
    path = Path(path)
    if not path.is_dir():
        raise SlmscaleError(f"benchmark folder not found: {path} (expected a folder, or embedded:sblimp / embedded:storycloze)")
    if task not in (None, *TASKS):
        raise SlmscaleError(f"task {task!r}: expected one of {list(TASKS)}")
    if task == "sblimp" or (task is None and _find_gold(path) is not None):
        return read_sblimp(path)
    return read_storycloze(path, task)
