"""`generate(run_dir, ...)`: prompt -> units of the model's tokenizer -> sampled continuations -> files (+ WAVs).

    OUT/samples.json        settings, provenance (run dir, model dir + step, tokenizer id/hash, seed, vocoder
                            kind/path/sha256, code version) and per sample: the continuation units, the frames each
                            rendered unit lasted, the WAV name and where in it the continuation starts
    OUT/prompt_units.json   the prompt units (usable as --prompt-units for another run of the same tokenizer)
    OUT/prompt.wav          with a vocoder: the prompt resynthesised from its units
    OUT/sample-NNN.wav      with a vocoder: prompt + continuation resynthesised, sum(frames) x hop samples at
                            the vocoder's (= tokenizer's) sample rate

Prompt units keep their measured durations (frames per unit from the audio) when the prompt was audio;
generated units get the vocoder's (1 frame per unit for models trained without deduplication).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_path, atomic_write_json, code_version
from slmscale.models.generation.continuation import SamplingConfig, continue_units
from slmscale.models.generation.prompt import Prompt, prompt_from_audio, prompt_from_units_file, run_tokenizer
from slmscale.models.rundir import RunDir

__all__ = ["generate", "write_wav"]


def write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV, written atomically."""
    import soundfile as sf

    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


def _load_run(run_dir: str | Path, device: str):
    from slmscale.models.checkpoint import load_model

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise SlmscaleError(f"--model {rd.path}: directory not found, expected a training run directory "
                            "(run.json + model/)")
    if not rd.run_info.is_file():
        raise SlmscaleError(f"--model {rd.path}: no run.json, expected a training run directory written by "
                            "`slmscale train` or a sweep")
    model, info = load_model(rd.path, device=device)
    for key in ("eos_id", "pad_id", "tokenizer_hash"):
        if info.get(key) is None:
            raise SlmscaleError(f"{rd.run_info}: field {key!r} is missing, expected the run.json `slmscale train` writes")
    return model, info


def generate(
    model: str | Path,
    out_dir: str | Path,
    *,
    prompt: str | Path | None = None,
    prompt_units: str | Path | None = None,
    max_units: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    num_samples: int = 1,
    stop_at_eos: bool = False,
    vocoder: str | Path | None = None,
    vocoder_sha256: str | None = None,
    speaker: int = 0,
    cache_dir: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Continue a prompt (`prompt` audio or `prompt_units` JSON, exactly one) with the model of run directory
    `model`; write units (and, with `vocoder` = 'embedded' or a directory, WAVs) into `out_dir`. Returns the
    content of OUT/samples.json."""
    if (prompt is None) == (prompt_units is None):
        raise SlmscaleError("--prompt / --prompt-units: expected exactly one of them (an audio file or a units JSON)")
    sampling = SamplingConfig(max_units=max_units, temperature=temperature, top_k=top_k, seed=seed,
                              num_samples=num_samples, stop_at_eos=stop_at_eos).validate()
    device = device or "cpu"  # the CPU is the deterministic default; pass cuda explicitly for speed
    t0 = time.perf_counter()
    lm, info = _load_run(model, device)
    audio_for = "--prompt" if prompt is not None else ("--vocoder embedded" if str(vocoder) == "embedded" else None)
    run_tok = run_tokenizer(info, audio_for=audio_for)
    voc = None
    if vocoder is not None:
        from slmscale.models.generation.vocoder import load_vocoder

        voc = load_vocoder(vocoder, run_tok.info, tokenizer=run_tok.tokenizer, sha256=vocoder_sha256,
                           cache_dir=cache_dir, device=device, speaker=speaker)
    p: Prompt = prompt_from_audio(prompt, run_tok) if prompt is not None else prompt_from_units_file(prompt_units, run_tok)
    continuations, n_seen = continue_units(lm, p.units, eos_id=int(info["eos_id"]), pad_id=int(info["pad_id"]),
                                           config=sampling)
    seen = p.units[-n_seen:]
    seen_durations = p.durations[-n_seen:] if p.durations else None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompt_record = {"source": p.source, "tokenizer_hash": run_tok.hash, "tokenizer": run_tok.info.get("id"),
                     "units": p.units, "durations": p.durations or None, "dedup": run_tok.dedup}
    atomic_write_json(out / "prompt_units.json", prompt_record)
    samples: list[dict[str, Any]] = []
    sample_rate = None
    if voc is not None:
        sample_rate = voc.sample_rate
        prompt_frames = (np.asarray(seen_durations, np.int64) if seen_durations
                         else voc.frames_per_unit(np.asarray(seen), run_tok.dedup))
        write_wav(out / "prompt.wav", voc.synthesize(np.asarray(seen), prompt_frames), sample_rate)
    for i, units in enumerate(continuations):
        record: dict[str, Any] = {"index": i, "units": units, "n_units": len(units)}
        if voc is not None:
            gen_frames = voc.frames_per_unit(np.asarray(units, np.int64), run_tok.dedup)
            frames = np.concatenate([prompt_frames, gen_frames]).astype(np.int64)
            wav = voc.synthesize(np.asarray(seen + units, np.int64), frames)
            name = f"sample-{i:03d}.wav"
            write_wav(out / name, wav, sample_rate)
            record.update(wav=name, frames=gen_frames.tolist(), prompt_frames=int(prompt_frames.sum()),
                          samples=len(wav), seconds=len(wav) / sample_rate,
                          continuation_starts_s=int(prompt_frames.sum()) * voc.hop_samples / sample_rate)
        samples.append(record)

    rd = RunDir(model)
    result = {
        "settings": {**sampling.to_dict(), "device": device, "vocoder": str(vocoder) if vocoder is not None else None,
                     "speaker": speaker},
        "prompt": {"source": p.source, "n_units": len(p.units), "n_units_seen": n_seen,
                   "units_file": "prompt_units.json", "wav": "prompt.wav" if voc is not None else None},
        "samples": samples,
        "audio": {"sample_rate": sample_rate, "hop_samples": voc.hop_samples,
                  "length_rule": "samples = (prompt_frames + sum(frames)) * hop_samples"} if voc is not None else None,
        "provenance": {
            "run_dir": str(rd.path.resolve()), "run_id": rd.path.resolve().name, "model_dir": info.get("model_dir"),
            "step": info.get("step"), "finished": info.get("finished"), "model": info.get("model"),
            "n_params": info.get("n_params"), "tokenizer": run_tok.info.get("id"), "tokenizer_hash": run_tok.hash,
            "units_vocab_size": info.get("units_vocab_size"), "dedup": run_tok.dedup, "seed": seed,
            "vocoder": voc.describe() if voc is not None else None, "code_version": code_version(),
            "seconds": round(time.perf_counter() - t0, 2),
        },
    }
    atomic_write_json(out / "samples.json", result)
    return result
