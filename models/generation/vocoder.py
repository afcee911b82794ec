"""`--vocoder SPEC` -> a unit vocoder that fits the model: same units, same frame rate.

SPEC is `embedded` (the lo-fi exemplar vocoder of the run's tokenizer, models/generation/exemplar.py) or a
directory: an exemplar vocoder (vocoder.json) or a CodeHiFiGAN checkpoint (config.json + generator.safetensors,
models/generation/codehifigan.py). Every vocoder has the same small interface:

    n_units, sample_rate, hop_samples
    frames_per_unit(units, dedup) -> frames each unit is rendered for
    synthesize(units, frames)     -> float32 waveform of sum(frames) * hop_samples samples
    describe()                    -> provenance (kind, path, sha256, ...)

A vocoder is refused when its unit inventory is not the model's (a different K), when its frame rate is not
the tokenizer's (the audio would play at the wrong speed), or when it was built for another tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError

__all__ = ["load_vocoder", "check_vocoder"]


def load_vocoder(spec: str | Path, tokenizer_info: dict[str, Any], *, tokenizer=None, sha256: str | None = None,
                 cache_dir: str | Path | None = None, device: str = "cpu", speaker: int = 0):
    """The vocoder named by `spec` for a model whose tokenizer is `tokenizer_info` (hash, k, frame_rate_hz).
    `tokenizer` (a UnitTokenizer) is needed to build the embedded vocoder on first use."""
    from slmscale.models.generation.codehifigan import CONFIG_FILE, load_codehifigan
    from slmscale.models.generation.exemplar import EXEMPLAR_FILES, embedded_vocoder, load_exemplar_vocoder

    text = str(spec)
    if text == "embedded":
        if tokenizer is None:
            raise SlmscaleError(f"--vocoder embedded: the model's tokenizer ({tokenizer_info.get('id')}) cannot turn "
                                "audio into units here, so no exemplar vocoder can be built for it; expected a model "
                                "trained on audio units (mfcc / hubert), or --vocoder DIR")
        vocoder = embedded_vocoder(tokenizer, cache_dir)
    else:
        root = Path(text).expanduser()
        if (root / EXEMPLAR_FILES[0]).is_file():
            vocoder = load_exemplar_vocoder(root)
        elif root.is_dir() and not (root / CONFIG_FILE).is_file():
            raise SlmscaleError(f"--vocoder {root}: neither {EXEMPLAR_FILES[0]} (exemplar vocoder) nor {CONFIG_FILE} "
                                "(CodeHiFiGAN), expected 'embedded' or a vocoder directory")
        else:
            vocoder = load_codehifigan(root, sha256=sha256, device=device, speaker=speaker)
    if sha256 and vocoder.describe().get("sha256") != sha256.lower():
        raise SlmscaleError(f"--vocoder-sha256: {spec} has sha256 {vocoder.describe().get('sha256')}, expected the "
                            f"pinned {sha256}")
    check_vocoder(vocoder, tokenizer_info, str(spec))
    return vocoder


def check_vocoder(vocoder, tokenizer_info: dict[str, Any], where: str) -> None:
    """Refuse a vocoder whose units or frame rate are not the model's."""
    k = tokenizer_info.get("k")
    if k is not None and vocoder.n_units != int(k):
        raise SlmscaleError(f"--vocoder {where}: it renders {vocoder.n_units} units, but the model's vocabulary has "
                            f"{k} units; expected a vocoder trained on the model's tokenizer")
    own_hash = getattr(vocoder, "tokenizer_hash", None)
    if own_hash and tokenizer_info.get("hash") and own_hash != tokenizer_info["hash"]:
        raise SlmscaleError(f"--vocoder {where}: built for tokenizer hash {own_hash[:16]}, but the model's units come "
                            f"from tokenizer hash {str(tokenizer_info['hash'])[:16]}; expected a vocoder of the "
                            "model's tokenizer")
    rate = tokenizer_info.get("frame_rate_hz")
    if rate:
        have = vocoder.sample_rate / vocoder.hop_samples
        if abs(have - float(rate)) > 1e-6 * float(rate):
            raise SlmscaleError(f"--vocoder {where}: renders {have:g} units per second ({vocoder.hop_samples} samples "
                                f"at {vocoder.sample_rate} Hz), but the model's tokenizer has {float(rate):g} frames per "
                                "second; expected a vocoder of the same frame rate")
