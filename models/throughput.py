"""Model FLOPs utilisation: achieved training FLOP/s over the device's dense bf16 peak.

FLOPs per token are `models.ladder.flops_per_token` (6 N plus the attention term 12 L d T, as PaLM and
nanoGPT count them). Peaks are the vendors' dense (no sparsity) bf16 tensor-core figures.
"""
from __future__ import annotations

import math

__all__ = ["DEVICE_PEAK_BF16", "device_peak_flops", "mfu"]

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
