"""From per-candidate NLLs to benchmark accuracies (sBLIMP macro / pair / voice-pair, sWUGGY, StoryCloze).

A two-choice decision is 1 when the correct candidate has the lower NLL, 0 when it has the higher, and 0.5 on a
tie (ZeroSpeech 2021 convention, also the authors'). sBLIMP follows the ZeroSpeech 2021 scorer: a minimal pair is
spoken by several voices; a *voice pair* is one voice's (correct, incorrect) recording, a *pair*'s score is the mean
over its voices, a phenomenon's accuracy the mean over its pairs, and the macro accuracy (the paper's sBLIMP
number) the mean over phenomena. `sblimp_pair` is the flat mean over pairs. sWUGGY follows the ZeroSpeech 2021
lexical scorer: a (word, non-word) pair's score is the mean over its voices and `swuggy` is the mean over pairs.
`sblimp_pair` and `swuggy` are exactly the numbers the official toolkit reports for syntactic and lexical
(`by_pair['score'].mean()`), which tests/test_eval_known_answer.py checks by running it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from slmscale.errors import SlmscaleError
from slmscale.models.evaluation.benchmarks import Benchmark, Candidate

__all__ = ["decisions", "sblimp_metrics", "swuggy_metrics", "storycloze_metrics", "benchmark_metrics", "convention"]


def decisions(nll_correct: np.ndarray, nll_incorrect: np.ndarray) -> np.ndarray:
    """1.0 where the correct candidate is more likely (lower NLL), 0.0 where less, 0.5 on exact ties."""
    c, i = np.asarray(nll_correct, dtype=float), np.asarray(nll_incorrect, dtype=float)
    return (c < i).astype(float) + 0.5 * (c == i)


def convention(score: str) -> str:
    what = "mean NLL per unit (length-normalised)" if score == "mean" else "summed NLL over units"
    return (
        f"score={score}: {what} of each candidate's units, fed as [EOS]+units (EOS as BOS), no terminal EOS; "
        "the lower NLL wins, ties count 0.5. sblimp_macro = mean over phenomena (gold.csv 'type') of the mean "
        "over pairs (pair = mean over its voices); sblimp_pair = mean over pairs; voice_pair_accuracy = mean over "
        "(pair, voice) decisions; swuggy = mean over (word, non-word) pairs (gold.csv 'id') of the mean over "
        "voices; ssc/tsc = mean over questions. ZeroSpeech files (--zerospeech-out) hold score = -NLL per file "
        "(higher = more probable), so the official toolkit reproduces sblimp_pair and swuggy."
    )


def _paired_frame(candidates: Sequence[Candidate], nll: np.ndarray) -> pd.DataFrame:
    if len(candidates) != len(nll):
        raise SlmscaleError(f"{len(nll)} scores for {len(candidates)} candidates")
    df = pd.DataFrame(
        {
            "question": [c.question for c in candidates],
            "voice": [c.voice for c in candidates],
            "phenomenon": [c.phenomenon for c in candidates],
            "subtype": [c.subtype for c in candidates],
            "correct": [c.correct for c in candidates],
            "nll": np.asarray(nll, dtype=float),
        }
    )
    keys = ["question", "voice", "phenomenon", "subtype"]
    pos = df[df.correct].set_index(keys)["nll"].rename("nll_correct")
    neg = df[~df.correct].set_index(keys)["nll"].rename("nll_incorrect")
    paired = pd.concat([pos, neg], axis=1, join="inner").reset_index()
    if len(paired) != len(pos) or len(paired) != len(neg):
        raise SlmscaleError("candidates do not form (correct, incorrect) pairs per question and voice")
    paired["decision"] = decisions(paired.nll_correct.to_numpy(), paired.nll_incorrect.to_numpy())
    return paired


def sblimp_metrics(candidates: Sequence[Candidate], nll: np.ndarray) -> tuple[dict, dict]:
    paired = _paired_frame(candidates, nll)
    pairs = paired.groupby(["phenomenon", "subtype", "question"], as_index=False)["decision"].mean()
    by_phenomenon = pairs.groupby("phenomenon")["decision"].agg(["mean", "count"])
    by_subtype = pairs.groupby(["phenomenon", "subtype"])["decision"].agg(["mean", "count"])
    by_voice = paired.groupby("voice")["decision"].mean()
    metrics = {
        "sblimp_macro": float(by_phenomenon["mean"].mean()),
        "sblimp_pair": float(pairs["decision"].mean()),
    }
    details = {
        "voice_pair_accuracy": float(paired["decision"].mean()),
        "by_phenomenon": {k: {"accuracy": float(r["mean"]), "n_pairs": int(r["count"])} for k, r in by_phenomenon.iterrows()},
        "by_subtype": {f"{p}/{s}": {"accuracy": float(r["mean"]), "n_pairs": int(r["count"])} for (p, s), r in by_subtype.iterrows()},
        "by_voice": {str(k): float(v) for k, v in by_voice.items()},
        "n_phenomena": int(len(by_phenomenon)),
        "n_pairs": int(len(pairs)),
        "n_voice_pairs": int(len(paired)),
        "ties": int((paired["decision"] == 0.5).sum()),
    }
    return metrics, details


def swuggy_metrics(candidates: Sequence[Candidate], nll: np.ndarray) -> tuple[dict, dict]:
    paired = _paired_frame(candidates, nll)
    pairs = paired.groupby("question", as_index=False)["decision"].mean()
    by_voice = paired.groupby("voice")["decision"].mean()
    metrics = {"swuggy": float(pairs["decision"].mean())}
    details = {
        "voice_pair_accuracy": float(paired["decision"].mean()),
        "by_voice": {str(k): float(v) for k, v in by_voice.items()},
        "n_pairs": int(len(pairs)),
        "n_voice_pairs": int(len(paired)),
        "ties": int((paired["decision"] == 0.5).sum()),
    }
    return metrics, details


def storycloze_metrics(candidates: Sequence[Candidate], nll: np.ndarray, task: str) -> tuple[dict, dict]:
    paired = _paired_frame(candidates, nll)
    metrics = {task: float(paired["decision"].mean())}
    details = {"n_questions": int(len(paired)), "ties": int((paired["decision"] == 0.5).sum())}
    return metrics, details


def benchmark_metrics(bench: Benchmark, nll: np.ndarray) -> tuple[dict, dict]:
    """(metrics keyed by results-table column, details) for a benchmark and its candidates' NLLs."""
    if bench.task == "sblimp":
        return sblimp_metrics(bench.candidates, nll)
    if bench.task == "swuggy":
        return swuggy_metrics(bench.candidates, nll)
    return storycloze_metrics(bench.candidates, nll, bench.task)
