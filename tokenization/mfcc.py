"""Kaldi MFCC + deltas + delta-deltas, configured like the features of HuBERT's first k-means iteration.

What fairseq's HuBERT recipe clusters in its first iteration (`examples/hubert/simple_kmeans/dump_mfcc_feature.py`):

    mfcc = torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000, use_energy=False)   # [T, 13]
    deltas = torchaudio.functional.compute_deltas(mfcc.T); ddeltas = compute_deltas(deltas)         # win_length 5
    features = cat([mfcc, deltas, ddeltas]) -> [T, 39]

with the waveform as soundfile reads it (float in [-1, 1]) and torchaudio's defaults: dither 0, 25 ms frames every
10 ms (snip_edges: only frames wholly inside the signal), per-frame DC removal, pre-emphasis 0.97, Povey window
(Hann ** 0.85), zero-padded to a 512-point FFT, power spectrum, 23 Kaldi mel bins (mel = 1127 ln(1 + f/700),
triangles in mel between 20 Hz and Nyquist), log with a floor at float32 epsilon, orthonormal DCT-II to 13 cepstra
(C0 kept, no energy), cepstral lifter 22. Deltas regress over +-2 frames, repeating the edge frames, and the
delta-deltas are the deltas of the deltas (torchaudio's `compute_deltas` applied twice, not Kaldi's `add-deltas`,
whose second-order window differs in the first and last four frames).

The static cepstra are computed by kaldi-native-fbank (the maintained C++ port of Kaldi's feature code, which
matches torchaudio.compliance.kaldi): `knf.OnlineMfcc` with `MfccConfig.knf_options()`, the settings above. The
deltas follow torchaudio's `compute_deltas` (a few lines of numpy below, since kaldi-native-fbank's own deltas are
Kaldi's `add-deltas`). tests/test_tokenization_mfcc_reference.py checks the result against a float64 numpy
implementation of Kaldi's algorithm written in the test and against values computed by
torchaudio.compliance.kaldi itself (tests/data/). Speed: ~17 ms per 12 s file on one core of the development
machine (~700x real time); knf builds an FFT plan per frame, so a vectorised numpy version would be several times
faster, but the features are what matters here and this code does not maintain its own Kaldi port.

One step is ours, not HuBERT's: per-utterance CMVN (`cmvn=True`, the default): each of the 39 dimensions is
mean- and variance-normalised over the utterance. With a log-spectral front end a gain change only shifts C0 (by
sqrt(23) * 2 ln(gain)), so without CMVN the same sentence spoken louder gives other units; the shipped codebook is
fitted on CMVN features and the tests rely on units being loudness-invariant. `cmvn=False` gives HuBERT's
features unchanged. Everything is deterministic (no dither): the same waveform always gives the same features.
"""
from __future__ import annotations

from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from slmscale.errors import SlmscaleError
from slmscale.typed import TypedConfig

__all__ = ["DEFAULT_CONFIG", "MfccConfig", "MfccExtractor", "compute_deltas", "kaldi_mfcc", "mfcc_features"]

