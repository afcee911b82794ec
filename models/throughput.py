"""Training throughput: tokens/s of the updates (`ThroughputMeter`) and model FLOPs utilisation, achieved
training FLOP/s over the device's dense bf16 peak.

FLOPs per token are `models.ladder.flops_per_token` (6 N plus the attention term 12 L d T, as PaLM and
nanoGPT count them). Peaks are the vendors' dense (no sparsity) bf16 tensor-core figures.
"""
from __future__ import annotations

import math

__all__ = ["DEVICE_PEAK_BF16", "device_peak_flops", "mfu", "ThroughputMeter"]

# Substring of torch.cuda.get_device_name() -> dense bf16 FLOP/s. More specific names first.
DEVICE_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),  # AWS A10G
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
    ("T4", 65e12),  # fp16
)


def device_peak_flops(device) -> float | None:
    """Peak dense bf16 FLOP/s of a torch device, or None when unknown (CPUs: MFU is reported as NaN)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in DEVICE_PEAK_BF16:
        if key in name:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float | None, n_devices: int = 1) -> float:
    """Fraction of the aggregated peak that the measured throughput achieves (NaN without a known peak)."""
    if not peak_flops_per_device or not math.isfinite(tokens_per_s):
        return float("nan")
    return flops_per_token * tokens_per_s / (peak_flops_per_device * n_devices)


class ThroughputMeter:
    """Tokens/s of the training updates of one session (one start or resume of a run), in report intervals.

    `add(seconds)` after each update (its time, waiting for the device where the caller has synchronised),
    `end_interval()` at a report: the interval's tokens/s. `session_rate()` at the end: tokens/s over the
    session's intervals, leaving out the first (compilation, allocator warm-up) when there are others."""

    def __init__(self, tokens_per_update: int):
        self.tokens_per_update = tokens_per_update
        self.updates = 0  # in the current interval
        self.seconds = 0.0
        self._first: tuple[int, float] | None = None  # (tokens, seconds) of the session's first interval
        self._tokens = 0  # of the later intervals
        self._time = 0.0

    def add(self, seconds: float) -> None:
        self.updates += 1
        self.seconds += seconds

    def end_interval(self) -> float:
        """Tokens/s of the interval since the last report (NaN if it took no measurable time); starts a new one."""
        tokens = self.updates * self.tokens_per_update
        rate = tokens / self.seconds if self.seconds > 0 else float("nan")
        if self._first is None:
            self._first = (tokens, self.seconds)
        else:
            self._tokens += tokens
            self._time += self.seconds
        self.updates, self.seconds = 0, 0.0
        return rate

    def session_rate(self) -> float:
        """Tokens/s of the session (NaN when no interval ended in it, e.g. resumed after the last report)."""
        tokens, seconds = self._tokens, self._time
        if seconds == 0 and self._first is not None:
            tokens, seconds = self._first
        return tokens / seconds if seconds > 0 else float("nan")
