"""The ladder: exact Table-1 parameter counts (meta device, nothing allocated), architecture, HF round trip."""
from __future__ import annotations

import pytest
import torch

from slmscale.errors import SlmscaleError
from slmscale.models.ladder import (
    LADDER,
    PAPER_SIZES,
    build_model,
    count_params,
    count_params_meta,
    flops_per_token,
    get_size,
    ladder_table,
    llama_config,
)

# Paper Table 1 (vocabulary 502 = 500 units + EOS + pad); 20M is given to the unit in the paper.
PAPER_COUNTS = {"20M": 20_710_912, "85M": 85.34e6, "155M": 154.68e6, "309M": 308.85e6, "823M": 823.18e6}


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_paper_parameter_counts_on_meta_device(name):
    n_meta = count_params_meta(name, 500)  # the real LlamaForCausalLM, built on the meta device
    assert n_meta == count_params(name, 500)
    if name == "20M":
        assert n_meta == 20_710_912
    else:
        assert round(n_meta / 1e4) == round(PAPER_COUNTS[name] / 1e4)  # the paper prints 2 decimals of millions


def test_table1_architecture():
    expected = {"20M": (6, 512, 8, 1536), "85M": (12, 768, 12, 2048), "155M": (12, 1024, 16, 2816),
                "309M": (24, 1024, 16, 2816), "823M": (16, 2048, 32, 5632)}
    assert [s.name for s in PAPER_SIZES] == list(expected)
    for s in PAPER_SIZES:
        assert (s.n_layers, s.d_model, s.n_heads, s.ffn) == expected[s.name]
        assert s.context == 2050 and s.tokens_per_update % s.context == 0
    assert get_size("20M").tokens_per_update == 131_200 and get_size("823M").tokens_per_update == 934_800


def test_llama_config_is_the_papers_architecture():
    cfg = llama_config("20M", 500)
    assert cfg.vocab_size == 502 and cfg.eos_token_id == 500 and cfg.pad_token_id == 501
    assert cfg.max_position_embeddings == 2050 and cfg.tie_word_embeddings
    assert cfg.hidden_act == "silu" and not cfg.attention_bias and not cfg.mlp_bias
    assert cfg.num_key_value_heads == cfg.num_attention_heads
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    assert theta == 10000.0


def test_tiny_model_round_trips_through_from_pretrained(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = build_model("tiny-100K", 50, attn_implementation="sdpa")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert not any("bias" in n for n, _ in model.named_parameters())
    model.save_pretrained(tmp_path / "m")
    again = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 52, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, again(x).logits, rtol=0, atol=1e-6)
    assert sum(p.numel() for p in again.parameters()) == count_params("tiny-100K", 50)


def test_flops_per_token_and_table():
    six_n, exact = flops_per_token("20M", 500)
    assert six_n == 6 * 20_710_912
    assert exact - six_n == 12 * 6 * 512 * 2050  # attention term 12 L d T
    rows = {r["name"]: r for r in ladder_table(500)}
    assert set(rows) == set(LADDER) and rows["20M"]["n_params"] == 20_710_912 and rows["20M"]["paper"]
    assert not rows["tiny-1M"]["paper"]


def test_unknown_size_is_a_clear_error():
    with pytest.raises(SlmscaleError, match="unknown model size '7B'"):
        get_size("7B")
