"""The embedded lo-fi unit vocoder: each unit's mean log-magnitude spectrum, phase by Griffin-Lim.

No neural network and no download. Built from real audio and the tokenizer alone:

    for every frame of the exemplar audio: its unit (the tokenizer) and its magnitude spectrum (a Hann window of
    the tokenizer's frame length at the tokenizer's hop, aligned with the tokenizer's frames)
    unit k -> exp(mean log magnitude of its frames)      (the geometric mean: sharper formants than the mean power)
    unit k -> mean run length in frames                  (how long the unit lasts before deduplication)

Synthesis looks up one spectrum per frame (a deduplicated unit is held for its mean run length, or the
durations given) and recovers a phase with Griffin-Lim (32 iterations, seeded), so the output has exactly
frames x hop samples. Averaging spectra over speakers and pitches blurs the harmonics: the result is whispery,
robotic speech — lo-fi by design, enough to hear what a model generates, not a substitute for a trained
unit-HiFiGAN (see models/generation/codehifigan.py). Its quality is measured, not asserted: `vocoder.json`
records the resynthesis unit edit rate on held-out audio (models/generation/resynthesis.py).

`embedded_vocoder(tokenizer)` builds one from espeak-ng stories (tokenization.synth, offline) and caches it by
tokenizer hash; `build_exemplar_vocoder` builds one from any audio (the demo uses its own corpus).

    DIR/vocoder.json           kind, tokenizer hash, frame settings, sources, edit rate, code version
    DIR/exemplars.safetensors  log_magnitude [K, F] float32, durations [K] float32, counts [K] int64
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_folder, atomic_write_json, code_version, read_json, sha256_file

__all__ = ["ExemplarVocoder", "build_exemplar_vocoder", "embedded_vocoder", "load_exemplar_vocoder", "griffin_lim",
           "EXEMPLAR_KIND", "EXEMPLAR_FILES"]

EXEMPLAR_KIND = "unit-exemplar-griffin-lim"
EXEMPLAR_FILES = ("vocoder.json", "exemplars.safetensors")
_VERSION = 1  # bump when the build changes: cached embedded vocoders are keyed by it
_GL_ITERS = 32
_FLOOR = 1e-5  # log-magnitude floor (digital silence)
# The embedded build: stories never used by the demo corpus (seed 0) or the shipped codebook (seeds 1000+).
_EMBEDDED_STORIES, _EMBEDDED_HELD_OUT, _EMBEDDED_SEED = 32, 4, 7001


def _frames(wav, win: int, hop: int):
    """[n, win] frames of a 1-D torch tensor: frame i covers samples [i * hop, i * hop + win) (Kaldi snip_edges)."""
    return wav.unfold(0, win, hop)


def griffin_lim(magnitude: np.ndarray, hop: int, win: int, n_iter: int = _GL_ITERS, seed: int = 0) -> np.ndarray:
    """A waveform of len(magnitude) * hop samples whose short-time magnitudes approximate `magnitude` [n, win//2+1].

    Frame i of the spectrogram is centred on output sample i * hop + hop / 2, i.e. on the middle of unit i's
    hop-long slot."""
    import torch
    import torch.nn.functional as F

    n = len(magnitude)
    if n == 0:
        return np.zeros(0, np.float32)
    mag = torch.from_numpy(np.ascontiguousarray(magnitude, dtype=np.float32))
    window = torch.hann_window(win)  # periodic Hann: its squares overlap-add to a near-constant at hop <= win/2
    length = (n - 1) * hop + win
    envelope = F.fold(window.pow(2).repeat(n, 1).T[None], (1, length), (1, win), stride=(1, hop)).flatten()
    envelope = envelope.clamp_min(envelope.max() * 1e-3)  # the first and last samples have (almost) no window

    def overlap_add(spec):
        frames = torch.fft.irfft(spec, n=win) * window
        return F.fold(frames.T[None], (1, length), (1, win), stride=(1, hop)).flatten() / envelope

    gen = torch.Generator().manual_seed(seed)
    phase = torch.exp(2j * torch.pi * torch.rand(mag.shape, generator=gen, dtype=torch.float64)).to(torch.complex64)
    for _ in range(n_iter):
        spec = torch.fft.rfft(_frames(overlap_add(mag * phase), win, hop) * window, n=win)
        phase = spec / spec.abs().clamp_min(1e-8)
    wav = overlap_add(mag * phase)
    start = (win - hop) // 2
    out = np.zeros(n * hop, np.float32)
    seg = wav[start:start + n * hop].numpy()
    out[:len(seg)] = seg
    return out


class ExemplarVocoder:
    """Units -> 16 kHz waveform by per-unit mean spectra + Griffin-Lim (see the module docstring)."""

    kind = "exemplar"

    def __init__(self, log_magnitude: np.ndarray, durations: np.ndarray, counts: np.ndarray, info: dict[str, Any],
                 path: Path | None = None):
        self.log_magnitude = np.asarray(log_magnitude, np.float32)
        self.mean_durations = np.asarray(durations, np.float32)
        self.counts = np.asarray(counts, np.int64)
        self.info = info
        self.path = path
        self.sample_rate = int(info["sample_rate"])
        self.hop_samples = int(info["hop_samples"])
        self.win_samples = int(info["win_samples"])
        self.tokenizer_hash = str(info["tokenizer_hash"])
        if self.log_magnitude.shape != (len(self.counts), self.win_samples // 2 + 1) or len(self.mean_durations) != len(self.counts):
            raise SlmscaleError(f"{path or 'exemplar vocoder'}: exemplar arrays have shapes {self.log_magnitude.shape}, "
                                f"{self.mean_durations.shape}, {self.counts.shape}; expected [K, {self.win_samples // 2 + 1}], [K], [K]")

    @property
    def n_units(self) -> int:
        return len(self.counts)

    def frames_per_unit(self, units: np.ndarray, dedup: bool) -> np.ndarray:
        """Frames to render each unit for: its mean run length for deduplicated units, else 1."""
        units = np.asarray(units, np.int64)
        if not dedup:
            return np.ones(len(units), np.int64)
        return np.maximum(1, np.rint(self.mean_durations[units])).astype(np.int64)

    def synthesize(self, units: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """float32 waveform of sum(frames) * hop samples: unit i rendered for frames[i] frames."""
        per_frame = np.repeat(np.asarray(units, np.int64), np.asarray(frames, np.int64))
        wav = griffin_lim(np.exp(self.log_magnitude[per_frame]), self.hop_samples, self.win_samples)
        peak = float(np.abs(wav).max()) if len(wav) else 0.0
        return wav * (0.95 / peak) if peak > 0.95 else wav  # never clip; quieter audio is kept as it is

    def describe(self) -> dict[str, Any]:
        sha = sha256_file(self.path / EXEMPLAR_FILES[1]) if self.path else None
        return {"kind": EXEMPLAR_KIND, "path": str(self.path) if self.path else None, "sha256": sha,
                "lo_fi": True, "tokenizer_hash": self.tokenizer_hash, "sources": self.info.get("sources"),
                "unit_edit_rate": self.info.get("unit_edit_rate")}

    def save(self, out_dir: str | Path) -> Path:
        """Write DIR/exemplars.safetensors + DIR/vocoder.json (atomically, as one directory rename)."""
        from safetensors.numpy import save_file

        out = Path(out_dir)
        with atomic_folder(out) as tmp:
            save_file({"log_magnitude": self.log_magnitude, "durations": self.mean_durations, "counts": self.counts},
                      str(tmp / EXEMPLAR_FILES[1]))
            atomic_write_json(tmp / EXEMPLAR_FILES[0], {**self.info, "kind": EXEMPLAR_KIND, "version": _VERSION})
        self.path = out
        return out


def load_exemplar_vocoder(path: str | Path) -> ExemplarVocoder:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    info = read_json(path / EXEMPLAR_FILES[0], what="exemplar vocoder description (vocoder.json)")
    if info.get("kind") != EXEMPLAR_KIND:
        raise SlmscaleError(f"{path}/vocoder.json: field 'kind' is {info.get('kind')!r}, expected {EXEMPLAR_KIND!r}")
    weights = path / EXEMPLAR_FILES[1]
    if not weights.is_file():
        raise SlmscaleError(f"{path}: no {EXEMPLAR_FILES[1]}, expected the exemplar spectra beside vocoder.json")
    try:
        arrays = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SlmscaleError(f"{weights}: not a readable safetensors file ({exc}), expected the file "
                            "`build_exemplar_vocoder` writes") from None
    missing = {"log_magnitude", "durations", "counts"} - set(arrays)
    if missing:
        raise SlmscaleError(f"{weights}: missing tensors {sorted(missing)}, expected log_magnitude, durations, counts")
    return ExemplarVocoder(arrays["log_magnitude"], arrays["durations"], arrays["counts"], info, path)


def build_exemplar_vocoder(tokenizer, wavs: Sequence[np.ndarray], *, held_out: Sequence[np.ndarray] = (),
                           sources: dict[str, Any] | None = None) -> ExemplarVocoder:
    """Fit an exemplar vocoder on `wavs` (16 kHz mono float32) with `tokenizer` (a UnitTokenizer); measure its
    resynthesis unit edit rate on `held_out` when given. Units never seen in `wavs` get the mean spectrum of all
    frames (their count, 0, is kept)."""
    import torch

    from slmscale.models.generation.resynthesis import unit_edit_rate
    from slmscale.tokenization.dedup import collapse_runs

    features = tokenizer.features.get("config") or {}
    sample_rate = int(features.get("sample_rate", 16000))
    hop = int(round(sample_rate / tokenizer.frame_rate_hz))
    # The tokenizer's own analysis window when it has one (mfcc: 25 ms); HuBERT-style tokenizers: two hops.
    win = int(sample_rate * 0.001 * features["frame_length_ms"]) if "frame_length_ms" in features else 2 * hop
    k = tokenizer.vocab_size
    log_sum = torch.zeros((k, win // 2 + 1), dtype=torch.float64)
    counts = np.zeros(k, np.int64)
    run_sum, run_count = np.zeros(k, np.float64), np.zeros(k, np.int64)
    window = torch.hann_window(win)
    for wav in wavs:
        units = tokenizer.frame_units([wav])[0].astype(np.int64)
        if len(wav) < win or len(units) == 0:
            continue
        mag = torch.fft.rfft(_frames(torch.from_numpy(np.asarray(wav, np.float32)), win, hop) * window).abs().numpy()
        n = min(len(mag), len(units))  # equal for mfcc (same framing); a HuBERT frame count may differ by one
        log_sum.index_add_(0, torch.from_numpy(units[:n]), torch.from_numpy(np.log(np.maximum(mag[:n], _FLOOR))).double())
        np.add.at(counts, units[:n], 1)
        run_units, run_lengths = collapse_runs(units)
        np.add.at(run_sum, run_units.astype(np.int64), run_lengths.astype(np.float64))
        np.add.at(run_count, run_units.astype(np.int64), 1)
    if counts.sum() == 0:
        raise SlmscaleError(f"exemplar vocoder: no frames in the {len(wavs)} exemplar waveforms, expected speech "
                            f"at least {win} samples long")
    log_sum = log_sum.numpy()
    overall = log_sum.sum(0) / counts.sum()
    log_mag = np.where(counts[:, None] > 0, log_sum / np.maximum(counts, 1)[:, None], overall).astype(np.float32)
    durations = np.where(run_count > 0, run_sum / np.maximum(run_count, 1), 1.0).astype(np.float32)
    info = {"tokenizer_hash": tokenizer.hash, "tokenizer": tokenizer.spec.name, "k": k, "sample_rate": sample_rate,
            "hop_samples": hop, "win_samples": win, "griffin_lim_iterations": _GL_ITERS,
            "exemplar_frames": int(counts.sum()), "units_unseen": int((counts == 0).sum()),
            "sources": sources or {"waveforms": len(wavs)}, "code_version": code_version()}
    vocoder = ExemplarVocoder(log_mag, durations, counts, info)
    if len(held_out):
        vocoder.info["unit_edit_rate"] = unit_edit_rate(vocoder, tokenizer, held_out)
    return vocoder


def _spoken_stories(n: int, seed: int) -> list[np.ndarray]:
    """`n` embedded stories spoken by espeak-ng (every default voice and rate in turn), 16 kHz mono float32."""
    import soxr

    from slmscale.tokenization.stories import generate_stories
    from slmscale.tokenization.synth import DEFAULT_RATES, DEFAULT_VOICES, tts

    pairs = [(v, r) for r in DEFAULT_RATES for v in DEFAULT_VOICES]
    out = []
    for i, text in enumerate(generate_stories(n, seed=seed)):
        voice, rate = pairs[i % len(pairs)]
        wav, sr = tts(text, voice=voice, rate=rate)
        out.append(soxr.resample(wav, sr, 16000).astype(np.float32))
    return out


def embedded_vocoder(tokenizer, cache_dir: str | Path | None = None) -> ExemplarVocoder:
    """The exemplar vocoder of `tokenizer` fitted on embedded espeak-ng stories (built once, a few seconds, then
    read from CACHE/vocoder/), with its edit rate measured on held-out stories of other voices' turns."""
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("SLMSCALE_CACHE") or Path.home() / ".cache" / "slmscale")
    path = base / "vocoder" / f"exemplar-v{_VERSION}-{tokenizer.hash[:16]}"
    if (path / EXEMPLAR_FILES[0]).is_file():
        return load_exemplar_vocoder(path)
    stories = _spoken_stories(_EMBEDDED_STORIES + _EMBEDDED_HELD_OUT, seed=_EMBEDDED_SEED)
    vocoder = build_exemplar_vocoder(
        tokenizer, stories[:_EMBEDDED_STORIES], held_out=stories[_EMBEDDED_STORIES:],
        sources={"embedded_stories": _EMBEDDED_STORIES, "held_out_stories": _EMBEDDED_HELD_OUT,
                 "story_seed": _EMBEDDED_SEED, "speech": "espeak-ng, default voices and rates"})
    path.parent.mkdir(parents=True, exist_ok=True)
    vocoder.save(path)
    return vocoder
