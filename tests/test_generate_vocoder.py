"""Unit vocoders without a language model: CodeHiFiGAN loading and conversion (weight norm folded exactly, no
unpickling without consent, duration predictor), the exemplar vocoder's resynthesis edit rate, Levenshtein."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slmscale.cli import main
from slmscale.errors import SlmscaleError
from slmscale.models.generation.codehifigan import CodeHiFiGAN, convert_checkpoint, load_codehifigan, weights_sha256
from slmscale.models.generation.resynthesis import dedup_units, levenshtein

CFG = {"upsample_rates": [5, 4, 4, 2], "upsample_kernel_sizes": [11, 8, 8, 4], "upsample_initial_channel": 32,
       "resblock": "1", "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
       "num_embeddings": 20, "embedding_dim": 16, "model_in_dim": 16, "sampling_rate": 16000}


def _weight_normed(cfg: dict, legacy: bool) -> torch.nn.Module:
    """The module as the original repositories train it: every conv under torch's weight norm (the legacy
    `weight_g` / `weight_v` names, or the parametrization API's `original0` / `original1`), non-trivial gains."""
    import warnings

    torch.manual_seed(1)
    module = CodeHiFiGAN(cfg)
    for m in list(module.modules()):
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                (torch.nn.utils.weight_norm if legacy else torch.nn.utils.parametrizations.weight_norm)(m)
            gain = m.weight_g if legacy else m.parametrizations.weight.original0
            with torch.no_grad():
                gain.mul_(torch.rand_like(gain) + 0.5)
    return module.eval()


@pytest.mark.parametrize("legacy", [True, False], ids=["weight_g", "parametrizations"])
def test_torch_checkpoint_converts_and_reproduces_the_weight_normed_generator(tmp_path, capsys, legacy):
    ref = _weight_normed(CFG, legacy)
    state = ref.state_dict()
    assert any(k.endswith("weight_g" if legacy else "original0") for k in state)  # what the loader must fold
    ckpt, cfg_file = tmp_path / "g_00500000", tmp_path / "config.json"
    torch.save({"generator": state}, ckpt)
    cfg_file.write_text(json.dumps(CFG))
    assert main(["generate", "convert-vocoder", str(ckpt), "--config", str(cfg_file), "-o", str(tmp_path / "voc")]) == 0
    out = tmp_path / "voc"
    assert f"sha256 {weights_sha256(out)}" in capsys.readouterr().out
    voc = load_codehifigan(out, sha256=weights_sha256(out))
    units = torch.tensor([3, 3, 7, 19, 0, 5])
    frames = torch.ones(6, dtype=torch.long)
    with torch.no_grad():
        want = ref(units, frames).numpy()
    got = voc.synthesize(units.numpy(), frames.numpy())
    assert got.shape == (6 * 160,) and want.shape == (6 * 160,)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pickled_objects_need_trust_pickle(tmp_path):
    state = CodeHiFiGAN(CFG).state_dict()
    ckpt, cfg_file = tmp_path / "g_00100000", tmp_path / "config.json"
    torch.save({"generator": state, "args": argparse.Namespace(lr=1.0)}, ckpt)  # what trainers often store beside
    cfg_file.write_text(json.dumps(CFG))
    with pytest.raises(SlmscaleError, match="--trust-pickle"):
        convert_checkpoint(ckpt, cfg_file, tmp_path / "voc")
    assert not (tmp_path / "voc").exists()
    out, sha = convert_checkpoint(ckpt, cfg_file, tmp_path / "voc", trust_pickle=True)
    assert sha == weights_sha256(out) and (out / "generator.safetensors").is_file()


