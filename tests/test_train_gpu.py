"""Device-dependent choices. The CUDA test runs only where a GPU is present (bf16 autocast + compile + fused
AdamW + SDPA/flash); the CPU test checks what is picked without one."""
from __future__ import annotations

import math

import pytest
import torch

from slmscale.models.config import TrainConfig
from slmscale.models.loop import _resolve_runtime
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.throughput import device_peak_flops, mfu
from slmscale.models.train import train


def _cfg(**kw):
    return TrainConfig(**{**dict(units_dir="u", model="tiny-100K", out_dir="o", tokens=512), **kw})


def test_cpu_runtime_choices():
    assert _resolve_runtime(_cfg(), "cpu") == {"bf16": False, "attn": "sdpa", "compile": False, "fused_adamw": False}
    assert _resolve_runtime(_cfg(precision="bf16", compile=True), "cpu")["bf16"] is True
    assert _resolve_runtime(_cfg(attn_implementation="eager"), "cpu")["attn"] == "eager"
    assert device_peak_flops("cpu") is None and math.isnan(mfu(1e9, 1e3, None))
    assert mfu(6e8, 1e5, 312e12) == pytest.approx(6e8 * 1e5 / 312e12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_compile_run_learns(tmp_path):
    units = write_pattern_units(tmp_path / "u", n_units=50, n_utterances=400, seed=2)
    row = train(TrainConfig(units_dir=str(units), model="tiny-1M", out_dir=str(tmp_path / "run"), tokens=2048 * 80,
                            lr=3e-3, progress=False))
    import json

    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["runtime"]["bf16"] == torch.cuda.is_bf16_supported() and final["runtime"]["compile"]
    assert final["runtime"]["fused_adamw"] and final["runtime"]["attn"] in ("sdpa", "flash_attention_2")
    assert row["loss"] < 0.35 * math.log(50)
    if device_peak_flops("cuda"):
        assert 0 < row["mfu"] < 1
