"""MFCC features, the shipped mfcc codebook, k-means fit/save/load/import, dedup — no Ray."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soxr

from slmscale.errors import SlmscaleError
from slmscale.tokenization.dedup import collapse_runs, expand_runs
from slmscale.tokenization.kmeans import Codebook, fit_kmeans, import_joblib, load_codebook
from slmscale.tokenization.mfcc import MfccConfig, mfcc_features
from slmscale.tokenization.synth import tts
from slmscale.tokenization.tokenizer import MFCC_CODEBOOK, load_tokenizer


@pytest.fixture(scope="module")
def speech():
    """Two different sentences, 16 kHz."""
    out = []
    for text, voice in (("The little cat went to the park and found a red ball.", "en"),
                        ("Anna was a happy bird who loved to sing in the garden.", "en-us+m3")):
        wav, sr = tts(text, voice=voice)
        out.append(soxr.resample(wav, sr, 16000).astype(np.float32))
    return out


def test_mfcc_shape_rate_and_determinism(speech):
    wav = speech[0]
    feats = mfcc_features(wav)
    assert feats.shape == (1 + (len(wav) - 400) // 160, 39) and feats.dtype == np.float32
    assert MfccConfig().frame_rate_hz == 100.0
    assert np.array_equal(feats, mfcc_features(wav.copy()))
    # CMVN: every dimension is zero-mean, unit-variance over the utterance
    assert np.allclose(feats.mean(0), 0, atol=1e-4) and np.allclose(feats.std(0), 1, atol=1e-3)
    assert mfcc_features(wav[:399]).shape == (0, 39)
    assert mfcc_features(wav[:400]).shape == (1, 39)


def test_shipped_mfcc_tokenizer_is_stable_and_informative(speech):
    tok = load_tokenizer("mfcc")
    assert tok.vocab_size == 100 and tok.frame_rate_hz == 100.0
    a, b = speech
    units_a = tok.frame_units([a])[0]
    assert units_a.dtype == np.uint16 and units_a.max() < 100
    assert np.array_equal(units_a, tok.frame_units([a.copy()])[0])  # same audio, same units
    quieter = tok.frame_units([0.3 * a])[0]
    assert (quieter == units_a).mean() > 0.95  # loudness does not change the units (CMVN)
    units_b = tok.frame_units([b])[0]
    n = min(len(units_a), len(units_b))
    assert (units_a[:n] == units_b[:n]).mean() < 0.3  # different speech, different units
    assert len(np.unique(np.concatenate([units_a, units_b]))) >= 40  # the codebook is used broadly
    dedup, durations = collapse_runs(units_a)
    assert 1.2 < durations.mean() < 4.0  # ~30-80 units/s, like HuBERT-style units after dedup


def test_tokenizer_hash_is_stable_and_content_derived(tmp_path):
    tok = load_tokenizer("mfcc")
    meta = json.loads(MFCC_CODEBOOK.with_suffix(".json").read_text())
    assert tok.codebook.hash == meta["hash"]  # the shipped file is what it says it is
    assert tok.hash == load_tokenizer("mfcc").hash
    code = "from slmscale.tokenization.tokenizer import load_tokenizer; print(load_tokenizer('mfcc').hash)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == tok.hash
    moved = Codebook(tok.codebook.centroids.copy(), features=tok.codebook.features)
    moved.centroids[3, 0] += 1e-3
    moved.save(tmp_path / "moved")
    assert load_tokenizer("mfcc", kmeans=tmp_path / "moved").hash != tok.hash
    other_cfg = dict(tok.codebook.features, config={**tok.codebook.features["config"], "num_mel_bins": 40})
    assert Codebook(tok.codebook.centroids, features=other_cfg).hash != tok.codebook.hash


def test_kmeans_fit_save_load_assign(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20]], float)  # well separated
    x = np.concatenate([c + rng.normal(size=(200, 3)) for c in centers]).astype(np.float32)
    cb = fit_kmeans(x, 4, {"kind": "test"}, seed=0)
    labels = cb.assign(x)
    for i in range(4):  # each true cluster maps to one unit
        assert len(np.unique(labels[i * 200:(i + 1) * 200])) == 1
    assert len(np.unique(labels)) == 4
    path = cb.save(tmp_path / "km")
    assert path.name == "km.npy" and (tmp_path / "km.json").is_file()
    back = load_codebook(tmp_path / "km")
    assert back.hash == cb.hash and np.array_equal(back.assign(x), labels)
    assert fit_kmeans(x, 4, {"kind": "test"}, seed=0).hash == cb.hash  # seeded: same fit
    with pytest.raises(SlmscaleError, match="fewer than k"):
        fit_kmeans(x[:3], 4, {})
    with pytest.raises(SlmscaleError, match=r"expected \[T, 3\]"):
        cb.assign(np.zeros((5, 7), np.float32))
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SlmscaleError, match="not a plain numpy array"):
        load_codebook(tmp_path / "bad")
    np.save(tmp_path / "nometa.npy", centers)
    with pytest.raises(SlmscaleError, match="missing its metadata"):
        load_codebook(tmp_path / "nometa.npy")


def test_import_kmeans_needs_trust_pickle(tmp_path):
    import joblib
    from sklearn.cluster import KMeans

    x = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)
    km = KMeans(n_clusters=6, n_init=1, random_state=0).fit(x)
    src = tmp_path / "km.bin"
    joblib.dump(km, src)
    with pytest.raises(SlmscaleError, match="--trust-pickle"):
        import_joblib(src, tmp_path / "out", {"kind": "hubert", "layer": 11})
    assert not (tmp_path / "out.npy").exists()
    import_joblib(src, tmp_path / "out", {"kind": "hubert", "layer": 11}, trust_pickle=True)
    cb = load_codebook(tmp_path / "out")
    assert np.allclose(cb.centroids, km.cluster_centers_)
    assert np.array_equal(cb.assign(x), km.predict(x))
    assert cb.features == {"kind": "hubert", "layer": 11}


def test_collapse_runs_round_trip():
    units, durs = collapse_runs(np.array([5, 5, 5, 7, 7, 5, 9], np.uint16))
    assert units.tolist() == [5, 7, 5, 9] and durs.tolist() == [3, 2, 1, 1]
    assert collapse_runs(np.zeros(0, np.uint16))[0].size == 0
    long_run = np.full(70000 * 2 + 3, 4, np.uint16)
    u, d = collapse_runs(np.concatenate([long_run, [1]]))
    assert u.tolist() == [4, 4, 4, 1] and d.tolist() == [65535, 65535, 140003 - 2 * 65535, 1]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 1000).astype(np.uint16)
    assert np.array_equal(expand_runs(*collapse_runs(x)), x)
