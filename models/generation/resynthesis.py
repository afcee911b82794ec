"""How well a unit vocoder preserves units: resynthesise audio from its units, re-tokenize, count unit edits.

This is the textless-NLP way of measuring a unit vocoder without listening tests: a vocoder that renders each
unit recognisably gives audio that the same tokenizer maps back to the same units. For every held-out
utterance:

    frame units u = tokenizer(audio)                      (one unit per frame, before deduplication)
    audio'        = vocoder(u)                            (each frame rendered once: the true durations)
    u'            = tokenizer(audio')

and two rates, both Levenshtein distances summed over utterances and divided by the summed reference length:

    raw    on the frame units u vs u'                     (counts timing errors as well)
    dedup  on the deduplicated units (runs collapsed)     (the sequence a dedup speech LM sees)

0 is perfect; a vocoder that emits noise scores near 1. The two sequences differ in length by the tokenizer's
edge frames (a 25 ms window fits one frame less at each end of the re-synthesised audio), which costs a few
edits per utterance.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["levenshtein", "dedup_units", "unit_edit_rate", "EDIT_RATE_DEFINITION"]

EDIT_RATE_DEFINITION = ("Levenshtein distance between the units of held-out audio and the units of its resynthesis "
                        "(same tokenizer), summed over utterances / summed reference length; raw = frame units, "
                        "dedup = consecutive duplicates collapsed")


def levenshtein(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Edit distance (unit-cost insertions, deletions, substitutions) between two integer sequences.

    One numpy pass per element of `a`: substitutions and deletions come from the previous row, and the
    insertion chain within a row is a running minimum of (row[j] - j) + j."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return int(max(len(a), len(b)))
    cols = np.arange(len(b) + 1)
    prev = cols.copy()
    for i, x in enumerate(a, start=1):
        row = np.empty_like(prev)
        row[0] = i
        row[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (b != x))
        prev = np.minimum.accumulate(row - cols) + cols
    return int(prev[-1])


def dedup_units(units: Sequence[int] | np.ndarray) -> np.ndarray:
    """[5 5 7 7 5] -> [5 7 5]."""
    u = np.asarray(units)
    if len(u) == 0:
        return u
    return u[np.concatenate([[True], u[1:] != u[:-1]])]


def unit_edit_rate(vocoder, tokenizer, wavs: Sequence[np.ndarray]) -> dict[str, Any]:
    """Resynthesis unit edit rates (raw and dedup, see the module docstring) of `vocoder` on `wavs` (16 kHz mono
    float32 held-out audio), with `tokenizer` (a `tokenization.tokenizer.UnitTokenizer`)."""
    raw_edits = raw_ref = dd_edits = dd_ref = 0
    for wav in wavs:
        units = tokenizer.frame_units([wav])[0].astype(np.int64)
        if len(units) == 0:
            continue
        audio = vocoder.synthesize(units, np.ones(len(units), np.int64))
        again = tokenizer.frame_units([audio])[0].astype(np.int64)
        raw_edits += levenshtein(units, again)
        raw_ref += len(units)
        d_ref, d_hyp = dedup_units(units), dedup_units(again)
        dd_edits += levenshtein(d_ref, d_hyp)
        dd_ref += len(d_ref)
    if raw_ref == 0:
        return {"raw": None, "dedup": None, "utterances": 0, "frames": 0, "definition": EDIT_RATE_DEFINITION}
    return {"raw": raw_edits / raw_ref, "dedup": dd_edits / dd_ref, "utterances": len(wavs), "frames": raw_ref,
            "dedup_units": dd_ref, "definition": EDIT_RATE_DEFINITION}
