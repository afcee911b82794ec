"""Fused GPU kernels for training, behind one switch (`TrainConfig.fused_kernels`: auto / on / off).

Two levers from liger-kernel (Triton kernels, so CUDA only), both exact up to bf16 rounding:

* the loss: `LigerFusedLinearCrossEntropyLoss` applies the output projection (the lm_head, i.e. the tied embedding
  matrix) and the cross-entropy chunk by chunk, never materialising the [tokens, vocab] logits nor their fp32
  copy, instead of `F.cross_entropy(model(x).logits.float())`;
* the decoder's RMSNorm and SwiGLU MLP modules: liger's fused forward/backward kernels, patched on the model
  instance only. Liger's RoPE is left out: transformers calls it through a module-level function, so patching it
  would change every Llama model of the process (including an "off" run next to an "on" one), and inductor
  already fuses its element-wise ops under torch.compile.

`resolve_fused_kernels` decides: "auto" turns them on only on CUDA with liger-kernel importable (it needs triton)
and not under FSDP (the loss wrapper would change FSDP's state-dict names); on a CPU "auto" is off, so the CPU
path is exactly the plain one. "on" where they cannot run is a SlmscaleError naming the field; "off" is the
plain path everywhere.

With the fused loss the model trained is `FusedLossLM(lm)`: `forward(input_ids, labels=ids)` returns the mean
next-unit loss (the same targets and mean as the plain path); without `labels` it is the causal LM's own forward,
so evaluation and generation still get logits. Under torch.compile only the decoder body (`lm.model`) is compiled,
in place (parameter names unchanged); the fused loss runs eagerly after it.

Caveat: liger's fused loss reads the number of non-ignored targets with one `.item()` per call, i.e. one host sync
per micro-batch (the plain path has none inside an update).
"""
from __future__ import annotations

from typing import Any

import torch

from slmscale.errors import SlmscaleError

__all__ = ["FUSED_CHOICES", "liger_status", "resolve_fused_kernels", "FusedLossLM", "build_fused", "patch_llama_modules"]

FUSED_CHOICES = ("auto", "on", "off")
IGNORE_INDEX = -100  # the target of the last position (it has no next unit)


def liger_status() -> tuple[bool, str]:
    """(usable, version or why not): liger-kernel imports with its Triton kernels."""
    try:
        from importlib.metadata import version

        import liger_kernel.transformers  # noqa: F401  (imports triton; fails on a machine without it)

        return True, version("liger-kernel")
    except Exception as exc:  # ImportError (no liger, no triton), or a triton that cannot initialise
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0]


def resolve_fused_kernels(setting: str, device_type: str, fsdp: bool = False) -> dict[str, Any]:
    """{"fused_kernels": bool} plus, when on, {"liger_kernel": version} for `setting` on this device.
    Raises SlmscaleError for "on" where the kernels cannot run."""
    if setting not in FUSED_CHOICES:
        raise SlmscaleError(f"fused_kernels: {setting!r}, expected one of {FUSED_CHOICES}")
    if setting == "off" or (setting == "auto" and (device_type != "cuda" or fsdp)):
        return {"fused_kernels": False}
    if device_type != "cuda":
        raise SlmscaleError(f"fused_kernels: 'on' needs a CUDA device, but this run is on {device_type}; "
                            "expected 'auto' or 'off'")
    if fsdp:
        raise SlmscaleError("fused_kernels: 'on' is not supported with parallel 'fsdp'; expected 'auto' or 'off' "
                            "(or parallel 'ddp')")
    usable, detail = liger_status()
    if not usable:
        if setting == "auto":
            return {"fused_kernels": False}
        raise SlmscaleError(f"fused_kernels: 'on' needs liger-kernel with triton (pip install 'slmscale[gpu]'), "
                            f"which does not import here ({detail}); expected 'auto' or 'off'")
    return {"fused_kernels": True, "liger_kernel": detail}


def patch_llama_modules(lm) -> None:
    """Liger's fused RMSNorm and SwiGLU forward on this model's modules only: transformers' module-level names that
    liger's patch function replaces for future models are put back, so other models of the process stay plain."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from transformers.models.llama import modeling_llama

    names = ("LlamaRMSNorm", "LlamaMLP", "apply_rotary_pos_emb")
    saved = {n: getattr(modeling_llama, n) for n in names if hasattr(modeling_llama, n)}
    try:
        apply_liger_kernel_to_llama(rope=False, cross_entropy=False, fused_linear_cross_entropy=False, rms_norm=True,
                                    swiglu=True, model=lm)
    finally:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)


def next_unit_targets(input_ids):
    """Targets aligned with every position: the next unit, and IGNORE_INDEX at the last position. The mean over the
    non-ignored targets is the plain path's mean over logits[:, :-1] vs input_ids[:, 1:]."""
    import torch.nn.functional as F

    return F.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX)


class FusedLossLM(torch.nn.Module):
    """A causal LM whose forward with `labels` returns the fused linear + cross-entropy loss.

    `forward(input_ids, labels=input_ids)`: mean next-unit cross-entropy over positions 0..T-2 (as the plain path),
    the logits never materialised. `forward(input_ids, use_cache=False)`: the LM's own output (logits), for
    evaluation. The lm_head weight is passed to the loss as is: with tied embeddings (the ladder's) it is the
    embedding matrix, and autograd sums both uses' gradients into it."""

    def __init__(self, lm, loss_fn):
        super().__init__()
        self.lm = lm
        self.loss_fn = loss_fn

    def forward(self, input_ids, labels=None, use_cache: bool = False):
        if labels is None:
            return self.lm(input_ids=input_ids, use_cache=use_cache)
        hidden = self.lm.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return self.loss_fn(self.lm.lm_head.weight, hidden.reshape(-1, hidden.shape[-1]),
                            next_unit_targets(labels).reshape(-1))


def build_fused(lm, compile_: bool) -> FusedLossLM:
    """The training module of the fused path: liger's modules patched into `lm`, its decoder body compiled in place
    when asked, wrapped with liger's fused linear + cross-entropy loss."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    if lm.config.tie_word_embeddings and lm.lm_head.weight is not lm.get_input_embeddings().weight:
        raise SlmscaleError("fused_kernels: the model's lm_head is not tied to its embeddings as its config says; "
                            "expected fused_kernels 'off'")
    patch_llama_modules(lm)
    if compile_:
        lm.model.compile()  # in place: the state dict keeps its names (checkpoints stay interchangeable)
    return FusedLossLM(lm, LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean"))
