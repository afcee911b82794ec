"""Scoring: batched/padded/masked NLLs equal unpadded one-by-one NLLs; ties and accuracies follow the convention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slmscale.errors import SlmscaleError
from slmscale.models.evaluation.benchmarks import Benchmark, Candidate
from slmscale.models.evaluation.metrics import benchmark_metrics, decisions
from slmscale.models.evaluation.scoring import ScoreConfig, sequence_nll

K = 10  # units; EOS = 10, pad = 11


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=K + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, eos_token_id=K, pad_token_id=K + 1, bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def test_batched_padded_scores_equal_unpadded_reference():
    model = tiny_llama()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, K, size=n).tolist() for n in (1, 3, 17, 5, 9, 30, 2, 12)]
    # reference: one sequence at a time, no padding, computed by hand from the logits
    ref_sum = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([[K] + s[:-1]])
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
            ref_sum.append(-logp[torch.arange(len(s)), torch.tensor(s)].sum().item())
    ref_sum = np.array(ref_sum)
    lengths = np.array([len(s) for s in seqs])
    for bs in (1, 3, 8):
        cfg = ScoreConfig(score="sum", batch_size=bs, progress=False)
        np.testing.assert_allclose(sequence_nll(model, seqs, eos_id=K, pad_id=K + 1, config=cfg), ref_sum, rtol=1e-4, atol=1e-4)
    mean = sequence_nll(model, seqs, eos_id=K, pad_id=K + 1, config=ScoreConfig(batch_size=4, progress=False))
    np.testing.assert_allclose(mean, ref_sum / lengths, rtol=1e-4, atol=1e-5)


def test_scoring_rejects_bad_input():
    model = tiny_llama()
    with pytest.raises(SlmscaleError, match="outside the model vocabulary"):
        sequence_nll(model, [[1, 2, K + 5]], eos_id=K, pad_id=K + 1, config=ScoreConfig(progress=False))
    with pytest.raises(SlmscaleError, match="empty utterance"):
        sequence_nll(model, [[1], []], eos_id=K, pad_id=K + 1, config=ScoreConfig(progress=False))
    with pytest.raises(SlmscaleError, match="score: expected one of"):
        ScoreConfig(score="median").validate()


def test_ties_count_half():
    assert decisions(np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 3.0])).tolist() == [1.0, 0.0, 0.5]
    # identical candidates (same units) under any model: every question is a tie -> accuracy exactly 0.5
    model = tiny_llama()
    cands = [Candidate(f"q{i}_{lab}", None, f"q{i}", lab == "correct") for i in range(6) for lab in ("correct", "incorrect")]
    units = [[(3 * i) % K, 1, 2] for i in range(6) for _ in (0, 1)]
    nll = sequence_nll(model, units, eos_id=K, pad_id=K + 1, config=ScoreConfig(batch_size=5, progress=False))
    metrics, details = benchmark_metrics(Benchmark("ssc", "t", None, tuple(cands)), nll)
    assert metrics == {"ssc": 0.5} and details["ties"] == 6


def test_sblimp_macro_pair_and_voice_pair_accuracy():
    # phenomenon A: pair 1 right for both voices, pair 2 right for one voice of two -> pairs 1.0, 0.5
    # phenomenon B: pair 3 wrong (one voice) -> 0.0
    rows = [  # question, voice, phenomenon, nll_correct, nll_incorrect
        ("1", "v1", "A", 1.0, 2.0), ("1", "v2", "A", 1.0, 2.0),
        ("2", "v1", "A", 1.0, 2.0), ("2", "v2", "A", 3.0, 2.0),
        ("3", "v1", "B", 5.0, 2.0),
    ]
    cands, nll = [], []
    for q, v, p, c, i in rows:
        cands += [Candidate(f"{q}{v}+", None, q, True, v, p, "s"), Candidate(f"{q}{v}-", None, q, False, v, p, "s")]
        nll += [c, i]
    metrics, details = benchmark_metrics(Benchmark("sblimp", "t", None, tuple(cands)), np.array(nll))
    assert metrics["sblimp_pair"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert metrics["sblimp_macro"] == pytest.approx(((1.0 + 0.5) / 2 + 0.0) / 2)
    assert details["voice_pair_accuracy"] == pytest.approx(3 / 5)
    assert details["by_phenomenon"] == {"A": {"accuracy": 0.75, "n_pairs": 2}, "B": {"accuracy": 0.0, "n_pairs": 1}}
    assert details["by_voice"] == {"v1": pytest.approx(2 / 3), "v2": 0.5}
