"""Offline text-to-speech with libespeak-ng (the `espeakng-loader` wheel), for synthetic spoken corpora.

The paper's sTinyStories corpus is TinyStories text synthesised to speech; here espeak-ng plays the TTS so
that the demo, the tests and the embedded benchmarks have speech with transcripts and no download.

The C library is driven through ctypes in synchronous mode: `espeak_Synth` blocks and hands every block of
16-bit samples to a callback that appends it to a list. libespeak-ng keeps global state (one voice, one rate,
one callback, and wave-generator statics), so every call holds a process-wide lock and speaks in a forked
child, which makes the output a pure function of (text, voice, rate, seed). When the wheel's library cannot be loaded, a Debian
`espeak-ng` binary (`--stdout` WAV) is used instead.
"""
from __future__ import annotations

import ctypes
import io
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmscale.errors import SlmscaleError

__all__ = ["tts", "synthesize", "SynthItem", "DEFAULT_VOICES", "DEFAULT_RATES", "available_backend", "check_utt_id"]

# A spread of speakers: base voices plus espeak-ng "variants" (+f = female, +m = male timbres).
DEFAULT_VOICES = ("en", "en+f3", "en-us+m3", "en-us+f2", "en+m5")
DEFAULT_RATES = (140, 160, 185)  # words per minute

# espeak_AUDIO_OUTPUT / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The loaded library plus the state it needs: one instance per process."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetParameter.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.lib.espeak_Synth.restype = ctypes.c_int
        # espeak-ng jitters pitch/timing with its own PRNG; reseeding it before every utterance makes the
        # waveform a pure function of (text, voice, rate), which the tests and cached benchmarks rely on.
        self._set_seed = getattr(self.lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        data_path = str(espeakng_loader.get_data_path()).encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.sample_rate}) with data path {data_path!r}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the C library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, n, _events) -> int:
        if n > 0 and samples:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def _synth_here(self, text: str, voice: str, rate: int, seed: int) -> np.ndarray:
        """Synthesise in this process (int16 samples); raises ValueError for an unknown voice."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"voice {voice!r}: espeak-ng has no such voice, expected e.g. 'en', 'en+f3', 'en-us+m3'")
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._chunks = []
        if self._set_seed is not None:
            self._set_seed(seed)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise OSError(f"espeak_Synth failed with error {err}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def synth(self, text: str, voice: str, rate: int, seed: int) -> np.ndarray:
        """float32 samples. The wave generator keeps C-function statics (pitch-flutter index, glottal phase) that
        no API call resets, so an utterance would depend on everything spoken before it. Each utterance is
        therefore spoken in a forked child of this (never-speaking) process: same input, same samples."""
        if not hasattr(os, "fork"):
            return self._synth_here(text, voice, rate, seed).astype(np.float32) / 32768.0
        payload = _in_child(lambda: self._synth_here(text, voice, rate, seed).astype("<i2").tobytes())
        return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0


def _in_child(work: Callable[[], bytes]) -> bytes:
    """`work()` run in a forked child, its bytes sent back through a pipe; an exception in it is raised here as a
    SlmscaleError with its message. The child exits without Python cleanup (os._exit)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send "ok"+payload or "er"+message
        code = 0
        try:
            os.close(read_fd)
            try:
                payload = b"ok" + work()
            except Exception as exc:  # reported to the parent, which raises it
                payload = b"er" + str(exc).encode()
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if payload[:2] == b"er":
        raise SlmscaleError(payload[2:].decode(errors="replace"))
    if payload[:2] != b"ok" or status != 0:
        raise OSError(f"espeak-ng synthesis child failed (status {status})")
    return payload[2:]


def in_espeak_child(work: Callable[[_Espeak], bytes]) -> bytes | None:
    """Run `work(engine)` with libespeak-ng in a forked child, under the module lock (the library keeps global
    state, so this process never speaks and every call starts from the same state), as `tts` does; for callers
    that need more of the engine than `tts` (e.g. phoneme input). None when the library is unavailable."""
    with _LOCK:
        engine = _engine()
        if engine is None or not hasattr(os, "fork"):
            return None
        return _in_child(lambda: work(engine))


_LOCK = threading.Lock()
_ENGINE: _Espeak | None = None
_ENGINE_ERROR: Exception | None = None


def _engine() -> _Espeak | None:
    global _ENGINE, _ENGINE_ERROR
    if _ENGINE is None and _ENGINE_ERROR is None:
        try:
            _ENGINE = _Espeak()
        except Exception as exc:  # wheel missing or library unloadable on this platform
            _ENGINE_ERROR = exc
    return _ENGINE


def available_backend() -> str | None:
    """'libespeak-ng' (ctypes), 'espeak-ng-binary' (Debian package) or None."""
    with _LOCK:
        if _engine() is not None:
            return "libespeak-ng"
    return "espeak-ng-binary" if shutil.which("espeak-ng") else None


