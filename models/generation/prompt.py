"""The prompt of a continuation, as units of the model's own tokenizer.

    --prompt AUDIO        decoded to 16 kHz mono (tokenization.audio), tokenized by the tokenizer recorded in
                          the run (kind, layer, k-means codebook), whose hash must equal run.json's
                          tokenizer_hash (the same guard as evaluation: units of another tokenizer are
                          meaningless to the model), deduplicated when the training units were
    --prompt-units FILE   a JSON object {"tokenizer_hash": HASH, "units": [int, ...]} (what `generate` writes as
                          OUT/prompt_units.json); HASH must be the model's tokenizer hash and every unit < K
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError

__all__ = ["Prompt", "RunTokenizer", "run_tokenizer", "prompt_from_audio", "prompt_from_units_file"]


@dataclass
class RunTokenizer:
    """The model's tokenizer as far as this machine can rebuild it."""

    info: dict[str, Any]  # the meta.json `tokenizer` block (+ dedup), hash = run.json tokenizer_hash
    dedup: bool
    tokenizer: Any = None  # a UnitTokenizer, or None for unit-only tokenizers (unigram, synthetic)

    @property
    def hash(self) -> str:
        return str(self.info["hash"])


@dataclass
class Prompt:
    units: list[int]
    source: str
    durations: list[int] = field(default_factory=list)  # frames per unit, when the prompt came from audio
    wav: np.ndarray | None = None  # the decoded prompt audio (16 kHz), when there is one


def run_tokenizer(run_info: dict[str, Any], *, audio_for: str | None = None) -> RunTokenizer:
    """The run's tokenizer spec (training units' meta.json, else run.json); when `audio_for` names the flag that
    needs audio turned into units, the tokenizer itself, refused unless its hash is the one the model was
    trained on."""
    from slmscale.models.evaluation.encoding import tokenizer_spec
    from slmscale.tokenization.tokenizer import load_tokenizer

    spec = tokenizer_spec(run_info)
    if spec.get("k") is None:
        spec["k"] = run_info.get("units_vocab_size")
    dedup = bool(spec.get("dedup", True))
    if audio_for is None:
        return RunTokenizer(spec, dedup)
    kind = spec.get("kind") or str(spec.get("id") or "").partition(":")[0]
    if kind not in ("mfcc", "hubert"):
        raise SlmscaleError(f"{audio_for}: the model was trained on {kind or 'unknown'} units (tokenizer "
                            f"{spec.get('id')!r}), which cannot be made from audio here; expected --prompt-units "
                            "FILE and a vocoder directory for that tokenizer")
    kmeans = spec.get("kmeans")
    if kind == "mfcc" and kmeans and not Path(kmeans).exists():
        kmeans = None  # the recorded path is on another machine: the shipped codebook, checked by hash below
    name = "mfcc" if kind == "mfcc" else (spec["id"] if str(spec.get("id", "")).startswith("hubert:")
                                           else f"hubert:{spec.get('model')}")
    try:
        tok = load_tokenizer(name, layer=spec.get("layer"), kmeans=kmeans, device="cpu")
    except SlmscaleError as exc:
        raise SlmscaleError(f"{audio_for}: the model's tokenizer {name!r} cannot be rebuilt here: {exc}") from None
    if tok.hash != spec["hash"]:
        raise SlmscaleError(
            f"{audio_for}: tokenizer {name!r} (kmeans {kmeans or 'shipped'}) has hash {tok.hash[:16]}, but the model "
            f"was trained on units of tokenizer hash {spec['hash'][:16]}; expected the model's tokenizer (checkpoint, "
            "layer and k-means codebook at the paths its unit dataset's meta.json records)")
    spec.setdefault("frame_rate_hz", tok.frame_rate_hz)
    if spec.get("k") is None:
        spec["k"] = tok.vocab_size
    return RunTokenizer(spec, dedup, tok)


def prompt_from_audio(path: str | Path, run_tok: RunTokenizer) -> Prompt:
    from slmscale.tokenization.audio import AudioReject, decode_chunks
    from slmscale.tokenization.dedup import collapse_runs

    try:
        wav = np.concatenate([c.wav for c in decode_chunks(path, chunk_s=3600.0)])
    except AudioReject as exc:
        raise SlmscaleError(f"--prompt {path}: {exc.reason}: {exc.detail}, expected a readable speech recording") from None
    frames = run_tok.tokenizer.frame_units([wav])[0]
    if run_tok.dedup:
        units, durations = collapse_runs(frames)
    else:
        units, durations = frames, np.ones(len(frames), np.int64)
    return Prompt([int(u) for u in units], str(path), [int(d) for d in durations], wav)


def prompt_from_units_file(path: str | Path, run_tok: RunTokenizer) -> Prompt:
    path = Path(path)
    if not path.is_file():
        raise SlmscaleError(f"--prompt-units {path}: file not found, expected a JSON file with tokenizer_hash and units")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlmscaleError(f"--prompt-units {path}: not valid JSON ({exc}), expected "
                            '{"tokenizer_hash": HASH, "units": [int, ...]}') from None
    if not isinstance(obj, dict) or "units" not in obj or "tokenizer_hash" not in obj:
        raise SlmscaleError(f"--prompt-units {path}: expected a JSON object with fields 'tokenizer_hash' and 'units' "
                            "(as OUT/prompt_units.json of `slmscale generate`)")
    if obj["tokenizer_hash"] != run_tok.hash:
        raise SlmscaleError(
            f"--prompt-units {path}: units of tokenizer hash {str(obj['tokenizer_hash'])[:16]}, but the model was "
            f"trained on units of tokenizer hash {run_tok.hash[:16]} ({run_tok.info.get('id')}); units of another "
            "tokenizer mean nothing to this model — expected units made by the model's tokenizer")
    units = obj["units"]
    k = int(run_tok.info["k"])
    if not isinstance(units, list) or not units or not all(isinstance(u, int) and 0 <= u < k for u in units):
        raise SlmscaleError(f"--prompt-units {path}: field 'units' must be a non-empty list of integers in [0, {k})")
    durations = obj.get("durations") or []
    return Prompt(list(units), str(path), list(durations) if len(durations) == len(units) else [])
