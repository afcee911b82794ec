"""Decode any audio file to 16 kHz mono float32 chunks, or say exactly why it cannot be used.

soundfile (libsndfile: wav/flac/ogg/mp3) decodes, channels are averaged, soxr resamples. Bad inputs raise
`AudioReject(reason, detail)` with one of the machine-readable reasons

    empty, missing, not_audio, truncated, non_finite, silent, too_short

and are turned into rows of rejects.parquet by the encoder. Files longer than `chunk_s` are decoded
block by block with a streaming resampler and yielded as consecutive chunks, so memory stays bounded by the
chunk length, not the file length; such files are checked in a first streaming pass so that a file is either
fully encoded or rejected, never half of each.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AudioReject", "DecodedChunk", "decode_chunks", "TARGET_SR", "SILENCE_PEAK", "REASONS"]

TARGET_SR = 16000
SILENCE_PEAK = 1e-4  # about -80 dBFS, i.e. +-3 LSB of 16-bit audio: nothing audible
REASONS = ("empty", "missing", "not_audio", "truncated", "non_finite", "silent", "too_short")
_BLOCK_S = 30.0  # validation-pass block length


class AudioReject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedChunk:
    index: int  # chunk number within the file
    n_chunks: int
    wav: np.ndarray  # float32 mono at TARGET_SR


def _wav_declared_data_bytes(path: Path) -> tuple[int, int] | None:
    """(declared data-chunk bytes, bytes actually present) of a RIFF/WAVE file; None for other formats.

    libsndfile silently shortens a truncated WAV to what is present, so truncation is detected here."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while True:
            hdr = f.read(8)
            if len(hdr) < 8:
                return None
            cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if cid == b"data":
                start = pos + 8
                end = f.seek(0, 2)
                return size, end - start
            pos += 8 + size + (size & 1)
            f.seek(pos)


def _mono(block: np.ndarray) -> np.ndarray:
    """1-D float32: channels averaged (a downmix that keeps the level of correlated speech)."""
    if block.ndim == 1:
        return block
    return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)


def _check_block(block: np.ndarray, offset: int, sr: int) -> None:
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        bad = offset + int(np.flatnonzero(~finite)[0])
        raise AudioReject("non_finite", f"NaN or inf sample at {bad / sr:.3f} s (frame {bad})")


def decode_chunks(path: str | Path, chunk_s: float = 60.0, min_samples: int = 400) -> Iterator[DecodedChunk]:
    """Yield 16 kHz mono float32 chunks of at most `chunk_s` seconds (the last may be shorter; a trailing piece
    shorter than `min_samples` is merged into the previous chunk). Raises AudioReject before yielding anything."""
    import soundfile as sf
    import soxr

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioReject("missing", f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise AudioReject("empty", "file has 0 bytes")
    try:
        declared = _wav_declared_data_bytes(path)
    except OSError as exc:
        raise AudioReject("missing", f"cannot read {path}: {exc}") from None
    if declared is not None and declared[0] not in (0, 0xFFFFFFFF) and declared[1] < declared[0]:
        raise AudioReject("truncated", f"WAV header declares {declared[0]} data bytes but only {declared[1]} are present")
    try:
        snd = sf.SoundFile(str(path))
    except Exception as exc:  # LibsndfileError / RuntimeError / TypeError for garbage bytes
        raise AudioReject("not_audio", f"not a readable audio file: {exc}") from None
    with snd:
        sr, frames = int(snd.samplerate), int(snd.frames)
        if sr <= 0 or snd.channels <= 0:
            raise AudioReject("not_audio", f"header has sample rate {sr} and {snd.channels} channel(s)")
        chunk_src = max(1, int(round(chunk_s * sr)))
        long_file = frames > chunk_src
        # Pass 1 (long files only; short ones are checked in memory below): validate everything first.
        peak, read = 0.0, 0
        if long_file:
            try:
                for block in snd.blocks(blocksize=int(_BLOCK_S * sr), dtype="float32", always_2d=True):
                    _check_block(block, read, sr)
                    peak = max(peak, float(np.abs(block).max(initial=0.0)))
                    read += len(block)
            except AudioReject:
                raise
            except Exception as exc:  # decoder lost sync, short read
                raise AudioReject("truncated", f"decoding failed after {read} of {frames} frames: {exc}") from None
            _finish_checks(read, frames, peak, sr, min_samples)
            snd.seek(0)
            n_chunks = max(1, frames // chunk_src)  # a short tail joins the last chunk
            target = int(round(chunk_s * TARGET_SR))
            resampler = soxr.ResampleStream(sr, TARGET_SR, 1, dtype="float32") if sr != TARGET_SR else None
            pending: list[np.ndarray] = []
            n_pending, index, last = 0, 0, False
            # The streaming resampler holds back a few hundred samples, so its output is re-cut into chunks of
            # exactly `target` samples: chunk i then starts exactly at i * chunk_s seconds of the source.
            for block in snd.blocks(blocksize=chunk_src, dtype="float32", always_2d=True):
                last = snd.tell() >= frames
                mono = _mono(block)
                out = resampler.resample_chunk(mono, last=last) if resampler else mono
                pending.append(np.asarray(out, dtype=np.float32))
                n_pending += len(out)
                while index < n_chunks - 1 and n_pending >= target:
                    joined = np.concatenate(pending)
                    yield DecodedChunk(index, n_chunks, np.ascontiguousarray(joined[:target]))
                    pending, n_pending, index = [joined[target:]], n_pending - target, index + 1
            if resampler is not None and not last:  # flush what the resampler still holds
                pending.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            yield DecodedChunk(index, n_chunks, np.ascontiguousarray(np.concatenate(pending), dtype=np.float32))
            return
        try:
            data = snd.read(dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioReject("truncated", f"decoding failed: {exc}") from None
    _check_block(data, 0, sr)
    _finish_checks(len(data), frames, float(np.abs(data).max(initial=0.0)), sr, min_samples)
    wav = _mono(data)
    if sr != TARGET_SR:
        wav = soxr.resample(wav, sr, TARGET_SR)
    if len(wav) < min_samples:
        raise AudioReject("too_short", f"{len(wav)} samples at 16 kHz, expected at least {min_samples}")
    yield DecodedChunk(0, 1, np.ascontiguousarray(wav, dtype=np.float32))


def _finish_checks(read: int, frames: int, peak: float, sr: int, min_samples: int) -> None:
    if read < frames:
        raise AudioReject("truncated", f"header declares {frames} frames but only {read} could be decoded")
    if read == 0:
        raise AudioReject("empty", "audio stream has no samples")
    if read * TARGET_SR / sr < min_samples:
        raise AudioReject("too_short", f"{read / sr * 1000:.1f} ms of audio, expected at least {min_samples / TARGET_SR * 1000:.0f} ms")
    if peak < SILENCE_PEAK:
        raise AudioReject("silent", f"peak amplitude {peak:.2e} is below {SILENCE_PEAK:.0e} (all-silent audio)")
