"""The embedded synthetic benchmark: sBLIMP-style minimal pairs and two-ending stories, spoken offline.

Text comes from a small grammar (seeded, deterministic); audio from `tokenization.synth.tts` (espeak-ng, the same
TTS as the synthetic training corpus). The files are written in the released layouts — ZeroSpeech 2021
`syntactic/dev/{gold.csv, *.wav}` and StoryCloze `<question>_correct.wav` / `<question>_incorrect.wav` — so the
same readers and scorer load them. Generated once per cache dir: a folder is complete when its `embedded.json`
exists (it is built in a temporary folder and renamed into place).

Phenomena (sblimp): subject-verb agreement, determiner-noun agreement, word order (verb-final, adjective after
noun), anaphor gender agreement, irregular past tense; each with two subtypes, each pair spoken by every voice.
Stories (storycloze): "<Name> <did something>. <pronoun> <consequence>." against an ending of another topic
(Topic-StoryCloze style negatives, so the result fills the `tsc` column).
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import random
import shutil
from pathlib import Path

from analysis.io import SlmscaleError, atomic_write_json, code_version

__all__ = ["sblimp_pairs", "storycloze_questions", "ensure_embedded", "write_sblimp", "write_storycloze",
           "EMBEDDED_VOICES", "EMBEDDED_VERSION", "embedded_sentences"]

EMBEDDED_VERSION = 1
EMBEDDED_VOICES = ("en", "en-us+f2")
EMBEDDED_RATE = 160

_NOUNS = [("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("girl", "girls"), ("boy", "boys"), ("horse", "horses")]
_VERBS = [("runs", "run"), ("sleeps", "sleep"), ("sings", "sing"), ("jumps", "jump"), ("plays", "play"), ("eats", "eat")]
_ADJECTIVES = ["big", "small", "happy", "old", "little", "red"]
_MALE = ["boy", "man", "king", "farmer"]
_FEMALE = ["girl", "woman", "queen", "nurse"]
_REFLEXIVE_VERBS = ["washed", "saw", "hurt", "liked"]
_PAST = [("ran", "runned"), ("ate", "eated"), ("sang", "singed"), ("slept", "sleeped"), ("drank", "drinked"), ("flew", "flied")]
_PAST_SUBJECTS = ["the dog", "the girl", "the bird", "my friend", "the old man", "the baby"]

_TOPICS = [
    ("went to the beach", "swam in the warm sea"),
    ("went to the park", "played on the swings"),
    ("was hungry in the kitchen", "cooked a bowl of soup"),
    ("visited the farm", "fed the cows and the pigs"),
    ("went to the library", "read a book about dragons"),
    ("saw snow outside", "built a big snowman"),
    ("had a birthday party", "opened many presents"),
    ("worked in the garden", "planted red flowers"),
    ("got caught in the rain", "came home all wet"),
    ("went to school", "learned to count to ten"),
]
_NAMES = [("Tom", "He"), ("Lily", "She"), ("Ben", "He"), ("Mia", "She"), ("Sam", "He"), ("Anna", "She")]


def _candidates_by_subtype() -> dict[tuple[str, str], list[tuple[str, str]]]:
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (sg, pl), (v3, vb) in itertools.product(_NOUNS, _VERBS):
        out.setdefault(("subject_verb_agreement", "singular"), []).append((f"the {sg} {v3}", f"the {sg} {vb}"))
        out.setdefault(("subject_verb_agreement", "plural"), []).append((f"the {pl} {vb}", f"the {pl} {v3}"))
        out.setdefault(("determiner_noun_agreement", "singular"), []).append((f"this {sg} {v3}", f"these {sg} {v3}"))
        out.setdefault(("determiner_noun_agreement", "plural"), []).append((f"these {pl} {vb}", f"this {pl} {vb}"))
    for (a, _), (b, _) in itertools.permutations(_NOUNS, 2):
        out.setdefault(("word_order", "verb_final"), []).append((f"the {a} sees the {b}", f"the {a} the {b} sees"))
    for adj, (sg, _), (v3, _) in itertools.product(_ADJECTIVES, _NOUNS, _VERBS):
        out.setdefault(("word_order", "adjective_noun"), []).append((f"the {adj} {sg} {v3}", f"the {sg} {adj} {v3}"))
    for noun, verb in itertools.product(_MALE, _REFLEXIVE_VERBS):
        out.setdefault(("anaphor_agreement", "masculine"), []).append((f"the {noun} {verb} himself", f"the {noun} {verb} herself"))
    for noun, verb in itertools.product(_FEMALE, _REFLEXIVE_VERBS):
        out.setdefault(("anaphor_agreement", "feminine"), []).append((f"the {noun} {verb} herself", f"the {noun} {verb} himself"))
    for subj, (good, bad) in itertools.product(_PAST_SUBJECTS, _PAST):
        sub = "intransitive" if good in ("ran", "slept", "flew") else "transitive"
        tail = "" if sub == "intransitive" else " it"
        out.setdefault(("irregular_past", sub), []).append((f"{subj} {good}{tail} yesterday", f"{subj} {bad}{tail} yesterday"))
    return out


def sblimp_pairs(n_per_subtype: int = 4, seed: int = 0) -> list[dict]:
    """Minimal pairs: [{"phenomenon", "subtype", "correct", "incorrect"}], `n_per_subtype` per subtype."""
    if n_per_subtype < 1:
        raise SlmscaleError(f"n_per_subtype: expected a positive integer, got {n_per_subtype}")
    rng = random.Random(seed)
    pairs = []
    for (phenomenon, subtype), options in sorted(_candidates_by_subtype().items()):
        for good, bad in rng.sample(options, min(n_per_subtype, len(options))):
            pairs.append({"phenomenon": phenomenon, "subtype": subtype, "correct": good, "incorrect": bad})
    return pairs


def storycloze_questions(n: int = 24, seed: int = 0) -> list[dict]:
    """Two-ending stories: [{"prompt", "correct", "incorrect"}]; the wrong ending belongs to another topic."""
    if n < 1:
        raise SlmscaleError(f"n: expected a positive integer, got {n}")
    rng = random.Random(seed)
    combos = list(itertools.product(range(len(_NAMES)), range(len(_TOPICS))))
    rng.shuffle(combos)
    out = []
    for name_i, topic_i in combos[:n]:
        name, pronoun = _NAMES[name_i]
        wrong = rng.choice([t for t in range(len(_TOPICS)) if t != topic_i])
        out.append({
            "prompt": f"{name} {_TOPICS[topic_i][0]}.",
            "correct": f"{pronoun} {_TOPICS[topic_i][1]}.",
            "incorrect": f"{pronoun} {_TOPICS[wrong][1]}.",
        })
    return out


def embedded_sentences(kind: str, seed: int = 0) -> list[str]:
    """The correct sentences / stories of the embedded benchmark (e.g. to build a corpus in which they occur)."""
    if kind == "sblimp":
        return [p["correct"] for p in sblimp_pairs(seed=seed)]
    return [f"{q['prompt']} {q['correct']}" for q in storycloze_questions(seed=seed)]


def _write_wav(path: Path, text: str, voice: str, rate: int, sample_rate: int = 16000) -> None:
    import numpy as np
    import soundfile as sf
    import soxr

    from tokenization.synth import tts

    wav, sr = tts(text, voice=voice, rate=rate)
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate)
    sf.write(path, np.clip(wav, -1.0, 1.0).astype(np.float32), sample_rate, subtype="PCM_16")


def write_sblimp(out_dir: Path, pairs: list[dict], voices=EMBEDDED_VOICES, rate: int = EMBEDDED_RATE,
                 progress: bool = True) -> Path:
    """Speak every pair with every voice into `out_dir/syntactic/dev/` with a ZeroSpeech 2021 gold.csv."""
    from tqdm.auto import tqdm

    split = Path(out_dir) / "syntactic" / "dev"
    split.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(i, p, v, vi) for i, p in enumerate(pairs) for vi, v in enumerate(voices)]
    for i, pair, voice, vi in tqdm(jobs, desc="embedded sblimp", unit="pair", disable=not progress):
        for correct in (1, 0):
            text = pair["correct"] if correct else pair["incorrect"]
            filename = f"p{i:04d}_v{vi}_{'c' if correct else 'i'}"
            _write_wav(split / f"{filename}.wav", text, voice, rate)
            rows.append({"id": i, "filename": filename, "type": pair["phenomenon"], "subtype": pair["subtype"],
                         "correct": correct, "transcription": text, "voice": voice})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "filename", "type", "subtype", "correct", "transcription", "voice"])
    writer.writeheader()
    writer.writerows(rows)
    (split / "gold.csv").write_text(buf.getvalue())
    return split


def write_storycloze(out_dir: Path, questions: list[dict], voices=EMBEDDED_VOICES, rate: int = EMBEDDED_RATE,
                     progress: bool = True) -> Path:
    """Speak every story with both endings (one voice per question) as <q>_correct.wav / <q>_incorrect.wav."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["question,voice,label,text"]
    for i, q in enumerate(tqdm(questions, desc="embedded storycloze", unit="story", disable=not progress)):
        voice = voices[i % len(voices)]
        for label in ("correct", "incorrect"):
            text = f"{q['prompt']} {q[label]}"
            _write_wav(out_dir / f"{i}_{label}.wav", text, voice, rate)
            lines.append(f"{i},{voice},{label},\"{text}\"")
    (out_dir / "transcripts.csv").write_text("\n".join(lines) + "\n")
    return out_dir


