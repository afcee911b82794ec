"""The model ladder: paper Table 1 (Llama-style decoder) plus tiny sizes for CPU tests and the demo.

Every size is a `transformers.LlamaConfig` (RMSNorm, SwiGLU, RoPE theta 10000, no biases, tied input/output
embeddings), so a trained model is a directory any Hugging Face user loads with `from_pretrained`.
Vocabulary = K units + EOS (id K) + pad (id K + 1); the paper's K = 500 gives 502.

Parameter counts include the tied embedding once (paper Table 1):
    N = L * (4 d^2 + 3 d f + 2 d) + V d + d
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from slmscale.errors import SlmscaleError

__all__ = [
    "ModelSize",
    "LADDER",
    "PAPER_SIZES",
    "get_size",
    "lm_vocab_size",
    "llama_config",
    "build_model",
    "count_params",
    "count_params_meta",
    "flops_per_token",
    "ladder_table",
]


@dataclass(frozen=True)
class ModelSize:
    """One rung of the ladder. `tokens_per_update` and `micro_batch` are the training defaults for this size."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    ffn: int  # SwiGLU hidden size
    context: int  # tokens per training sequence (max positions)
    tokens_per_update: int  # paper's tokens per optimizer update (a multiple of `context`)
    micro_batch: int  # sequences per forward pass per worker (memory knob; no effect on the maths)


def _paper_ffn(d: int) -> int:
    """FFN hidden = 256 * ceil(int(8 d / 3) / 256), as in the authors' code."""
    return 256 * math.ceil(int(8 * d / 3) / 256)


PAPER_CONTEXT = 2050

# Paper Table 1 with the authors' tokens per update (20M: 64 x 2050 = 131,200 ...).
PAPER_SIZES = (
    ModelSize("20M", 6, 512, 8, _paper_ffn(512), PAPER_CONTEXT, 131_200, 16),
    ModelSize("85M", 12, 768, 12, _paper_ffn(768), PAPER_CONTEXT, 262_400, 16),
    ModelSize("155M", 12, 1024, 16, _paper_ffn(1024), PAPER_CONTEXT, 524_800, 16),
    ModelSize("309M", 24, 1024, 16, _paper_ffn(1024), PAPER_CONTEXT, 516_600, 12),
    ModelSize("823M", 16, 2048, 32, _paper_ffn(2048), PAPER_CONTEXT, 934_800, 6),
)

# Tiny sizes: same architecture, small context and small updates so a CPU run finishes in seconds.
TINY_SIZES = (
    ModelSize("tiny-100K", 2, 64, 2, 192, 64, 512, 8),
    ModelSize("tiny-300K", 3, 96, 3, 256, 128, 1_024, 8),
    ModelSize("tiny-1M", 4, 128, 4, 384, 128, 2_048, 16),
    ModelSize("tiny-3M", 6, 192, 6, 512, 256, 4_096, 16),
    ModelSize("tiny-6M", 8, 256, 8, 640, 256, 8_192, 16),
)

LADDER: dict[str, ModelSize] = {s.name: s for s in PAPER_SIZES + TINY_SIZES}


def get_size(name: str) -> ModelSize:
    try:
        return LADDER[name]
    except KeyError:
        raise SlmscaleError(f"--model: unknown model size {name!r}, expected one of {list(LADDER)}") from None


def lm_vocab_size(n_units: int) -> int:
    """K units + EOS + pad."""
    return n_units + 2


def llama_config(name: str, n_units: int, context: int | None = None, attn_implementation: str | None = None):
    """The `LlamaConfig` of ladder size `name` over `n_units` unit ids (EOS = K, pad = K + 1)."""
    from transformers import LlamaConfig

    size = get_size(name)
    cfg = LlamaConfig(
        vocab_size=lm_vocab_size(n_units),
        hidden_size=size.d_model,
        intermediate_size=size.ffn,
        num_hidden_layers=size.n_layers,
        num_attention_heads=size.n_heads,
        num_key_value_heads=size.n_heads,  # plain multi-head attention (paper: 4 d^2 per layer)
        hidden_act="silu",  # SwiGLU
        max_position_embeddings=context or size.context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=n_units,
        pad_token_id=n_units + 1,
        initializer_range=0.02,
    )
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    return cfg


def build_model(name: str, n_units: int, context: int | None = None, attn_implementation: str | None = None):
    """A freshly initialised `LlamaForCausalLM` (initialisation follows the current torch RNG state)."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(name, n_units, context, attn_implementation)
    return LlamaForCausalLM(cfg)


def count_params(name: str, n_units: int) -> int:
    """Exact parameter count from the formula (tied embedding counted once)."""
    s = get_size(name)
    d, f, v = s.d_model, s.ffn, lm_vocab_size(n_units)
    return s.n_layers * (4 * d * d + 3 * d * f + 2 * d) + v * d + d


def count_params_meta(name: str, n_units: int) -> int:
    """Parameter count of the real `LlamaForCausalLM`, built on the meta device (allocates nothing)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(name, n_units))
    return sum(p.numel() for p in model.parameters())  # parameters() yields the tied weight once


def flops_per_token(name: str, n_units: int, seq_len: int | None = None) -> tuple[int, int]:
    """(6 N, 6 N + 12 L d T): training FLOPs per token without and with the attention term (PaLM / nanoGPT).

    T is the sequence length the model is trained at (defaults to the size's context)."""
    s = get_size(name)
    n = count_params(name, n_units)
    t = seq_len or s.context
    return 6 * n, 6 * n + 12 * s.n_layers * s.d_model * t


def ladder_table(n_units: int = 500) -> list[dict]:
    """One row per size: architecture, exact parameter count and FLOPs per token for a K-unit vocabulary."""
    rows = []
    for s in LADDER.values():
        six_n, exact = flops_per_token(s.name, n_units)
        row = asdict(s)
        row.update(
            vocab=lm_vocab_size(n_units),
            n_params=count_params(s.name, n_units),
            flops_per_token_6n=six_n,
            flops_per_token=exact,
            paper=s in PAPER_SIZES,
        )
        rows.append(row)
    return rows
