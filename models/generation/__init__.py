"""Speech continuation with trained unit LMs, and the unit vocoders that make it audible.

`generate(run_dir, out_dir, prompt=AUDIO | prompt_units=FILE, ...)` tokenizes the prompt with the run's own
tokenizer, samples continuations with the model's KV-cached `generate`, and writes the units (and WAVs with a
vocoder) with their provenance; see models/generation/pipeline.py and docs/generation.md. Vocoders: the embedded
lo-fi exemplar vocoder (exemplar.py) and CodeHiFiGAN checkpoints from a local directory (codehifigan.py).
This package imports nothing heavy at import time, so `slmscale --help` stays fast.
"""
from __future__ import annotations

from typing import Any

__all__ = ["generate"]


def generate(model, out_dir, **kwargs) -> dict[str, Any]:
    """Continue a prompt with the model of run directory `model` (a path, or a run dir on object storage, read
    through this node's scratch copy); see `models.generation.pipeline.generate`."""
    from slmscale.models.generation.pipeline import generate as _generate
    from slmscale.models.mirror import local_run_dir

    return _generate(local_run_dir(str(model)), out_dir, **kwargs)
