"""Downstream evaluation of trained speech LMs: sBLIMP, spoken/topic StoryCloze and an embedded synthetic benchmark.

`evaluate(run_dir, benchmark, *, cache_dir=None, score="mean", batch_size=32) -> dict` (contract §5 of
docs/architecture.md). This package imports nothing heavy at import time, so `slmscale --help` stays fast.
"""
from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def evaluate(run_dir, benchmark, *, cache_dir=None, score: str = "mean", batch_size: int = 32, **kwargs) -> dict[str, Any]:
    """Score the model in `run_dir` on `benchmark`; see `models.evaluation.evaluator.evaluate`."""
    from slmscale.models.evaluation.evaluator import evaluate as _evaluate

    return _evaluate(run_dir, benchmark, cache_dir=cache_dir, score=score, batch_size=batch_size, **kwargs)
