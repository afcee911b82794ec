"""The fused-kernel switch (models/kernels.py) on a CPU: what `fused_kernels` resolves to, its errors, its place in
config.json and on resume, and the fused path's plumbing (targets, tied lm_head, liger's module patch kept to one
model) checked against the plain path with a torch stand-in for liger's loss. The liger kernels themselves run in
tests/test_train_gpu.py (CUDA only)."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from slmscale.errors import SlmscaleError
from slmscale.models import kernels
from slmscale.models.config import RESUME_MAY_CHANGE, TrainConfig
from slmscale.models.ladder import build_model
from slmscale.models.loop import _resolve_runtime
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import train


def _cfg(**kw):
    return TrainConfig(**{**dict(units_dir="u", model="tiny-100K", out_dir="o", tokens=512), **kw})


def test_auto_and_off_are_the_plain_path_on_cpu():
    assert _resolve_runtime(_cfg(), "cpu")["fused_kernels"] is False
    assert _resolve_runtime(_cfg(fused_kernels="off"), "cpu")["fused_kernels"] is False
    assert kernels.resolve_fused_kernels("auto", "cpu") == {"fused_kernels": False}
    assert kernels.resolve_fused_kernels("off", "cuda") == {"fused_kernels": False}
    assert kernels.resolve_fused_kernels("auto", "cuda", fsdp=True) == {"fused_kernels": False}


def test_on_without_cuda_is_a_one_line_error_naming_the_field():
    with pytest.raises(SlmscaleError, match=r"^fused_kernels: 'on' needs a CUDA device") as err:
        _resolve_runtime(_cfg(fused_kernels="on"), "cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(SlmscaleError, match=r"^fused_kernels: 'on' is not supported with parallel 'fsdp'"):
        kernels.resolve_fused_kernels("on", "cuda", fsdp=True)
    with pytest.raises(SlmscaleError, match="fused_kernels"):
        _cfg(fused_kernels="yes")


def test_on_without_liger_is_a_one_line_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(kernels, "liger_status", lambda: (False, "ModuleNotFoundError: No module named 'triton'"))
    with pytest.raises(SlmscaleError, match=r"^fused_kernels: 'on' needs liger-kernel .*triton") as err:
        kernels.resolve_fused_kernels("on", "cuda")
    assert "\n" not in str(err.value)
    assert kernels.resolve_fused_kernels("auto", "cuda") == {"fused_kernels": False}
    monkeypatch.setattr(kernels, "liger_status", lambda: (True, "0.8.5"))
    assert kernels.resolve_fused_kernels("auto", "cuda") == {"fused_kernels": True, "liger_kernel": "0.8.5"}


def test_liger_status_says_why_when_unusable():
    usable, detail = kernels.liger_status()
    if not usable:  # e.g. this CPU machine: liger-kernel absent, or present without triton
        assert "Error" in detail and "\n" not in detail


def test_field_round_trips_and_may_change_on_resume(tmp_path):
    assert "fused_kernels" in RESUME_MAY_CHANGE
    cfg = _cfg(fused_kernels="off")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).fused_kernels == "off"
    assert cfg.differences(_cfg(fused_kernels="on")) == {}
    old = {k: v for k, v in cfg.to_dict().items() if k != "fused_kernels"}  # a config.json from before the field
    assert TrainConfig.from_dict(old).fused_kernels == "auto"


class _ReferenceFusedLoss(torch.nn.Module):
    """A torch stand-in for LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction='mean'): same call."""

    def forward(self, lin_weight, _input, target, bias=None):
        return F.cross_entropy((_input @ lin_weight.T).float(), target, ignore_index=kernels.IGNORE_INDEX)


def test_fused_wrapper_matches_the_plain_loss_and_gradients():
    torch.manual_seed(0)
    lm = build_model("tiny-100K", 50, attn_implementation="sdpa")
    assert lm.lm_head.weight is lm.get_input_embeddings().weight  # tied: the fused loss gets the embedding matrix
    x = torch.randint(0, 52, (3, 17))
    plain = F.cross_entropy(lm(input_ids=x, use_cache=False).logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    plain.backward()
    ref = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad(set_to_none=True)
    fused = kernels.FusedLossLM(lm, _ReferenceFusedLoss())
    loss = fused(input_ids=x, labels=x)
    loss.backward()
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    for name, p in lm.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(fused(input_ids=x, use_cache=False).logits, lm(input_ids=x).logits)  # evaluation
    assert set(fused.state_dict()) == {"lm." + k for k in lm.state_dict()}  # the loss adds no state


def test_next_unit_targets_ignore_the_last_position():
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert kernels.next_unit_targets(x).tolist() == [[2, 3, -100], [5, 6, -100]]


def _fake_liger(monkeypatch):
    """liger_kernel.transformers with liger's patch semantics (module-level names replaced, instance modules
    rebound) and the reference loss, so the fused path's wiring runs on a CPU."""
    from transformers.models.llama import modeling_llama

    calls = []

    def apply_liger_kernel_to_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True,
                                    swiglu=True, model=None):
        calls.append(dict(rope=rope, fused_linear_cross_entropy=fused_linear_cross_entropy, model=model))
        modeling_llama.LlamaRMSNorm = "patched"  # what liger does to every future model of the process
        modeling_llama.LlamaMLP = "patched"
        for layer in model.model.layers:
            layer.mlp.liger_patched = True

    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    fake.LigerFusedLinearCrossEntropyLoss = lambda **kw: _ReferenceFusedLoss()
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    return calls