class MfccConfig(TypedConfig):
    """The MFCC settings. Defaults = torchaudio.compliance.kaldi.mfcc(use_energy=False) + deltas (HuBERT iter. 0)
    + our per-utterance CMVN. All fields go into the tokenizer hash (via `MfccExtractor.describe()`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    config_name: ClassVar[str] = "mfcc config"

    sample_rate: int = Field(16000, gt=0, description="input sample rate in Hz (Kaldi/torchaudio sample_frequency)")
    frame_length_ms: float = Field(25.0, gt=0, description="analysis window length in milliseconds")
    frame_shift_ms: float = Field(10.0, gt=0, description="hop between frames in milliseconds (10 ms = 100 Hz frames)")
    dither: Literal[0.0] = Field(0.0, description="Gaussian dither; 0 (torchaudio's default): deterministic features")
    remove_dc_offset: bool = Field(True, description="subtract each frame's mean before pre-emphasis")
    preemphasis: float = Field(0.97, ge=0.0, le=1.0, description="pre-emphasis coefficient, within each frame")
    window_type: Literal["povey", "hamming", "hanning", "rectangular", "blackman"] = Field(
        "povey", description="Kaldi window function; povey = (symmetric Hann) ** 0.85")
    round_to_power_of_two: bool = Field(True, description="zero-pad each frame to the next power of two for the FFT")
    snip_edges: Literal[True] = Field(True, description="frames lie wholly inside the signal: 1 + (n - win) // hop")
    num_mel_bins: int = Field(23, gt=0, description="triangular mel filters (Kaldi's mel banks)")
    low_freq: float = Field(20.0, ge=0.0, description="lowest mel filter edge in Hz")
    high_freq: float = Field(0.0, description="highest mel filter edge in Hz; <= 0 means Nyquist + high_freq")
    num_ceps: int = Field(13, gt=0, description="cepstra kept after the DCT, C0 included")
    use_energy: Literal[False] = Field(False, description="C0 stays the DCT coefficient (no log energy), as HuBERT")
    cepstral_lifter: float = Field(22.0, ge=0.0, description="Kaldi lifter Q: c_i *= 1 + Q/2 sin(pi i / Q); 0 = none")
    delta_window: int = Field(2, gt=0, description="deltas regress over +-N frames (torchaudio win_length = 2N + 1)")
    cmvn: bool = Field(True, description="ours, not HuBERT's: per-utterance mean/variance normalisation of all dims")

    @model_validator(mode="after")
    def _cross_field(self) -> MfccConfig:
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not self.low_freq < high <= nyquist:
            raise ValueError(f"fields 'low_freq'/'high_freq' must give 0 <= low_freq < high_freq <= Nyquist "
                             f"({nyquist:g} Hz), got low_freq={self.low_freq}, high_freq={self.high_freq} (= {high:g} Hz)")
        if self.num_ceps > self.num_mel_bins:
            raise ValueError(f"field 'num_ceps' ({self.num_ceps}) must be <= num_mel_bins ({self.num_mel_bins})")
        if self.win_length < 2 or self.hop_length < 1:
            raise ValueError(f"fields 'frame_length_ms'/'frame_shift_ms' give {self.win_length}/{self.hop_length} "
                             "samples; expected at least 2 and 1")
        return self

    @property
    def win_length(self) -> int:
        """Samples per frame (Kaldi: int(sample_rate * 0.001 * frame_length_ms))."""
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def hop_length(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def dim(self) -> int:
        return 3 * self.num_ceps

    def to_dict(self) -> dict:
        return self.model_dump()

    def knf_options(self):
        """These settings as `kaldi_native_fbank.MfccOptions` (what `knf.OnlineMfcc` needs to compute the static
        cepstra, i.e. the first `num_ceps` columns before CMVN)."""
        import kaldi_native_fbank as knf

        frame = knf.FrameExtractionOptions(
            samp_freq=float(self.sample_rate), frame_shift_ms=self.frame_shift_ms, frame_length_ms=self.frame_length_ms,
            dither=self.dither, preemph_coeff=self.preemphasis, remove_dc_offset=self.remove_dc_offset,
            window_type=self.window_type, round_to_power_of_two=self.round_to_power_of_two, blackman_coeff=0.42,
            snip_edges=self.snip_edges)
        mel = knf.MelBanksOptions(num_bins=self.num_mel_bins, low_freq=self.low_freq, high_freq=self.high_freq,
                                  vtln_low=100.0, vtln_high=-500.0, htk_mode=False, is_librosa=False)
        return knf.MfccOptions(frame_opts=frame, mel_opts=mel, num_ceps=self.num_ceps, use_energy=self.use_energy,
                               energy_floor=0.0, raw_energy=True, cepstral_lifter=self.cepstral_lifter,
                               htk_compat=False)


DEFAULT_CONFIG = MfccConfig()


@lru_cache(maxsize=8)
def _knf_options(cfg: MfccConfig):
    """`cfg.knf_options()`, once kaldi-native-fbank has accepted them (bad settings fail here, not per file)."""
    import kaldi_native_fbank as knf

    opts = cfg.knf_options()
    try:
        knf.MelBanks(opts.mel_opts, opts.frame_opts, 1.0)
    except ValueError as e:  # e.g. more mel bins than the FFT resolution can fill
        raise SlmscaleError(f"mfcc config: kaldi-native-fbank refused the settings: {e}") from None
    return opts


def kaldi_mfcc(wav: np.ndarray, cfg: MfccConfig | None = None) -> np.ndarray:
    """[n_frames, num_ceps] float32 static Kaldi MFCCs of a waveform in [-1, 1], computed by kaldi-native-fbank
    (`knf.OnlineMfcc` with `cfg.knf_options()`; = torchaudio.compliance.kaldi.mfcc with the same options)."""
    import kaldi_native_fbank as knf

    cfg = cfg if cfg is not None else DEFAULT_CONFIG
    mfcc = knf.OnlineMfcc(_knf_options(cfg))
    mfcc.accept_waveform(float(cfg.sample_rate), np.ascontiguousarray(wav, dtype=np.float32))
    mfcc.input_finished()
    n = mfcc.num_frames_ready
    if n == 0:
        return np.zeros((0, cfg.num_ceps), np.float32)
    return np.array([mfcc.get_frame(i) for i in range(n)], dtype=np.float32)


def compute_deltas(x: np.ndarray, window: int = 2) -> np.ndarray:
    """torchaudio.functional.compute_deltas along time (axis 0) of [T, D]: sum_k k (x[t+k] - x[t-k]) / (2 sum k^2),
    k = 1..window, with the first and last frames repeated (mode "replicate")."""
    n = len(x)
    if n == 0:
        return x.copy()
    padded = np.concatenate([np.repeat(x[:1], window, 0), x, np.repeat(x[-1:], window, 0)])
    out = np.zeros_like(x)
    for k in range(1, window + 1):
        out += k * (padded[window + k: window + k + n] - padded[window - k: window - k + n])
    out /= np.float32(2 * sum(k * k for k in range(1, window + 1)))
    return out


def mfcc_features(wav: np.ndarray, cfg: MfccConfig | None = None) -> np.ndarray:
    """[n_frames, 3 * num_ceps] float32: Kaldi MFCC, deltas, delta-deltas (HuBERT's iteration-0 features), then
    per-utterance CMVN if `cfg.cmvn`. Input: a mono waveform at cfg.sample_rate, float in [-1, 1].

    n_frames = 1 + (len(wav) - win_length) // hop_length (frames lie wholly inside the signal); a waveform
    shorter than one window gives zero frames.
    """
    cfg = cfg if cfg is not None else DEFAULT_CONFIG
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise SlmscaleError(f"mfcc: expected a mono 1-D waveform, got shape {wav.shape}")
    ceps = kaldi_mfcc(wav, cfg)
    if len(ceps) == 0:
        return np.zeros((0, cfg.dim), np.float32)
    d1 = compute_deltas(ceps, cfg.delta_window)
    feats = np.concatenate([ceps, d1, compute_deltas(d1, cfg.delta_window)], axis=1)
    if cfg.cmvn:
        mean = feats.mean(axis=0, dtype=np.float64)
        std = feats.std(axis=0, dtype=np.float64)
        feats = ((feats - mean) / np.maximum(std, 1e-5)).astype(np.float32)
    return feats


class MfccExtractor:
    """The `mfcc` feature extractor: no weights, 100 Hz frames, 39 dims (see the module docstring)."""

    kind = "mfcc"

    def __init__(self, cfg: MfccConfig | None = None):
        self.cfg = cfg = cfg if cfg is not None else DEFAULT_CONFIG
        kaldi_mfcc(np.zeros(cfg.win_length, np.float32), cfg)  # load kaldi-native-fbank; bad settings fail here
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

