"""MFCC + deltas + delta-deltas: the HuBERT "iteration-0" clustering target, in numpy/scipy.

16 kHz input, 25 ms Hamming windows every 10 ms (100 Hz frames), 512-point FFT, 40 mel filters over
20 Hz - 8 kHz, log energies, DCT-II to 13 cepstra with liftering 22, then first and second time derivatives
(regression over +-2 frames) -> 39 dims per frame. Each utterance is mean- and variance-normalised per
dimension (CMVN), which removes channel gain so that the same speech gives the same units at any loudness.
Everything is float64 arithmetic with fixed parameters, so the same waveform always gives the same features.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy.fft import dct, rfft

from slmscale.errors import SlmscaleError

__all__ = ["MfccConfig", "MfccExtractor", "mfcc_features"]


@dataclass(frozen=True)
class MfccConfig:
    sample_rate: int = 16000
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms -> 100 Hz
    n_fft: int = 512
    n_mels: int = 40
    n_mfcc: int = 13
    f_min: float = 20.0
    f_max: float = 8000.0
    preemphasis: float = 0.97
    lifter: int = 22
    delta_window: int = 2
    cmvn: bool = True

    def validate(self) -> MfccConfig:
        if self.win_length > self.n_fft:
            raise SlmscaleError(f"mfcc config: field 'win_length' ({self.win_length}) must be <= n_fft ({self.n_fft})")
        if not 0 < self.f_min < self.f_max <= self.sample_rate / 2:
            raise SlmscaleError(f"mfcc config: fields 'f_min'/'f_max' must satisfy 0 < f_min < f_max <= sr/2, got {self.f_min}, {self.f_max}")
        if self.n_mfcc > self.n_mels:
            raise SlmscaleError(f"mfcc config: field 'n_mfcc' ({self.n_mfcc}) must be <= n_mels ({self.n_mels})")
        return self

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def dim(self) -> int:
        return 3 * self.n_mfcc

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (center - lower)
    falling = (upper - bins[None, :]) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling))


def _deltas(x: np.ndarray, window: int) -> np.ndarray:
    """Regression deltas over +-window frames with edge replication (HTK formula)."""
    if len(x) == 0:
        return x.copy()
    padded = np.pad(x, ((window, window), (0, 0)), mode="edge")
    n = len(x)
    num = sum(k * (padded[window + k: window + k + n] - padded[window - k: window - k + n]) for k in range(1, window + 1))
    return num / (2.0 * sum(k * k for k in range(1, window + 1)))


def mfcc_features(wav: np.ndarray, cfg: MfccConfig = MfccConfig()) -> np.ndarray:
    """[n_frames, 3 * n_mfcc] float32 features of a mono waveform at cfg.sample_rate.

    n_frames = 1 + (len(wav) - win_length) // hop_length (frames lie wholly inside the signal); a waveform
    shorter than one window gives zero frames.
    """
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim != 1:
        raise SlmscaleError(f"mfcc: expected a mono 1-D waveform, got shape {wav.shape}")
    if len(wav) < cfg.win_length:
        return np.zeros((0, cfg.dim), np.float32)
    emphasised = np.append(wav[0], wav[1:] - cfg.preemphasis * wav[:-1])
    n_frames = 1 + (len(emphasised) - cfg.win_length) // cfg.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, cfg.win_length)[:: cfg.hop_length][:n_frames]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove DC per frame
    spectrum = np.abs(rfft(frames * np.hamming(cfg.win_length), n=cfg.n_fft, axis=1)) ** 2
    mel = spectrum @ _mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max).T
    log_mel = np.log(np.maximum(mel, 1e-10))
    ceps = dct(log_mel, type=2, norm="ortho", axis=1)[:, : cfg.n_mfcc]
    if cfg.lifter > 0:
        ceps = ceps * (1.0 + (cfg.lifter / 2.0) * np.sin(np.pi * np.arange(cfg.n_mfcc) / cfg.lifter))
    d1 = _deltas(ceps, cfg.delta_window)
    feats = np.concatenate([ceps, d1, _deltas(d1, cfg.delta_window)], axis=1)
    if cfg.cmvn:
        feats = (feats - feats.mean(axis=0)) / np.maximum(feats.std(axis=0), 1e-5)
    return feats.astype(np.float32)


class MfccExtractor:
    """The `mfcc` feature extractor: no weights, 100 Hz frames, 39 dims."""

    kind = "mfcc"

    def __init__(self, cfg: MfccConfig = MfccConfig()):
        self.cfg = cfg.validate()
        self.frame_rate_hz = cfg.frame_rate_hz
        self.dim = cfg.dim
        self.layer = None
        self.device = "cpu"

    def describe(self) -> dict:
        """What identifies these features (goes into the tokenizer hash)."""
        return {"kind": self.kind, "config": self.cfg.to_dict()}

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return mfcc_features(wav, self.cfg)

    def batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        return [self(w) for w in wavs]