def test_module_patch_stays_on_the_one_model(monkeypatch):
    from transformers.models.llama import modeling_llama

    calls = _fake_liger(monkeypatch)
    before = (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP, modeling_llama.apply_rotary_pos_emb)
    lm = build_model("tiny-100K", 50)
    fused = kernels.build_fused(lm, compile_=False)
    assert isinstance(fused, kernels.FusedLossLM) and fused.lm is lm
    assert calls[0]["rope"] is False and calls[0]["fused_linear_cross_entropy"] is False and calls[0]["model"] is lm
    assert all(layer.mlp.liger_patched for layer in lm.model.layers)
    assert (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP, modeling_llama.apply_rotary_pos_emb) == before


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return write_pattern_units(tmp_path_factory.mktemp("units") / "u", n_units=40, n_utterances=300, seed=1)


def _losses(run_dir):
    return [json.loads(ln)["train_loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_through_the_fused_path_matches_the_plain_one(units, tmp_path, monkeypatch):
    """The loop's fused branch (update, evaluation, final.json) on a CPU, with liger replaced by the torch reference:
    in fp32 the two paths compute the same numbers up to summation order."""
    common = dict(units_dir=str(units), model="tiny-100K", tokens=512 * 12, lr=2e-3, report_every=1,
                  eval_every=6, threads=1, progress=False)
    plain = train(TrainConfig(out_dir=str(tmp_path / "plain"), **common))
    _fake_liger(monkeypatch)
    monkeypatch.setattr(kernels, "liger_status", lambda: (True, "fake"))
    monkeypatch.setattr(kernels, "resolve_fused_kernels",
                        lambda setting, device_type, fsdp=False: {"fused_kernels": True, "liger_kernel": "fake"})
    fused = train(TrainConfig(out_dir=str(tmp_path / "fused"), **common))
    final = json.loads((tmp_path / "fused" / "final.json").read_text())
    assert final["runtime"]["fused_kernels"] is True and final["runtime"]["liger_kernel"] == "fake"
    a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "fused")
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4 * a[0]
    assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-4)


def test_train_refuses_on_without_cuda_before_writing_anything(tmp_path):
    """`train --fused-kernels on` on a CPU machine: one error naming the field, and no run dir left behind."""
    from slmscale.models.synthetic_units import write_pattern_units
    from slmscale.models.train import train

    units = write_pattern_units(tmp_path / "units", n_units=20, n_utterances=50, seed=1)
    run = tmp_path / "run"
    with pytest.raises(SlmscaleError, match=r"^fused_kernels: 'on' needs a CUDA device"):
        train(TrainConfig(units_dir=str(units), model="tiny-100K", tokens=2048, out_dir=str(run), device="cpu",
                          fused_kernels="on", progress=False))
    assert not run.exists()
