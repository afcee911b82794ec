"""HuBERT extractor: a random-initialised tiny HubertModel saved to a temp dir and loaded through the same
`from_pretrained` path as a real checkpoint; k-means fitted on its features; encode with it on Ray."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from slmscale.errors import SlmscaleError
from slmscale.tokenization.dedup import collapse_runs
from slmscale.tokenization.encode import encode
from slmscale.tokenization.fit import fit_codebook
from slmscale.tokenization.hubert import HubertExtractor
from slmscale.tokenization.kmeans import load_codebook
from slmscale.tokenization.schema import read_units_table
from slmscale.tokenization.synth import synthesize, tts
from slmscale.tokenization.tokenizer import load_tokenizer


def _save_tiny_hubert(path, extra_stride: bool = False):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    n_conv = 8 if extra_stride else 7
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * n_conv, conv_stride=(5,) + (2,) * (n_conv - 1),
                       conv_kernel=(10, 3, 3, 3, 3, 2, 2) + ((2,) if extra_stride else ()),
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    model = HubertModel(cfg).eval()
    model.save_pretrained(path)  # safetensors, like a downloaded checkpoint
    return model


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    path = tmp_path_factory.mktemp("hubert50")
    return path, _save_tiny_hubert(path)


@pytest.fixture(scope="module")
def wav():
    w, sr = tts("A brave little duck went to the lake.", voice="en+f3")
    return soxr.resample(w, sr, 16000).astype(np.float32)


def test_layer_features_match_the_full_model(tiny_hubert, wav):
    path, model = tiny_hubert
    for layer in (0, 2, 3):
        ex = HubertExtractor(path, layer=layer, device="cpu")
        feats = ex(wav)
        with torch.no_grad():
            ref = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states[layer][0].numpy()
        assert feats.shape == ref.shape == ((len(wav) - 400) // 320 + 1, 32)  # conv receptive field 400, hop 320
        np.testing.assert_allclose(feats, ref, atol=1e-5)
    ex = HubertExtractor(path, layer=2, device="cpu")
    assert len(ex.model.encoder.layers) == 2  # layers above L are not run
    assert ex.frame_rate_hz == 50.0 and ex.dtype == torch.float32 and ex._forward is ex.model
    assert ex.max_batch_samples() == 16000 * 240  # 4 minutes of audio per forward on CPU
    assert ex.model.config._attn_implementation == "sdpa"
    # equal lengths are batched in one forward; the result is the same as one by one
    batch = ex.batch([wav, wav[:8000], wav])
    np.testing.assert_allclose(batch[0], ex(wav), atol=1e-5)
    np.testing.assert_allclose(batch[1], ex(wav[:8000]), atol=1e-5)


def test_25hz_variant_differs_only_in_config(tmp_path, wav):
    _save_tiny_hubert(tmp_path, extra_stride=True)
    ex = HubertExtractor(tmp_path, layer=1, device="cpu")
    assert ex.frame_rate_hz == 25.0
    assert ex(wav).shape[0] == (len(wav) - 720) // 640 + 1  # one more stride-2 conv: hop 640


def test_normalising_checkpoints_are_gain_invariant(tiny_hubert, tmp_path, wav):
    path, _ = tiny_hubert
    copy = tmp_path / "norm"
    shutil.copytree(path, copy)
    (copy / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    ex = HubertExtractor(copy, layer=2, device="cpu")
    assert ex.normalize
    np.testing.assert_allclose(ex(0.25 * wav), ex(wav), atol=1e-3)
    assert ex.describe()["weights_sha256"] == HubertExtractor(path, layer=2, device="cpu").describe()["weights_sha256"]


def test_bad_checkpoints_are_named(tiny_hubert, tmp_path):
    path, _ = tiny_hubert
    with pytest.raises(SlmscaleError, match="--layer 7"):
        HubertExtractor(path, layer=7)
    with pytest.raises(SlmscaleError, match="not a directory"):
        HubertExtractor(tmp_path / "missing")
    (tmp_path / "noweights").mkdir()
    shutil.copy(path / "config.json", tmp_path / "noweights" / "config.json")
    with pytest.raises(SlmscaleError, match="no weight file"):
        HubertExtractor(tmp_path / "noweights")
    with pytest.raises(SlmscaleError, match="--kmeans"):
        load_tokenizer(f"hubert:{path}", layer=2)


@pytest.mark.ray
def test_fit_kmeans_and_encode_with_hubert_on_ray(ray_local, tiny_hubert, tmp_path):
    path, _ = tiny_hubert
    audio = tmp_path / "audio"
    manifest = synthesize([(f"u{i}", t) for i, t in enumerate(
        ["Tom saw a big red kite.", "The frog jumped into the lake.", "Mia and Ben ate a cookie.",
         "It was the best day ever."])], audio, progress=False)
    km = fit_codebook(manifest, f"hubert:{path}", 12, tmp_path / "km12", layer=2, progress=False)
    cb = load_codebook(km)
    assert cb.k == 12 and cb.dim == 32
    assert cb.features["kind"] == "hubert" and cb.features["layer"] == 2 and cb.features["frame_rate_hz"] == 50.0
    with pytest.raises(SlmscaleError, match="layer=2"):  # a codebook fitted on layer 2 is refused for layer 3
        load_tokenizer(f"hubert:{path}", layer=3, kmeans=km)

    meta = encode(manifest, f"hubert:{path}", tmp_path / "units", layer=2, kmeans=km, rows_per_shard=2,
                  actors=1, gpus_per_actor=0, progress=False)
    tok = load_tokenizer(f"hubert:{path}", layer=2, kmeans=km, device="cpu")
    assert meta.tokenizer["kind"] == "hubert" and meta.tokenizer["layer"] == 2
    assert meta.tokenizer["hash"] == tok.hash and meta.vocab_size == 12 and meta.tokenizer["frame_rate_hz"] == 50.0
    rows = read_units_table(tmp_path / "units").to_pylist()
    assert sorted(r["utt_id"] for r in rows) == ["u0", "u1", "u2", "u3"]
    for r in rows:
        w, _ = sf.read(audio / f"{r['utt_id']}.wav", dtype="float32")
        assert r["units"] == collapse_runs(tok.frame_units([w])[0])[0].tolist()
        assert r["n_frames"] == (len(w) - 400) // 320 + 1 and max(r["units"]) < 12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_is_chosen_automatically_and_agrees_with_cpu(tiny_hubert, wav, tmp_path):
    path, _ = tiny_hubert
    gpu = HubertExtractor(path, layer=2)  # no device given: CUDA, half precision, SDPA, eager
    assert gpu.device == "cuda" and gpu.dtype in (torch.bfloat16, torch.float16) and gpu._forward is gpu.model
    assert 16000 * 240 <= gpu.max_batch_samples() <= 16000 * 960
    cpu = HubertExtractor(path, layer=2, device="cpu")
    a, b = gpu(wav), cpu(wav)
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # half precision: close, not identical
    compiled = HubertExtractor(path, layer=2, compile=True)  # opt-in
    assert compiled._forward is not compiled.model
    assert np.corrcoef(compiled(wav).ravel(), a.ravel())[0, 1] > 0.99
    from slmscale.tokenization.kmeans import fit_kmeans

    fit_kmeans(b, 8, cpu.describe(), seed=0).save(tmp_path / "km8")
    units_gpu = load_tokenizer(f"hubert:{path}", layer=2, kmeans=tmp_path / "km8").frame_units([wav])[0]
    units_cpu = load_tokenizer(f"hubert:{path}", layer=2, kmeans=tmp_path / "km8", device="cpu").frame_units([wav])[0]
    assert (units_gpu == units_cpu).mean() > 0.9