def _tts_binary(text: str, voice: str, rate: int) -> tuple[np.ndarray, int]:
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SlmscaleError(
            f"no speech synthesiser: the espeakng-loader library failed to load ({_ENGINE_ERROR}) and no `espeak-ng` "
            "binary is on PATH; expected `pip install espeakng-loader` or `apt-get install espeak-ng`"
        )
    proc = subprocess.run([exe, "-v", voice, "-s", str(int(rate)), "--stdout", text], capture_output=True, check=False)
    if proc.returncode != 0:
        raise SlmscaleError(f"voice {voice!r}: espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return (wav if wav.ndim == 1 else wav.mean(axis=1)).astype(np.float32), int(sr)


def tts(text: str, voice: str = "en", rate: int = 160, seed: int = 0) -> tuple[np.ndarray, int]:
    """Synthesise `text` offline. Returns (float32 mono waveform in [-1, 1], sample rate); deterministic.

    `voice` is an espeak-ng voice name, optionally with a variant (`en+f3`, `en-us+m3`); `rate` is in words per
    minute (espeak-ng accepts 80-450); `seed` seeds espeak-ng's pitch/timing jitter (same seed, same samples).
    """
    if not isinstance(text, str) or not text.strip():
        raise SlmscaleError(f"tts text: expected a non-empty string, got {text!r}")
    if not 80 <= int(rate) <= 450:
        raise SlmscaleError(f"tts rate: expected words per minute in [80, 450], got {rate}")
    with _LOCK:
        engine = _engine()
        if engine is not None:
            return engine.synth(text, voice, int(rate), int(seed)), engine.sample_rate
    return _tts_binary(text, voice, int(rate))


@dataclass(frozen=True)
class SynthItem:
    """One utterance to synthesise: its id (relative output path without extension) and transcript."""

    utt_id: str
    text: str


def check_utt_id(utt_id: str, where: str) -> str:
    """`utt_id` if it names a file inside the output folder, else a SlmscaleError saying so at `where`.

    An utt_id becomes the path `<out_dir>/<utt_id>.wav`: names joined by '/' (sub-folders are fine, e.g. a
    speaker folder), none of them empty, '.' or '..', no leading '/', no backslash or NUL. So no id can write
    outside the folder, and two different ids never name the same file ('a/./b' and 'a/b' would)."""
    parts = utt_id.split("/")
    if (not utt_id or utt_id.startswith("/") or "\\" in utt_id or "\0" in utt_id
            or any(part in ("", ".", "..") for part in parts)):
        raise SlmscaleError(f"{where}: utt_id {utt_id!r} would not name a file inside the output folder; expected "
                            f"names joined by '/' without '..', '.', empty parts, a leading '/' or a backslash "
                            f"(e.g. 'utt001' or 'spk1/utt001')")
    return utt_id


def _as_items(items: Iterable[str | tuple[str, str] | SynthItem | dict]) -> list[SynthItem]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, SynthItem):
            out.append(item)
        elif isinstance(item, str):
            out.append(SynthItem(f"utt{i:06d}", item))
        elif isinstance(item, dict):
            if "text" not in item:
                raise SlmscaleError(f"synth item {i}: missing field 'text' in {item!r}")
            out.append(SynthItem(str(item.get("utt_id") or f"utt{i:06d}"), str(item["text"])))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(SynthItem(str(item[0]), str(item[1])))
        else:
            raise SlmscaleError(f"synth item {i}: expected a string, (utt_id, text) or {{'utt_id', 'text'}}, got {item!r}")
        check_utt_id(out[-1].utt_id, f"synth item {i}")
    ids = [it.utt_id for it in out]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise SlmscaleError(f"synth items: duplicate utt_id(s) {dup}")
    return out


def synthesize(
    items: Iterable[str | tuple[str, str] | SynthItem | dict],
    out_dir: str | Path,
    voices: Sequence[str] = DEFAULT_VOICES,
    rates: Sequence[int] = DEFAULT_RATES,
    sample_rate: int = 16000,
    source: str = "stinystories",
    progress: bool = True,
) -> Path:
    """Synthesise every item to `out_dir/<utt_id>.wav` and write `out_dir/manifest.parquet`.

    An utt_id that would not name a file inside `out_dir` ('../x', '/abs', 'a/../b') is refused before anything is
    written (`check_utt_id`).

    Item i is spoken with voice `voices[i % len(voices)]` and rate `rates[(i // len(voices)) % len(rates)]`, so
    every (voice, rate) pair is used once before any repeats. WAVs are 16-bit PCM at `sample_rate` (resampled
    with soxr); the manifest follows the audio-manifest contract with `transcript` filled in and the voice as
    `speaker`. Existing WAVs are kept (a rerun only synthesises what is missing).
    """
    import soundfile as sf
    import soxr
    from tqdm.auto import tqdm

    from slmscale.tokenization.manifest import manifest_rows_for_files, write_manifest

    if not voices or not rates:
        raise SlmscaleError("synthesize: expected at least one voice and one rate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parsed = _as_items(items)
    if not parsed:
        raise SlmscaleError("synthesize: no items to synthesise")
    entries = []
    for i, item in enumerate(tqdm(parsed, desc="synthesising", unit="utt", disable=not progress)):
        voice = voices[i % len(voices)]
        rate = int(rates[(i // len(voices)) % len(rates)])
        wav_path = out_dir / f"{item.utt_id}.wav"
        if not wav_path.is_file():
            wav, sr = tts(item.text, voice=voice, rate=rate)
            if sr != sample_rate:
                wav = soxr.resample(wav, sr, sample_rate).astype(np.float32)
            wav_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = wav_path.with_name(f".{wav_path.name}.tmp.wav")
            sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")
            tmp.replace(wav_path)
        entries.append({"path": wav_path, "utt_id": item.utt_id, "transcript": item.text, "speaker": f"{voice}@{rate}"})
    rows, rejects = manifest_rows_for_files(entries, source=source, progress=False)
    if rejects:
        raise SlmscaleError(f"synthesize: {len(rejects)} synthesised file(s) unreadable, first: {rejects[0]}")
    return write_manifest(rows, out_dir / "manifest.parquet")