def test_bad_checkpoints_are_refused(tmp_path):
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(CFG))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SlmscaleError, match="junk.pt: not a readable torch checkpoint|junk.pt: holds objects"):
        convert_checkpoint(tmp_path / "junk.pt", cfg_file, tmp_path / "voc")
    torch.save({"generator": CodeHiFiGAN({**CFG, "num_embeddings": 30}).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(SlmscaleError, match=r"weights do not match config.json: shapes \['dict.weight \(30, 16\)"):
        convert_checkpoint(tmp_path / "other.pt", cfg_file, tmp_path / "voc")
    bad = dict(CFG, f0=True)
    cfg_file.write_text(json.dumps(bad))
    with pytest.raises(SlmscaleError, match="'f0' is true"):
        convert_checkpoint(tmp_path / "other.pt", cfg_file, tmp_path / "voc")
    legacy_only = tmp_path / "legacy"
    legacy_only.mkdir()
    (legacy_only / "config.json").write_text(json.dumps(CFG))
    torch.save({"generator": CodeHiFiGAN(CFG).state_dict()}, legacy_only / "g_00500000")
    with pytest.raises(SlmscaleError, match="convert it once with `slmscale generate convert-vocoder"):
        load_codehifigan(legacy_only)


def test_duration_predictor_expands_deduplicated_units(tmp_path):
    from safetensors.torch import save_file

    cfg = {**CFG, "dur_predictor_params": {"encoder_embed_dim": 16, "var_pred_hidden_dim": 16,
                                           "var_pred_kernel_size": 3, "var_pred_dropout": 0.5}}
    module = CodeHiFiGAN(cfg)
    with torch.no_grad():
        module.dur_predictor.proj.weight.zero_()
        module.dur_predictor.proj.bias.fill_(float(np.log(1 + 3)))  # every unit: exp(log d) - 1 = 3 frames
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(module.state_dict(), str(tmp_path / "generator.safetensors"))
    voc = load_codehifigan(tmp_path)
    units = np.array([4, 9, 2, 11])
    assert voc.frames_per_unit(units, dedup=True).tolist() == [3, 3, 3, 3]
    assert voc.frames_per_unit(units, dedup=False).tolist() == [1, 1, 1, 1]  # frame units: one frame each
    assert len(voc.synthesize(units, voc.frames_per_unit(units, dedup=True))) == 12 * 160


def test_levenshtein_known_answers():
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0
    assert levenshtein([], [4, 5]) == 2
    assert levenshtein(list(b"kitten"), list(b"sitting")) == 3
    assert levenshtein([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # one deletion, one insertion
    rng = np.random.default_rng(0)
    for _ in range(20):  # against the textbook O(nm) recursion
        a, b = rng.integers(0, 4, rng.integers(0, 9)), rng.integers(0, 4, rng.integers(0, 9))
        d = np.arange(len(b) + 1)
        for i, x in enumerate(a, 1):
            prev, d = d, np.empty_like(d)
            d[0] = i
            for j, y in enumerate(b, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
        assert levenshtein(a, b) == d[-1]
    assert dedup_units([5, 5, 7, 7, 5]).tolist() == [5, 7, 5]


def test_exemplar_vocoder_resynthesis_keeps_most_units(tmp_path):
    """Fitted on 8 spoken stories, measured on 2 others: the re-tokenized resynthesis keeps most units, while
    noise of the same length keeps almost none (the measure can fail)."""
    import soxr

    from slmscale.models.generation.exemplar import build_exemplar_vocoder, load_exemplar_vocoder
    from slmscale.models.generation.resynthesis import unit_edit_rate
    from slmscale.tokenization.stories import generate_stories
    from slmscale.tokenization.synth import DEFAULT_VOICES, tts
    from slmscale.tokenization.tokenizer import load_tokenizer

    wavs = []
    for i, text in enumerate(generate_stories(10, seed=21)):
        wav, sr = tts(text, voice=DEFAULT_VOICES[i % len(DEFAULT_VOICES)])
        wavs.append(soxr.resample(wav, sr, 16000).astype(np.float32))
    tok = load_tokenizer("mfcc")
    voc = build_exemplar_vocoder(tok, wavs[:8], held_out=wavs[8:])
    rate = voc.info["unit_edit_rate"]
    assert rate["raw"] < 0.45 and rate["dedup"] < 0.55, rate

    class Noise:
        def synthesize(self, units, frames):
            return np.random.default_rng(0).normal(0, 0.1, int(frames.sum()) * 160).astype(np.float32)

    noise = unit_edit_rate(Noise(), tok, wavs[8:])
    assert noise["raw"] > 0.8 and noise["raw"] > 2 * rate["raw"], noise
    loaded = load_exemplar_vocoder(voc.save(tmp_path / "exemplar"))
    units = np.array([1, 50, 99])
    assert np.array_equal(loaded.synthesize(units, np.array([2, 1, 3])), voc.synthesize(units, np.array([2, 1, 3])))
    assert loaded.describe()["unit_edit_rate"] == rate and Path(loaded.describe()["path"]).is_dir()
