"""The embedded synthetic benchmark: sBLIMP-style minimal pairs and two-ending stories, spoken offline.

Text comes from a small grammar (seeded, deterministic); audio from `tokenization.synth.tts` (espeak-ng, the same
TTS as the synthetic training corpus). The files are written in the released layouts — ZeroSpeech 2021
`syntactic/dev/{gold.csv, *.wav}` and StoryCloze `<question>_correct.wav` / `<question>_incorrect.wav` — so the
same readers and scorer load them. Generated once per cache dir: a folder is complete when its `embedded.json`
exists (it is built in a temporary folder and renamed into place).

The words and frames come from the synthetic story corpus (tokenization/stories.py), so a model trained on that
corpus has met every correct sentence's pattern and none of the incorrect ones (what sBLIMP assumes of a model
trained on natural speech). Phenomena (sblimp): subject-verb agreement, determiner-noun agreement, word order,
tense agreement in coordination, irregular past tense; two subtypes each, every pair spoken by every voice.
Stories (storycloze): "<Name> went to <place>. But then <problem>." + the problem's own solution (correct) or
the solution of another problem (incorrect) — coherence negatives in the spirit of Topic StoryCloze, so the
result fills the `tsc` column.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import random
import shutil
from pathlib import Path

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, code_version

__all__ = ["sblimp_pairs", "storycloze_questions", "ensure_embedded", "write_sblimp", "write_storycloze",
           "EMBEDDED_VOICES", "EMBEDDED_VERSION", "embedded_sentences"]

EMBEDDED_VERSION = 2
EMBEDDED_VOICES = ("en", "en-us+f2")
EMBEDDED_RATE = 160


def _vocabulary():
    """The words and sentence frames of the synthetic story corpus (tokenization/stories.py): a model trained on
    that corpus has met the pattern of every pair's correct member, never the incorrect one's."""
    from slmscale.tokenization import stories

    return stories


def _candidates_by_subtype() -> dict[tuple[str, str], list[tuple[str, str]]]:
    v = _vocabulary()
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def add(phenomenon: str, subtype: str, good: str, bad: str) -> None:
        out.setdefault((phenomenon, subtype), []).append((good, bad))

    for name, animal, trait in itertools.product(v.NAMES, v.ANIMALS, v.TRAITS):
        add("subject_verb_agreement", "copula", f"{name} was a {trait} {animal}", f"{name} were a {trait} {animal}")
        add("determiner_noun_agreement", "indefinite", f"there was a {trait} {animal} named {name}",
            f"there was many {trait} {animal} named {name}")
        add("word_order", "adjective_noun", f"there was a {trait} {animal} named {name}",
            f"there was a {animal} {trait} named {name}")
    for name in v.NAMES:
        add("subject_verb_agreement", "feeling", f"{name} was very happy", f"{name} were very happy")
        add("tense_agreement", "coordination", f"{name} smiled and said thank you", f"{name} smiled and says thank you")
        add("tense_agreement", "search", f"{name} looked everywhere and found it", f"{name} looked everywhere and finds it")
    for name, place, thing in itertools.product(v.NAMES, v.PLACES, v.THINGS):
        bare = thing.split(" ", 1)[1]
        add("determiner_noun_agreement", "object", f"{name} went to {place} with {thing}",
            f"{name} went to {place} with these {bare}")
        add("word_order", "preposition", f"{name} went to {place}", f"{name} went {place} to")
        add("irregular_past", "went", f"{name} went to {place}", f"{name} goed to {place}")
    for name, friend in itertools.permutations(v.NAMES, 2):
        add("irregular_past", "met", f"there, {name} met {friend}", f"there, {name} meeted {friend}")
    for phenomenon_subtype, options in out.items():  # the same frame can come up twice (e.g. word_order)
        out[phenomenon_subtype] = sorted(set(options))
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
    """Two-ending stories in the corpus' register: "<name> went to <place>. But then <problem>." followed by the
    problem's own solution (correct) or the solution of another problem (incorrect)."""
    if n < 1:
        raise SlmscaleError(f"n: expected a positive integer, got {n}")
    v = _vocabulary()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = rng.choice(v.NAMES)
        friend = rng.choice([x for x in v.NAMES if x != name])
        thing = rng.choice(v.THINGS).split(" ", 1)[1]
        place = rng.choice(v.PLACES)
        k = rng.randrange(len(v.PROBLEMS))
        wrong = rng.choice([i for i in range(len(v.PROBLEMS)) if i != k])
        fill = {"name": name, "friend": friend, "thing": thing}
        problem, solution = (x.format(**fill) for x in v.PROBLEMS[k])
        other = v.PROBLEMS[wrong][1].format(**fill)
        out.append({
            "prompt": f"{name} went to {place}. But then {problem}.",
            "correct": f"{solution[:1].upper()}{solution[1:]}.",
            "incorrect": f"{other[:1].upper()}{other[1:]}.",
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

    from slmscale.tokenization.synth import tts

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
    from slmscale.models.evaluation.encoding import default_cache_dir

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
    from slmscale.tokenization.synth import available_backend

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
