"""A unit tokenizer = a feature extractor (`mfcc` or `hubert:DIR` at layer L) + a k-means codebook.

`load_tokenizer("mfcc")` needs nothing else: the package ships a codebook fitted on speech synthesised by
`tokenization.synth` (see `tokenization/fit_mfcc_codebook.py`). `load_tokenizer("hubert:/ckpt", layer=11,
kmeans="km500")` loads a local HuBERT checkpoint. The tokenizer hash covers the feature description (MFCC
config, or HuBERT weights + layer) and the codebook contents: equal hashes mean identical units.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.tokenization.kmeans import Codebook, codebook_paths, load_codebook

__all__ = ["TokenizerSpec", "UnitTokenizer", "load_tokenizer", "parse_tokenizer", "make_extractor", "MFCC_CODEBOOK", "MIN_SAMPLES"]

MFCC_CODEBOOK = Path(__file__).resolve().parent / "data" / "mfcc_k100"
MIN_SAMPLES = 400  # one 25 ms window at 16 kHz; also HuBERT's conv receptive field


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to rebuild a tokenizer inside a Ray actor (plain, picklable values)."""

    kind: str  # "mfcc" | "hubert"
    model_dir: str | None = None
    layer: int | None = None
    kmeans: str | None = None
    device: str | None = None  # None: cuda when available

    def validate(self) -> TokenizerSpec:
        if self.kind not in ("mfcc", "hubert"):
            raise SlmscaleError(f"--tokenizer: expected 'mfcc' or 'hubert:DIR', got kind {self.kind!r}")
        if self.kind == "mfcc" and self.layer is not None:
            raise SlmscaleError("--layer: only applies to hubert tokenizers, not mfcc")
        if self.kind == "hubert" and not self.model_dir:
            raise SlmscaleError("--tokenizer hubert: expected 'hubert:DIR' with a local checkpoint directory")
        return self

    @property
    def name(self) -> str:
        return "mfcc" if self.kind == "mfcc" else f"hubert:{self.model_dir}"


def parse_tokenizer(tokenizer: str, layer: int | None = None, kmeans: str | Path | None = None,
                    device: str | None = None) -> TokenizerSpec:
    kind, _, rest = str(tokenizer).partition(":")
    model_dir = str(Path(rest).expanduser().resolve()) if rest else None
    if kmeans is None and kind == "hubert" and model_dir and codebook_paths(Path(model_dir) / "kmeans")[0].is_file():
        kmeans = Path(model_dir) / "kmeans"  # a checkpoint folder may carry its codebook
    return TokenizerSpec(kind=kind, model_dir=model_dir, layer=layer,
                         kmeans=str(Path(kmeans).expanduser().resolve()) if kmeans else None, device=device).validate()


def _check_compatible(codebook: Codebook, features: dict, where: str) -> None:
    fitted = codebook.features or {}
    for key in ("kind", "layer", "weights_sha256", "config"):
        if key in fitted and key in features and fitted[key] != features[key]:
            raise SlmscaleError(f"{where}: codebook was fitted on features with {key}={fitted[key]!r}, "
                                f"but the tokenizer produces {key}={features[key]!r}")


def make_extractor(spec: TokenizerSpec):
    """The feature extractor of a spec (MfccExtractor or HubertExtractor)."""
    if spec.kind == "mfcc":
        from slmscale.tokenization.mfcc import MfccExtractor

        return MfccExtractor()
    from slmscale.tokenization.hubert import HubertExtractor

    return HubertExtractor(spec.model_dir, layer=spec.layer, device=spec.device)


class UnitTokenizer:
    """Waveforms (16 kHz mono float32) -> per-frame unit ids (uint16), before deduplication."""

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec.validate()
        if spec.kind == "hubert" and not spec.kmeans:
            raise SlmscaleError(f"--kmeans: hubert tokenizer {spec.model_dir} needs a k-means codebook "
                                "(fit one with `slmscale tokenize fit-kmeans` or convert one with `import-kmeans`)")
        self.extractor = make_extractor(spec)
        kmeans_path = spec.kmeans or str(MFCC_CODEBOOK)
        self.codebook = load_codebook(kmeans_path)
        self.kmeans_path = str(codebook_paths(kmeans_path)[0])
        if self.codebook.dim != self.extractor.dim:
            raise SlmscaleError(f"--kmeans {self.kmeans_path}: centroids have dimension {self.codebook.dim}, "
                                f"but {spec.name} features have dimension {self.extractor.dim}")
        self.features = self.extractor.describe()
        _check_compatible(self.codebook, self.features, f"--kmeans {self.kmeans_path}")

    @property
    def vocab_size(self) -> int:
        return self.codebook.k

    @property
    def frame_rate_hz(self) -> float:
        return float(self.extractor.frame_rate_hz)

    @property
    def hash(self) -> str:
        blob = json.dumps({"features": self.features, "codebook": self.codebook.hash}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def info(self) -> dict[str, Any]:
        """The `tokenizer` object of meta.json."""
        return {"kind": self.spec.kind, "id": self.spec.name, "hash": self.hash, "layer": self.extractor.layer,
                "frame_rate_hz": self.frame_rate_hz, "k": self.vocab_size, "features": self.features,
                "kmeans": self.kmeans_path, "kmeans_hash": self.codebook.hash}

    def frame_units(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Per-frame unit ids for each waveform."""
        if self.spec.kind == "hubert":
            feats = self.extractor.batch_tensors(wavs)  # on the device; one batched argmin and one transfer (GPU)
            return self.codebook.assign_many_torch(feats, self.extractor.device)
        return [self.codebook.assign(f) for f in self.extractor.batch(wavs)]


def load_tokenizer(tokenizer: str = "mfcc", layer: int | None = None, kmeans: str | Path | None = None,
                   device: str | None = None) -> UnitTokenizer:
    return UnitTokenizer(parse_tokenizer(tokenizer, layer=layer, kmeans=kmeans, device=device))
