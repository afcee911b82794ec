"""Typed configuration of the tokenization stage: `EncodeConfig` (what `encode` runs) and the one-line error helper.

pydantic v2 models with `extra="forbid"`: an unknown or ill-typed field raises `SlmscaleError` with a message that
names the field (and the `slmscale tokenize encode` flag that sets it), printed by the CLI as one line.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from slmscale.typed import TypedConfig

__all__ = ["EncodeConfig"]


# field -> the `slmscale tokenize encode` option that sets it (named in error messages)
ENCODE_FLAGS = {
    "manifest": "--manifest", "tokenizer": "--tokenizer", "out_dir": "-o/--output", "layer": "--layer",
    "kmeans": "--kmeans", "actors": "--actors", "gpus_per_actor": "--gpus-per-actor", "dedup": "--no-dedup",
    "rows_per_shard": "--rows-per-shard", "chunk_s": "--chunk-s", "batch_size": "--batch-size",
    "window_rows": "--window-rows", "progress": "-q/--quiet",
}

# the fields recorded as meta.json extra.encode (the settings of the run, not its inputs)
RUN_SETTINGS = ("rows_per_shard", "chunk_s", "dedup", "actors", "gpus_per_actor", "batch_size", "decode_cpus",
                "window_rows")


class EncodeConfig(TypedConfig):
    """Everything `tokenization.encode.encode` runs from: inputs, tokenizer, output, and how Ray Data runs it.

    `encode(manifest, tokenizer, out_dir, **options)` builds one; `encode(EncodeConfig(...))` takes one directly.
    Checks here need no file system; `encode` itself checks the manifest, checkpoint and codebook files, and the
    running cluster (GPUs for `gpus_per_actor`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    config_name: ClassVar[str] = "encode config"
    config_flags: ClassVar[Mapping[str, str]] = ENCODE_FLAGS

    manifest: Path = Field(description="manifest Parquet from `tokenize manifest` or `tokenize synth`")
    tokenizer: str = Field("mfcc", description="'mfcc' (embedded, shipped codebook) or 'hubert:DIR' (a local "
                                                "HubertModel checkpoint directory)")
    out_dir: Path = Field(description="unit dataset directory (UNITS_DIR); rerunning the same config resumes")
    layer: int | None = Field(None, ge=0, description="HuBERT layer whose output is clustered (hubert only); "
                                                      "None means the extractor's default, 11")
    kmeans: Path | None = Field(None, description="k-means codebook NAME(.npy) with NAME.json; None means the "
                                                  "shipped one for mfcc, DIR/kmeans for hubert")
    actors: int | None = Field(None, ge=1, description="tokenizer actors; None means one per CPU, or one per GPU")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs per actor; None means 1 for hubert when "
                                                                 "the cluster has GPUs, else 0")
    dedup: bool = Field(True, description="collapse consecutive repeated units (durations are kept)")
    rows_per_shard: int = Field(1000, ge=1, description="manifest rows (files) per output shard: the unit of "
                                                        "resumption")
    chunk_s: float = Field(60.0, ge=1.0, description="files longer than this many seconds are split into chunks "
                                                     "(utt_id#NNNN)")
    batch_size: int | None = Field(None, ge=1, description="chunks per actor call; None means 8 on CPU, 32 on GPU")
    decode_cpus: float = Field(0.25, gt=0, le=64, description="CPU share per decode task beside GPU actors (CPU "
                                                              "actors decode their own rows)")
    window_rows: int = Field(100_000, ge=1, description="manifest rows per Ray Data execution (whole shards): "
                                                        "bounds the driver's bookkeeping on huge manifests")
    progress: bool = Field(True, description="show a progress bar of files encoded")

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_kind(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        if kind not in ("mfcc", "hubert"):
            raise ValueError("expected 'mfcc' or 'hubert:DIR'")
        if kind == "hubert" and not rest:
            raise ValueError("expected 'hubert:DIR' with a local checkpoint directory")
        return value

    @field_validator("layer")
    @classmethod
    def _layer_needs_hubert(cls, value: int | None, info: ValidationInfo) -> int | None:
        tokenizer = info.data.get("tokenizer")
        if value is not None and tokenizer is not None and not tokenizer.startswith("hubert:"):
            raise ValueError(f"only applies to hubert tokenizers, not {tokenizer}")
        return value

    def run_settings(self) -> dict[str, Any]:
        """The run's settings as recorded in meta.json `extra.encode`."""
        return {name: getattr(self, name) for name in RUN_SETTINGS}
