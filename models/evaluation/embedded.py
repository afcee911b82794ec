"""The embedded synthetic benchmark: sBLIMP-style minimal pairs, sWUGGY-style words / non-words and two-ending
stories, spoken offline.

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
Words (swuggy): content words of the story corpus (its `frequency` is the count in 500 generated stories), each
phonemized by espeak-ng and paired with a non-word made by swapping one phoneme for another of the same class
(voiceless / voiced stop, fricative, nasal, liquid, short / long vowel, diphthong), keeping the stress, so the
non-word is phonotactically plausible; a non-word that sounds like a corpus word is rejected. Word and non-word
are both spoken from their phonemes (espeak-ng `[[...]]` phoneme input), so the one swapped phoneme is all
that differs. Layout: ZeroSpeech 2021 `lexical/dev/{gold.csv, *.wav}`.
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

__all__ = ["sblimp_pairs", "swuggy_words", "swuggy_pairs", "storycloze_questions", "ensure_embedded", "write_sblimp",
           "write_swuggy", "write_storycloze", "phonemize", "EMBEDDED_VOICES", "EMBEDDED_VERSION", "EMBEDDED_KINDS",
           "embedded_sentences", "PHONEME_CLASSES"]

EMBEDDED_VERSION = 2
EMBEDDED_VOICES = ("en", "en-us+f2")
EMBEDDED_RATE = 160
EMBEDDED_KINDS = ("sblimp", "swuggy", "storycloze")

# Phonemes (espeak-ng ASCII mnemonics) that may replace each other in a non-word: same manner, voicing and length,
# so the result keeps the word's syllable shape (sWUGGY's non-words are phonotactically legal English).
PHONEME_CLASSES = (("p", "t", "k"), ("b", "d", "g"), ("f", "s", "S"), ("v", "z"), ("m", "n"), ("l", "r"),
                   ("a", "E", "I", "0", "V", "U"), ("i:", "u:", "A:", "O:", "3:"), ("eI", "aI", "aU", "oU"))
_CONSONANTS = {"p", "t", "k", "b", "d", "g", "f", "s", "S", "T", "D", "v", "z", "Z", "h", "m", "n", "N", "l", "r", "w",
               "j", "tS", "dZ"}
_STRESS = "',"
_FUNCTION_WORDS = {"the", "and", "was", "were", "they", "then", "but", "with", "that", "into", "from", "who", "there",
                   "one", "day", "all", "too", "each", "other", "some", "under", "until", "out", "got", "them",
                   "loved", "named", "called", "woke", "went", "met", "ever", "very", "came", "took", "used",
                   "knew", "learned", "said", "had", "nice", "best", "also"}
_ESPEAK_UTF8_PHONEMES = 0x101  # espeakCHARS_UTF8 | espeakPHONEMES: text inside [[ ]] is read as phoneme mnemonics
_ESPEAK_PHONEME_SEPARATOR = ord("_") << 8  # espeak_TextToPhonemes: ASCII mnemonics, '_' between phonemes


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


def swuggy_words(n: int = 40, seed: int = 0) -> list[tuple[str, int]]:
    """`n` content words of the story corpus with their count in 500 generated stories (the `frequency` column)."""
    import collections

    from slmscale.tokenization.stories import NAMES, generate_stories

    if n < 1:
        raise SlmscaleError(f"n: expected a positive integer, got {n}")
    counts = collections.Counter(
        w for story in generate_stories(500, seed=0) for w in story.lower().replace(".", " ").replace(",", " ").split()
    )
    names = {x.lower() for x in NAMES}
    vocabulary = sorted(w for w in counts if w.isalpha() and len(w) >= 3 and w not in names and w not in _FUNCTION_WORDS)
    rng = random.Random(seed)
    return [(w, counts[w]) for w in sorted(rng.sample(vocabulary, min(n, len(vocabulary))))]


def _in_espeak_child(work) -> bytes | None:
    """`tokenization.synth.in_espeak_child`, with the library's errors named as espeak-ng's."""
    from slmscale.tokenization import synth

    try:
        return synth.in_espeak_child(work)
    except SlmscaleError as exc:
        raise SlmscaleError(f"espeak-ng: {exc}") from None


def phonemize(words: list[str], voice: str = "en") -> list[list[str]]:
    """espeak-ng phonemes of each word: ASCII mnemonics, one list item per phoneme, stress marks (' primary,
    , secondary) kept in front of the stressed vowel, e.g. "cat" -> ["k", "'a", "t"]."""
    import ctypes
    import json
    import subprocess

    def work(engine) -> bytes:
        lib = engine.lib
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice {voice!r}: espeak-ng has no such voice")
        out = []
        for word in words:
            buf = ctypes.create_string_buffer(word.encode())
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            out.append((lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, _ESPEAK_PHONEME_SEPARATOR) or b"").decode())
        return json.dumps(out).encode()

    payload = _in_espeak_child(work)
    if payload is not None:
        strings = json.loads(payload)
    else:  # the Debian binary: same mnemonics with --sep
        strings = [subprocess.run(["espeak-ng", "-q", "-v", voice, "-x", "--sep=_", w], capture_output=True, text=True,
                                  check=True).stdout.strip() for w in words]
    phones = [[t for t in s.strip().split("_") if t] for s in strings]
    empty = [w for w, p in zip(words, phones) if not p]
    if empty:
        raise SlmscaleError(f"espeak-ng gave no phonemes for {empty[:3]}")
    return phones


def _core(phoneme: str) -> tuple[str, str]:
    """(stress marks, phoneme) of a token such as "'a"."""
    core = phoneme.lstrip(_STRESS)
    return phoneme[: len(phoneme) - len(core)], core


def _plain(phones: list[str]) -> str:
    return " ".join(_core(p)[1] for p in phones)


def _nonword(phones: list[str], rng: random.Random, taken: set[str]) -> list[str] | None:
    """`phones` with one phoneme swapped for another of its class (stress kept); None if every option is taken.
    A consonant is only swapped between vowels (or a vowel and the word edge): inside a cluster a swap can make an
    illegal one (glue -> *dlue, school -> *shkool)."""
    classes = {p: c for c in PHONEME_CLASSES for p in c}
    cores = [_core(p)[1] for p in phones]

    def swappable(i: int) -> bool:
        if cores[i] not in classes:
            return False
        if cores[i] not in _CONSONANTS:
            return True
        return all(not (0 <= j < len(cores)) or cores[j] not in _CONSONANTS for j in (i - 1, i + 1))

    slots = [i for i in range(len(phones)) if swappable(i)]
    options = [(i, q) for i in slots for q in classes[_core(phones[i])[1]] if q != _core(phones[i])[1]]
    rng.shuffle(options)
    for i, q in options:
        candidate = phones[:i] + [_core(phones[i])[0] + q] + phones[i + 1:]
        if _plain(candidate) not in taken:
            return candidate
    return None


def swuggy_pairs(n: int = 40, seed: int = 0) -> list[dict]:
    """[{"word", "frequency", "phones", "nonword_phones"}]: corpus words and their one-phoneme non-words."""
    words = swuggy_words(n, seed)
    phones = phonemize([w for w, _ in words])
    # a non-word must not sound like another word of the set (nor like another non-word)
    taken = {_plain(p) for p in phones}
    rng = random.Random(seed)
    pairs = []
    for (word, frequency), word_phones in zip(words, phones):
        nonword = _nonword(word_phones, rng, taken)
        if nonword is None:
            continue
        taken.add(_plain(nonword))
        pairs.append({"word": word, "frequency": frequency, "phones": word_phones, "nonword_phones": nonword})
    return pairs


def _speak_phonemes(phones: list[str], voice: str, rate: int, seed: int = 0):
    """(float32 waveform, sample rate) of a phoneme sequence, through espeak-ng's [[...]] phoneme input."""
    import ctypes

    import numpy as np

    text = f"[[{''.join(phones)}]]"

    def work(engine) -> bytes:
        lib = engine.lib
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice {voice!r}: espeak-ng has no such voice")
        lib.espeak_SetParameter(1, int(rate), 0)  # espeakRATE
        engine._chunks = []
        if engine._set_seed is not None:
            engine._set_seed(seed)
        buf = ctypes.create_string_buffer(text.encode())
        err = lib.espeak_Synth(buf, len(buf), 0, 1, 0, _ESPEAK_UTF8_PHONEMES, None, None)
        if err != 0:
            raise OSError(f"espeak_Synth failed with error {err}")
        return (np.concatenate(engine._chunks) if engine._chunks else np.zeros(0, np.int16)).astype("<i2").tobytes()

    payload = _in_espeak_child(work)
    if payload is None:  # the Debian binary reads [[...]] as phonemes by default
        from slmscale.tokenization.synth import _tts_binary

        return _tts_binary(text, voice, rate)
    from slmscale.tokenization.synth import _engine

    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0, _engine().sample_rate


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


