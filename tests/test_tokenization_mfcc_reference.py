"""The `mfcc` features are HuBERT's iteration-0 features (torchaudio.compliance.kaldi.mfcc + deltas). They are
computed by kaldi-native-fbank; here they are checked against references computed independently of it: a float64
numpy implementation of Kaldi's algorithm written here from Kaldi's definitions (no code shared with
tokenization/mfcc.py or kaldi-native-fbank), and values computed by torchaudio itself
(tests/data/kaldi_mfcc_torchaudio.npz, see tests/data/README.md).

Tolerances: both production implementations (knf, torchaudio) compute in float32. On speech they
agree with each other and with the float64 reference to ~1e-3 (on cepstra of magnitude up to ~150). On a pure
tone most mel bands hold only the window's side lobes, 100+ dB below the tone, where float32 FFT round-off decides
the log energy; there any two float32 implementations differ by up to ~0.03 (knf vs torchaudio: 0.026). Real
mistakes cost far more: a periodic instead of symmetric Povey window moves the cepstra by ~0.9, pre-emphasis
0.96 by ~1.5, a Hann window by ~7 (asserted below for the reference itself).
"""
from __future__ import annotations

from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soxr

from slmscale.errors import SlmscaleError
from slmscale.tokenization.mfcc import MfccConfig, MfccExtractor, compute_deltas, kaldi_mfcc, mfcc_features
from slmscale.tokenization.synth import tts

DATA = Path(__file__).resolve().parent / "data"
SPEECH_ATOL = 2e-3
TONE_ATOL = 0.05
HUBERT = MfccConfig(cmvn=False)  # exactly the recipe's features: no CMVN


