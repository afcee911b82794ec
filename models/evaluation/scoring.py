"""Log-likelihood of unit sequences under a causal LM: batched, right-padded, masked.

Convention (the authors' code): an utterance u_1..u_n is fed as [EOS, u_1, ..., u_{n-1}] and every unit u_t is
predicted, so the EOS that separates utterances in training plays the beginning-of-sequence role; no terminal EOS
is scored. The score of a candidate is its mean NLL per unit ("mean", length-normalised) or the summed NLL ("sum").
Lower is better.

Sequences are sorted by length before batching so a batch holds similar lengths and little compute goes to
padding. On a GPU the forward runs under bf16 autocast with PyTorch SDPA attention; the log-softmax is taken in
float32 either way.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slmscale.errors import SlmscaleError

__all__ = ["ScoreConfig", "SCORES", "sequence_nll", "pick_device"]

SCORES = ("mean", "sum")


@dataclass(frozen=True)
class ScoreConfig:
    score: str = "mean"  # "mean" NLL per unit (paper) or "sum"
    batch_size: int = 32  # sequences per forward pass
    bf16: bool | None = None  # None: bf16 autocast on CUDA devices that support it
    progress: bool = True

    def validate(self) -> ScoreConfig:
        if self.score not in SCORES:
            raise SlmscaleError(f"score: expected one of {list(SCORES)}, got {self.score!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SlmscaleError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        return self


def pick_device(device: str | None = None):
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device, bf16: bool | None):
    import torch

    if device.type == "cuda" and (bf16 if bf16 is not None else torch.cuda.is_bf16_supported()):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sequence_nll(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    eos_id: int,
    pad_id: int,
    config: ScoreConfig = ScoreConfig(),
) -> np.ndarray:
    """NLL (nats) of each unit sequence under `model` (a causal LM returning `.logits`): mean per unit or sum.

    Returns float64 array aligned with `sequences`. An empty sequence is an error (nothing to score).
    """
    import torch

    config.validate()
    vocab = int(model.config.vocab_size)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if len(sequences) == 0:
        return np.zeros(0, dtype=np.float64)
    if (lengths == 0).any():
        raise SlmscaleError(f"sequence {int(np.flatnonzero(lengths == 0)[0])}: no units to score (empty utterance)")
    for i, s in enumerate(sequences):
        arr = np.asarray(s)
        if arr.min() < 0 or arr.max() >= vocab:
            raise SlmscaleError(f"sequence {i}: unit id {int(arr.max())} outside the model vocabulary [0, {vocab})")
    device = next(model.parameters()).device
    order = np.argsort(-lengths, kind="stable")  # longest first: a memory error shows up in the first batch
    out = np.empty(len(sequences), dtype=np.float64)
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    iterator = batches
    if config.progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="scoring", unit="batch", leave=False)
    model.eval()
    with torch.inference_mode():
        for idx in iterator:
            max_len = int(lengths[idx].max())
            # inputs: EOS then the units without the last; targets: the units; pads get attention 0 / target -100
            inputs = torch.full((len(idx), max_len), pad_id, dtype=torch.long)
            targets = torch.full((len(idx), max_len), -100, dtype=torch.long)
            mask = torch.zeros((len(idx), max_len), dtype=torch.long)
            for row, j in enumerate(idx):
                units = torch.as_tensor(np.asarray(sequences[j], dtype=np.int64))
                n = len(units)
                inputs[row, 0] = eos_id
                inputs[row, 1:n] = units[:-1]
                targets[row, :n] = units
                mask[row, :n] = 1
            if device.type == "cuda":  # pinned host memory lets the copy overlap the previous batch's kernels
                inputs, targets, mask = (t.pin_memory().to(device, non_blocking=True) for t in (inputs, targets, mask))
            else:
                inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
            with _autocast(device, config.bf16):
                logits = model(input_ids=inputs, attention_mask=mask).logits
            token_nll = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )  # (batch, time), 0 at padding
            valid = targets != -100
            total = token_nll.sum(dim=1).double()
            if config.score == "mean":
                total = total / valid.sum(dim=1).double()
            out[idx] = total.cpu().numpy()
    return out