def _write_wav(path: Path, text: str | list[str], voice: str, rate: int, sample_rate: int = 16000) -> None:
    """Speak `text` (a string, or a list of phonemes) into a 16-bit WAV at `sample_rate`."""
    import numpy as np
    import soundfile as sf
    import soxr

    from slmscale.tokenization.synth import tts

    wav, sr = _speak_phonemes(text, voice, rate) if isinstance(text, list) else tts(text, voice=voice, rate=rate)
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate)
    sf.write(path, np.clip(wav, -1.0, 1.0).astype(np.float32), sample_rate, subtype="PCM_16")


def _write_gold(split: Path, rows: list[dict], fieldnames: list[str]) -> None:
    """The split's ZeroSpeech 2021 gold.csv, columns in `fieldnames` order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    (split / "gold.csv").write_text(buf.getvalue())


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
    _write_gold(split, rows, ["id", "filename", "type", "subtype", "correct", "transcription", "voice"])
    return split


def write_swuggy(out_dir: Path, pairs: list[dict], voices=EMBEDDED_VOICES, rate: int = EMBEDDED_RATE,
                 progress: bool = True) -> Path:
    """Speak every word and non-word with every voice into `out_dir/lexical/dev/` with a ZeroSpeech 2021 gold.csv
    (columns id, filename, voice, frequency, word, phones, length, correct; the non-word's `word` is empty)."""
    from tqdm.auto import tqdm

    split = Path(out_dir) / "lexical" / "dev"
    split.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(i, p, v, vi) for i, p in enumerate(pairs) for vi, v in enumerate(voices)]
    for i, pair, voice, vi in tqdm(jobs, desc="embedded swuggy", unit="pair", disable=not progress):
        for correct in (1, 0):
            phones = pair["phones"] if correct else pair["nonword_phones"]
            filename = f"w{i:04d}_v{vi}_{'w' if correct else 'n'}"
            _write_wav(split / f"{filename}.wav", phones, voice, rate)
            rows.append({"id": i, "filename": filename, "voice": voice, "frequency": pair["frequency"],
                         "word": pair["word"] if correct else "", "phones": _plain(phones), "length": len(phones),
                         "correct": correct})
    _write_gold(split, rows, ["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"])
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
    """The folder of embedded benchmark `kind` ('sblimp', 'swuggy' or 'storycloze'), generated on first use."""
    from slmscale.models.evaluation.encoding import default_cache_dir

    if kind not in EMBEDDED_KINDS:
        raise SlmscaleError(f"embedded benchmark {kind!r}: expected embedded:sblimp, embedded:swuggy or "
                            "embedded:storycloze")
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
    elif kind == "swuggy":
        items = swuggy_pairs(seed=seed)
        write_swuggy(work, items, progress=progress)
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
