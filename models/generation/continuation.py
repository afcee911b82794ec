"""Continue a unit prompt with a trained model: transformers `generate` (KV cache), all samples in one batch.

The model input is [EOS] + prompt, as in training, where every utterance follows an EOS (and as evaluation
scores candidates). The samples of one prompt share its length, so they form one batch without padding.
Sampling: temperature > 0 samples from softmax(logits / T), optionally among the top-k units only;
temperature 0 is greedy. Pad is never generated; EOS is suppressed unless `stop_at_eos`, so every sample has
exactly `max_units` units (with `stop_at_eos` a sample ends at its first EOS, which is not kept). Continuations longer
than the model's context slide a window (see `continue_units`). Torch's RNG is seeded with `seed` immediately
before generation: on CPU the same seed gives the same units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmscale.errors import SlmscaleError

__all__ = ["SamplingConfig", "continue_units"]


@dataclass(frozen=True)
class SamplingConfig:
    max_units: int = 200
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int = 0
    num_samples: int = 1
    stop_at_eos: bool = False

    def validate(self) -> SamplingConfig:
        if self.max_units < 1:
            raise SlmscaleError(f"--max-units: expected at least 1 unit, got {self.max_units}")
        if not self.temperature >= 0:
            raise SlmscaleError(f"--temperature: expected a number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise SlmscaleError(f"--top-k: expected >= 0 (0 = no filter), got {self.top_k}")
        if self.num_samples < 1:
            raise SlmscaleError(f"--num-samples: expected at least 1, got {self.num_samples}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"max_units": self.max_units, "temperature": self.temperature, "top_k": self.top_k, "seed": self.seed,
                "num_samples": self.num_samples, "stop_at_eos": self.stop_at_eos}


def continue_units(model, prompt: list[int], *, eos_id: int, pad_id: int, config: SamplingConfig) -> tuple[list[list[int]], int]:
    """(`num_samples` continuations, the number of prompt units the model saw).

    Within the model's context C a sample is one `generate` call on [EOS] + prompt. Longer continuations slide a
    window: at most C // 2 units are generated per call, each call seeing the last C - (units to generate) units
    (no EOS: mid-utterance, as the training windows), so the model never attends beyond the length it was trained
    at. A prompt longer than the first window is cut to its last units (how many were seen is returned)."""
    import torch

    config.validate()
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30
    if context < 4:
        raise SlmscaleError(f"model context {context}: expected at least 4 positions to generate from a prompt")
    step = min(config.max_units, context // 2)
    n_seen = min(len(prompt), context - 1 - step)
    device = next(model.parameters()).device
    rows = torch.tensor([[eos_id] + prompt[len(prompt) - n_seen:]] * config.num_samples, dtype=torch.long, device=device)
    generated = torch.zeros((config.num_samples, 0), dtype=torch.long, device=device)
    finished = torch.zeros(config.num_samples, dtype=torch.bool, device=device)
    torch.manual_seed(config.seed)
    while generated.shape[1] < config.max_units and not bool(finished.all()):
        step = min(config.max_units - generated.shape[1], context // 2)
        history = torch.cat([rows, generated], dim=1)  # [EOS] + prompt seen + generated so far
        # a later window: the most recent units (mid-utterance, no EOS) unless everything still fits
        window = history if history.shape[1] <= context - step else history[:, -(context - step):]
        new = _generate(model, window, step, eos_id=eos_id, pad_id=pad_id, config=config)
        if config.stop_at_eos:
            new = torch.where(finished[:, None], torch.full_like(new, pad_id), new)
            finished |= (new == eos_id).any(dim=1)
        generated = torch.cat([generated, new], dim=1)
    samples = []
    for row in generated.tolist():
        if config.stop_at_eos and eos_id in row:
            row = row[:row.index(eos_id)]
        samples.append([u for u in row if u != pad_id])
    return samples, n_seen


def _generate(model, ids, n_new: int, *, eos_id: int, pad_id: int, config: SamplingConfig):
    """`n_new` units after `ids` [B, T] from one KV-cached `generate` call -> [B, n_new] (pad after an EOS stop)."""
    import torch
    from transformers import GenerationConfig

    greedy = config.temperature == 0
    gen = GenerationConfig(
        max_new_tokens=n_new, min_new_tokens=0 if config.stop_at_eos else n_new,
        do_sample=not greedy, temperature=None if greedy else config.temperature,
        top_k=None if greedy or config.top_k == 0 else config.top_k, top_p=None,
        eos_token_id=eos_id if config.stop_at_eos else None, pad_token_id=pad_id,
        suppress_tokens=[pad_id] if config.stop_at_eos else [pad_id, eos_id], use_cache=True)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    new = out[:, ids.shape[1]:]
    if new.shape[1] < n_new:  # every sample stopped at EOS early
        new = torch.cat([new, torch.full((new.shape[0], n_new - new.shape[1]), pad_id, dtype=new.dtype,
                                         device=new.device)], dim=1)
    return new
