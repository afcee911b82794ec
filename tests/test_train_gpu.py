"""Device-dependent choices. The CUDA tests run only where a GPU is present (bf16 autocast + compile + fused
AdamW + SDPA/flash; liger's fused kernels on vs off; no host sync inside an update); the CPU test checks what is
picked without one."""
from __future__ import annotations

import json
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
    assert _resolve_runtime(_cfg(), "cpu") == {"bf16": False, "attn": "sdpa", "compile": False, "fused_adamw": False,
                                               "fused_kernels": False}
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
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["runtime"]["bf16"] == torch.cuda.is_bf16_supported() and final["runtime"]["compile"]
    assert final["runtime"]["fused_adamw"] and final["runtime"]["attn"] in ("sdpa", "flash_attention_2")
    assert row["loss"] < 0.35 * math.log(50)
    if device_peak_flops("cuda"):
        assert 0 < row["mfu"] < 1


def _gpu_units(tmp_path):
    return write_pattern_units(tmp_path / "u", n_units=50, n_utterances=400, seed=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_kernels_track_the_plain_loss_curve(tmp_path):
    """liger's fused linear + cross-entropy and RMSNorm/SwiGLU vs the plain path: the same 200 updates (same
    initial weights, same batches) in bf16 + compile. The two differ only by bf16 rounding (2^-8 relative per
    element, in a different order), so the first loss agrees to ~0.1 % and the curves, after the trajectories have
    drifted apart for 200 updates, stay within the update-to-update noise: mean |Δ| over the last 50 train losses
    < 1 % of the loss (a real bug, e.g. a shifted target or a lost tied-weight gradient, costs far more)."""
    from slmscale.models.kernels import liger_status

    usable, why = liger_status()
    if not usable:
        pytest.skip(f"liger-kernel not usable: {why}")
    units = _gpu_units(tmp_path)
    curves, finals = {}, {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        train(TrainConfig(units_dir=str(units), model="tiny-3M", out_dir=str(out), tokens=4096 * 200, lr=3e-3,
                          report_every=1, eval_every=100, checkpoint_every=200, fused_kernels=mode, progress=False))
        curves[mode] = [json.loads(ln)["train_loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
        finals[mode] = json.loads((out / "final.json").read_text())
    assert finals["on"]["runtime"]["fused_kernels"] is True and finals["off"]["runtime"]["fused_kernels"] is False
    off, on = curves["off"], curves["on"]
    assert len(off) == len(on) == 200
    assert abs(on[0] - off[0]) < 5e-3 * off[0], (on[0], off[0])
    tail = sum(abs(a - b) for a, b in zip(off[-50:], on[-50:])) / 50
    assert tail < 0.01 * (sum(off[-50:]) / 50), (tail, off[-5:], on[-5:])
    assert abs(finals["on"]["test_loss"] - finals["off"]["test_loss"]) < 0.01 * finals["off"]["test_loss"]
    assert off[-1] < 0.5 * off[0]  # it learned (the comparison is not between two flat curves)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_update_has_no_host_sync(tmp_path):
    """The plain path's update (micro-batches with gradient accumulation, clipping, fused AdamW, scheduler) queues
    work without waiting for the device: torch's sync debug mode turns any synchronising call into an error.
    (liger's fused loss reads a count with .item(): one sync per micro-batch, so the fused path is not checked.)"""
    from slmscale.models.config import make_plan
    from slmscale.models.loop import WorkerContext, _Worker

    units = _gpu_units(tmp_path)
    cfg = TrainConfig(units_dir=str(units), model="tiny-1M", out_dir=str(tmp_path / "run"), tokens=2048 * 10,
                      micro_batch=4, fused_kernels="off", progress=False)
    plan = make_plan(cfg, 50)
    assert plan.grad_accum > 1
    worker = _Worker(cfg, plan, WorkerContext(device="cuda"))
    worker.model.train()
    for step in (1, 2):  # compilation and allocator warm-up may synchronise
        worker.update(step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (3, 4, 5):
            worker.update(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(worker.take_loss_sum())