def kaldi_reference(wav: np.ndarray, *, sr: int = 16000, num_ceps: int = 13, num_bins: int = 23, low: float = 20.0,
                    lifter: float = 22.0, preemph: float = 0.97, periodic_window: bool = False) -> np.ndarray:
    """Kaldi compute-mfcc-feats (dither 0, use_energy false, snip_edges) + torchaudio compute_deltas twice, float64,
    written from Kaldi's feature-window.cc / mel-computations.cc / feature-mfcc.cc definitions."""
    x = np.asarray(wav, np.float64)
    win, hop = int(sr * 0.025), int(sr * 0.010)
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop: i * hop + win] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    # pre-emphasis within the frame, first sample against itself: x[0] -= c x[0]
    frames = np.concatenate([frames[:, :1] * (1 - preemph), frames[:, 1:] - preemph * frames[:, :-1]], axis=1)
    i = np.arange(win)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * i / (win if periodic_window else win - 1))) ** 0.85  # Povey
    nfft = 1 << (win - 1).bit_length()  # round_to_power_of_two: 400 -> 512
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    mel_low, mel_high = mel(low), mel(sr / 2)  # high_freq 0 = Nyquist
    step = (mel_high - mel_low) / (num_bins + 1)
    bin_mel = mel(np.arange(nfft // 2) * sr / nfft)  # Kaldi's banks cover FFT bins 0 .. nfft/2 - 1
    banks = np.zeros((num_bins, nfft // 2 + 1))
    for b in range(num_bins):
        left, center, right = mel_low + b * step, mel_low + (b + 1) * step, mel_low + (b + 2) * step
        for k, m in enumerate(bin_mel):
            if left < m < right:
                banks[b, k] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    log_mel = np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))
    k, j = np.arange(num_ceps)[:, None], np.arange(num_bins)[None, :]
    dct = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (j + 0.5) * k)  # ComputeDctMatrix
    dct[0] = np.sqrt(1.0 / num_bins)
    ceps = (log_mel @ dct.T) * (1.0 + lifter / 2 * np.sin(np.pi * np.arange(num_ceps) / lifter))

    def deltas(c):  # torchaudio.functional.compute_deltas, win_length 5, replicate padding
        t_max = len(c) - 1
        return np.stack([sum(d * (c[min(t_max, t + d)] - c[max(0, t - d)]) for d in (1, 2)) / 10.0
                         for t in range(len(c))])

    d1 = deltas(ceps)
    return np.concatenate([ceps, d1, deltas(d1)], axis=1)


@pytest.fixture(scope="module")
def speech():
    out = []
    for text, voice in (("Once upon a time a shy fox found a red ball in the garden.", "en"),
                        ("The birds were singing and the sun was warm.", "en-us+f2")):
        wav, sr = tts(text, voice=voice)
        out.append(soxr.resample(wav, sr, 16000).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def tone():
    t = np.arange(8000) / 16000
    return (0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)


def test_every_setting_reaches_kaldi_native_fbank(speech):
    """Non-default settings (knf_options maps each field) equal the reference computed with the same settings."""
    other = MfccConfig(cmvn=False, num_mel_bins=40, num_ceps=20, low_freq=60.0, cepstral_lifter=10.0, preemphasis=0.9)
    wav = speech[0]
    ref = kaldi_reference(wav, num_ceps=20, num_bins=40, low=60.0, lifter=10.0, preemph=0.9)[:, :20]
    ours = kaldi_mfcc(wav, other)
    assert ours.shape == ref.shape == (1 + (len(wav) - other.win_length) // other.hop_length, 20)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=SPEECH_ATOL)
    assert not np.allclose(kaldi_mfcc(wav, HUBERT), ours[:, :13], atol=0.5)


def test_features_equal_an_independent_numpy_kaldi(speech, tone):
    for wav, atol in ((speech[0], SPEECH_ATOL), (speech[1], SPEECH_ATOL), (tone, TONE_ATOL)):
        ref = kaldi_reference(wav)
        feats = mfcc_features(wav, HUBERT)
        assert feats.shape == ref.shape and feats.dtype == np.float32
        np.testing.assert_allclose(feats, ref, rtol=0, atol=atol)
    # the tolerance separates right from subtly wrong: each of these differs from the correct reference by far more
    wav = speech[0]
    ref = kaldi_reference(wav)
    for wrong in (dict(periodic_window=True), dict(preemph=0.96), dict(low=25.0), dict(lifter=21.0)):
        assert np.abs(kaldi_reference(wav, **wrong) - ref).max() > 50 * SPEECH_ATOL, wrong


def test_features_equal_torchaudio_values():
    """Values computed by torchaudio.compliance.kaldi.mfcc + compute_deltas (fairseq's HuBERT recipe) outside this
    repository; inputs stored with them as int16."""
    ref = np.load(DATA / "kaldi_mfcc_torchaudio.npz")
    assert "torchaudio.compliance.kaldi.mfcc" in str(ref["provenance"])
    for name, atol in (("speech", SPEECH_ATOL), ("sine", TONE_ATOL)):
        wav = ref[f"{name}_int16"].astype(np.float32) / 32768.0
        expected = ref[f"{name}_features"]
        feats = mfcc_features(wav, HUBERT)
        assert feats.shape == expected.shape == (1 + (len(wav) - 400) // 160, 39)
        np.testing.assert_allclose(feats, expected, rtol=0, atol=atol)
    # the speech sample ends in 100 ms of digital silence: floored log energies, same in both
    speech = ref["speech_features"]
    assert np.allclose(speech[-5:, 0], speech[-1, 0]) and speech[-1, 0] < speech[:, 0].mean() - 20


def test_deltas_are_torchaudio_compute_deltas_twice_not_kaldi_add_deltas():
    x = np.array([[3.0], [1.0], [4.0], [1.0], [5.0], [9.0], [2.0], [6.0], [5.0], [3.0]], np.float32)
    d1 = compute_deltas(x, 2)
    assert np.allclose(d1[:5, 0], [0.0, -0.3, 0.4, 1.7, 0.4])  # sum_k k (x[t+k] - x[t-k]) / 10, edges repeated
    d2 = compute_deltas(d1, 2)
    kaldi = knf.compute_deltas(knf.DeltaOptions(order=2, window=2), x)  # Kaldi's add-deltas: [x, d, dd]
    assert np.allclose(kaldi[:, 1], d1[:, 0], atol=1e-6)  # first order: the same
    assert np.allclose(kaldi[4:-4, 2], d2[4:-4, 0], atol=1e-6)  # second order: the same away from the edges
    assert not np.allclose(kaldi[:4, 2], d2[:4, 0], atol=1e-3)  # ... but not in the first/last 4 frames
    assert compute_deltas(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_cmvn_is_ours_and_optional(speech):
    wav = speech[0]
    raw, normed = mfcc_features(wav, HUBERT), mfcc_features(wav)
    assert np.allclose(normed, (raw - raw.mean(0)) / raw.std(0), atol=1e-4)
    louder = mfcc_features(3 * wav, HUBERT)
    # a gain only moves C0 (by sqrt(23) * 2 ln 3 where no band sits on the floor); CMVN removes it
    assert np.median(louder[:, 0] - raw[:, 0]) == pytest.approx(np.sqrt(23) * 2 * np.log(3), rel=0.01)
    assert np.abs(louder[:, 1:13] - raw[:, 1:13]).mean() < 0.05 * np.abs(raw[:, 1:13]).mean()
    assert MfccExtractor().describe()["config"]["cmvn"] is True and HUBERT.to_dict()["cmvn"] is False


def test_config_errors_name_the_field():
    for kwargs, field in ((dict(num_ceps=30), "num_ceps"), (dict(dither=1.0), "dither"),
                          (dict(window_type="kaiser"), "window_type"), (dict(colour=1), "colour"),
                          (dict(sample_rate=0), "sample_rate"), (dict(high_freq=9000.0), "high_freq"),
                          (dict(snip_edges=False), "snip_edges"), (dict(num_mel_bins="many"), "num_mel_bins")):
        with pytest.raises(SlmscaleError, match=rf"mfcc config: .*'{field}") as err:
            MfccConfig(**kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(SlmscaleError, match="mfcc config: kaldi-native-fbank refused .*num_mel_bins"):
        MfccExtractor(MfccConfig(num_mel_bins=200))  # more bands than 512-point FFT bins can fill
    with pytest.raises(SlmscaleError, match="mono 1-D waveform"):
        mfcc_features(np.zeros((2, 800), np.float32))