def ensure_embedded(kind: str, cache_dir: str | Path | None = None, seed: int = 0, progress: bool = True) -> Path:
    """The folder of embedded benchmark `kind` ('sblimp' or 'storycloze'), generated on first use."""
    from .encoding import default_cache_dir

    if kind not in ("sblimp", "storycloze"):
        raise SlmscaleError(f"embedded benchmark {kind!r}: expected embedded:sblimp or embedded:storycloze")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    # the stories' wrong endings come from other topics (Topic-StoryCloze style), so the folder is named like
    # the tSC release and its metric is `tsc`
    folder = "tstorycloze" if kind == "storycloze" else kind
    final = root / "embedded" / f"{folder}-v{EMBEDDED_VERSION}-seed{seed}"
    if (final / "embedded.json").is_file():
        return final
    work = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    if kind == "sblimp":
        items = sblimp_pairs(seed=seed)
        write_sblimp(work, items, progress=progress)
    else:
        items = storycloze_questions(seed=seed)
        write_storycloze(work, items, progress=progress)
    from tokenization.synth import available_backend

    atomic_write_json(work / "embedded.json", {
        "kind": kind, "version": EMBEDDED_VERSION, "seed": seed, "items": len(items), "voices": list(EMBEDDED_VOICES),
        "rate": EMBEDDED_RATE, "tts": available_backend(), "code_version": code_version(),
    })
    if final.exists() and not (final / "embedded.json").is_file():
        shutil.rmtree(final, ignore_errors=True)  # a leftover without its completion marker (never made by us)
    try:
        os.replace(work, final)
    except OSError:  # another process (a parallel trial) finished first: keep its copy
        shutil.rmtree(work, ignore_errors=True)
    return final
