"""Per-file scores in the ZeroSpeech 2021 sLM submission layout, for the official toolkit or a submission.

    DIR/meta.yaml            the submission's description (zerospeech-benchmarks `MetaFile`); written once with
                             what slmscale knows and `<required: ...>` placeholders for the authors to fill in,
                             never overwritten (a user may have filled it)
    DIR/lexical/<split>.txt  sWUGGY: one `filename score` line per WAV of the split
    DIR/syntactic/<split>.txt  sBLIMP: same

`score` is the negated NLL of the file's units (-mean NLL per unit, or -summed NLL with --score sum): higher =
more probable, the toolkit's direction. It is written with `repr` (the shortest text that parses back to the same
float64), so the toolkit's pairwise comparisons and ties are exactly slmscale's and `zrc benchmarks run sLM21`
(or its scoring functions) reproduces `sblimp_pair` and `swuggy`. The split is the benchmark folder's name
(`dev` / `test`), `dev` for the embedded benchmarks. sStoryCloze has no sLM21 task and is refused.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_text
from slmscale.models.evaluation.benchmarks import Benchmark

__all__ = ["ZEROSPEECH_TASK_DIRS", "check_zerospeech_task", "zerospeech_split", "write_zerospeech_scores",
           "zerospeech_meta"]

ZEROSPEECH_TASK_DIRS = {"swuggy": "lexical", "sblimp": "syntactic"}
_REQUIRED = "<required: {}>"


def check_zerospeech_task(bench: Benchmark) -> str:
    """The sLM21 task folder of `bench` (lexical / syntactic); StoryCloze has none."""
    if bench.task not in ZEROSPEECH_TASK_DIRS:
        raise SlmscaleError(
            f"--zerospeech-out: benchmark {bench.name} is StoryCloze ({bench.task}), which has no ZeroSpeech 2021 sLM "
            "task; expected sBLIMP (syntactic) or sWUGGY (lexical)"
        )
    return ZEROSPEECH_TASK_DIRS[bench.task]


def zerospeech_split(bench: Benchmark) -> str:
    return bench.root.name if bench.root.name in ("dev", "test") else "dev"


def zerospeech_meta(provenance: dict[str, Any]) -> dict[str, Any]:
    """meta.yaml content (the fields of zerospeech-benchmarks' MetaFile), filled from the run's provenance."""
    model = provenance.get("model") or "model"
    n_params = provenance.get("n_params")
    size = f", {n_params:,} parameters" if isinstance(n_params, int) else ""
    return {
        "username": None,
        "benchmark_name": "sLM21",
        "model_info": {
            "model_id": None,
            "system_description": (
                f"slmscale {model}{size}: causal Transformer LM over {provenance.get('tokenizer') or 'discrete'} "
                f"speech units (tokenizer hash {str(provenance.get('tokenizer_hash'))[:16]}); file score = "
                f"-{'mean NLL per unit' if provenance.get('score', 'mean') == 'mean' else 'summed NLL'} "
                f"(run {provenance.get('run_id')}, step {provenance.get('step')})"
            ),
            "train_set": _REQUIRED.format("the dataset used to train the system"),
            "gpu_budget": None,
        },
        "publication": {
            "author_label": _REQUIRED.format("a short label, e.g. author1 et al."),
            "authors": _REQUIRED.format("the full names of the authors"),
            "paper_title": None,
            "paper_url": None,
            "publication_year": datetime.date.today().year,
            "bib_reference": None,
            "DOI": None,
            "institution": _REQUIRED.format("the institution (university, company, ...)"),
            "team": None,
        },
        "open_source": True,
        "code_url": None,
    }


def write_zerospeech_scores(out_dir: str | Path, bench: Benchmark, nll: np.ndarray,
                            provenance: dict[str, Any]) -> Path:
    """Write `out_dir/<lexical|syntactic>/<split>.txt` (and meta.yaml if absent); returns the scores file."""
    import yaml

    task_dir = check_zerospeech_task(bench)
    nll = np.asarray(nll, dtype=np.float64)
    if len(nll) != len(bench.candidates):
        raise SlmscaleError(f"{len(nll)} scores for {len(bench.candidates)} candidates")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SlmscaleError(f"--zerospeech-out {out_dir}: exists and is not a folder, expected a folder (created if missing)")
    lines = "".join(f"{c.utt_id} {float(-x)!r}\n" for c, x in zip(bench.candidates, nll))
    scores = atomic_write_text(out_dir / task_dir / f"{zerospeech_split(bench)}.txt", lines)
    meta = out_dir / "meta.yaml"
    if not meta.is_file():
        atomic_write_text(meta, yaml.safe_dump(zerospeech_meta(provenance), sort_keys=False))
    return scores
