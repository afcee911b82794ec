"""`EncodeConfig`: one typed schema for `encode`; bad values raise SlmscaleError naming the field (and its flag) —
no Ray, no audio."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from slmscale.errors import SlmscaleError
from slmscale.tokenization.config import EncodeConfig
from slmscale.tokenization.encode import encode


def test_defaults_and_coercion(tmp_path):
    cfg = EncodeConfig(manifest=str(tmp_path / "m.parquet"), out_dir=str(tmp_path / "u"))
    assert cfg.manifest == tmp_path / "m.parquet" and isinstance(cfg.out_dir, Path)
    assert (cfg.tokenizer, cfg.layer, cfg.kmeans, cfg.actors, cfg.gpus_per_actor, cfg.batch_size) == (
        "mfcc", None, None, None, None, None)
    assert (cfg.dedup, cfg.rows_per_shard, cfg.chunk_s, cfg.decode_cpus, cfg.window_rows, cfg.progress) == (
        True, 1000, 60.0, 0.25, 100_000, True)
    # meta.json extra.encode keeps the keys (and their order) it had before the schema existed
    assert list(cfg.run_settings()) == ["rows_per_shard", "chunk_s", "dedup", "actors", "gpus_per_actor",
                                        "batch_size", "decode_cpus", "window_rows"]
    json.dumps(cfg.run_settings())
    assert EncodeConfig(manifest="m", out_dir="u", chunk_s=30).chunk_s == 30.0
    hub = EncodeConfig(manifest="m", out_dir="u", tokenizer="hubert:/ckpt", layer=6, kmeans="km500",
                       gpus_per_actor=1)
    assert hub.layer == 6 and hub.kmeans == Path("km500")
    with pytest.raises(ValidationError, match="frozen"):  # a config is a value
        cfg.rows_per_shard = 5
    for field, desc in ((n, f.description) for n, f in EncodeConfig.model_fields.items()):
        assert desc, f"field {field} has no description"


@pytest.mark.parametrize("kwargs, field, flag", [
    (dict(rows_per_shard=0), "rows_per_shard", "--rows-per-shard"),
    (dict(rows_per_shard=2.5), "rows_per_shard", "--rows-per-shard"),
    (dict(chunk_s=0.5), "chunk_s", "--chunk-s"),
    (dict(actors=0), "actors", "--actors"),
    (dict(gpus_per_actor=-1), "gpus_per_actor", "--gpus-per-actor"),
    (dict(batch_size=0), "batch_size", "--batch-size"),
    (dict(window_rows="many"), "window_rows", "--window-rows"),
    (dict(decode_cpus=0), "decode_cpus", None),
    (dict(tokenizer="wav2vec"), "tokenizer", "--tokenizer"),
    (dict(tokenizer="hubert"), "tokenizer", "--tokenizer"),
    (dict(layer=3), "layer", "--layer"),  # mfcc has no layers
    (dict(tokenizer="hubert:/ckpt", layer=-1), "layer", "--layer"),
    (dict(workers=2), "workers", None),  # unknown field
])
def test_bad_values_name_the_field(kwargs, field, flag):
    args = {"manifest": "m.parquet", "out_dir": "units", **kwargs}
    with pytest.raises(SlmscaleError) as err:
        EncodeConfig(**args)
    msg = str(err.value)
    assert msg.startswith("encode config: ") and f"field '{field}'" in msg and "\n" not in msg, msg
    if flag:
        assert f"({flag})" in msg, msg


def test_missing_fields_are_named():
    with pytest.raises(SlmscaleError, match=r"^encode config: missing field 'manifest' \(--manifest\); "
                                            r"missing field 'out_dir' \(-o/--output\)$"):
        EncodeConfig()


def test_encode_takes_a_config_or_arguments_not_both(tmp_path):
    cfg = EncodeConfig(manifest=tmp_path / "none.parquet", out_dir=tmp_path / "u")
    with pytest.raises(SlmscaleError, match="manifest not found"):  # the config form runs (and checks files)
        encode(cfg)
    with pytest.raises(TypeError, match="rows_per_shard"):
        encode(cfg, rows_per_shard=5)
    with pytest.raises(SlmscaleError, match=r"field 'out_dir'"):
        encode(tmp_path / "none.parquet", "mfcc")
    with pytest.raises(SlmscaleError, match=r"field 'rows_per_shard' \(--rows-per-shard\)"):
        encode(tmp_path / "none.parquet", "mfcc", tmp_path / "u", rows_per_shard=0)  # before any file is read
    assert not (tmp_path / "u").exists()
