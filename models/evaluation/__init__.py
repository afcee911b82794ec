"""Downstream evaluation of trained speech LMs: sBLIMP, spoken/topic StoryCloze and an embedded synthetic benchmark.

`evaluate(run_dir, benchmark, *, cache_dir=None, score="mean", batch_size=32) -> dict` (contract §5 of
docs/architecture.md). This package imports nothing heavy at import time, so `slmscale --help` stays fast.
"""
from __future__ import annotations

from typing import Any

__all__ = ["evaluate"]


def evaluate(run_dir, benchmark, *, cache_dir=None, score: str = "mean", batch_size: int = 32, **kwargs) -> dict[str, Any]:
    """Score the model in `run_dir` on `benchmark`; see `models.evaluation.evaluator.evaluate`. A run dir on
    object storage (s3://...) is read through this node's scratch copy, and eval/<name>.json goes back to it."""
    from slmscale.models.evaluation.evaluator import evaluate as _evaluate
    from slmscale.objstore import is_uri

    if not is_uri(str(run_dir)):
        return _evaluate(run_dir, benchmark, cache_dir=cache_dir, score=score, batch_size=batch_size, **kwargs)
    from slmscale.models.mirror import RunMirror, local_run_dir

    local = local_run_dir(str(run_dir))
    result = _evaluate(local, benchmark, cache_dir=cache_dir, score=score, batch_size=batch_size, **kwargs)
    RunMirror(str(run_dir), local).push_evals()
    return result
