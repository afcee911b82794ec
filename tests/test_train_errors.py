"""Bad input is refused with a clear SlmscaleError before any training compute (no metrics, no checkpoint)."""
from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from slmscale.errors import SlmscaleError
from slmscale.models.synthetic_units import write_pattern_units
from slmscale.models.train import TrainConfig, train
from slmscale.tokenization.schema import UNIT_SHARD_SCHEMA, UnitsMeta, write_meta, write_shard


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return write_pattern_units(tmp_path_factory.mktemp("units") / "u", n_units=40, n_utterances=300, seed=4)


def _cfg(units, out, **kw):
    return TrainConfig(**{**dict(units_dir=str(units), model="tiny-100K", out_dir=str(out), tokens=512 * 4,
                                 threads=1, progress=False), **kw})


def _no_compute(out):
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_unit_ids_not_below_vocab(tmp_path):
    rows = [{"utt_id": f"u{i:03d}", "units": [1, 2, 3, 4] * 10, "durations": [1] * 40, "n_frames": 40, "n_units": 40,
             "duration_s": 1.0, "source": "s", "sha256": ""} for i in range(300)]
    rows[123]["units"] = [1, 2, 40] + [3] * 37  # 40 == K: the EOS id, not a unit
    write_shard(tmp_path / "bad" / "shard-00000.parquet", pa.Table.from_pylist(rows, schema=UNIT_SHARD_SCHEMA))
    write_meta(tmp_path / "bad", UnitsMeta(vocab_size=40, tokenizer={"kind": "synthetic", "hash": "h"}))
    with pytest.raises(SlmscaleError, match=r"unit id 40 is out of range for vocab_size 40 .*'u123'"):
        train(_cfg(tmp_path / "bad", tmp_path / "run"))
    _no_compute(tmp_path / "run")


def test_empty_or_missing_unit_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmscaleError, match="no meta.json"):
        train(_cfg(tmp_path / "empty", tmp_path / "run"))
    write_meta(tmp_path / "empty", UnitsMeta(vocab_size=40, tokenizer={"kind": "synthetic", "hash": "h"}))
    with pytest.raises(SlmscaleError, match="no shard-.*empty"):
        train(_cfg(tmp_path / "empty", tmp_path / "run"))
    (tmp_path / "empty" / "shard-00000.parquet").write_bytes(b"PAR1 truncated")  # a shard cut short by a crash
    with pytest.raises(SlmscaleError, match=r"shard-00000.parquet: cannot read as a unit shard"):
        train(_cfg(tmp_path / "empty", tmp_path / "run"))
    with pytest.raises(SlmscaleError, match="not a directory"):
        train(_cfg(tmp_path / "nowhere", tmp_path / "run"))
    _no_compute(tmp_path / "run")


def test_budget_smaller_than_one_update(units, tmp_path):
    with pytest.raises(SlmscaleError, match=r"tokens: the budget D=500 is smaller than one optimizer update \(512"):
        train(_cfg(units, tmp_path / "run", tokens=500))
    with pytest.raises(SlmscaleError, match="not a multiple of the context"):
        train(_cfg(units, tmp_path / "run", tokens_per_update=100))
    _no_compute(tmp_path / "run")


def test_bad_config_fields_are_named(units, tmp_path):
    with pytest.raises(SlmscaleError, match="field 'lr'"):
        train(_cfg(units, tmp_path / "run", lr=-1.0))
    with pytest.raises(SlmscaleError, match="field 'min_lr'"):
        train(_cfg(units, tmp_path / "run", min_lr=1.0))
    with pytest.raises(SlmscaleError, match="unknown model size"):
        train(_cfg(units, tmp_path / "run", model="1T"))
    with pytest.raises(SlmscaleError, match="field 'parallel' = 'fsdp' needs the Ray Train path on GPUs"):
        train(_cfg(units, tmp_path / "run", parallel="fsdp", workers=2, gpus_per_worker=0))
    with pytest.raises(SlmscaleError, match="unique_tokens: 99999999 exceeds"):
        train(_cfg(units, tmp_path / "run", unique_tokens=99_999_999))


def test_checkpoint_of_another_model_size(units, tmp_path):
    small = _cfg(units, tmp_path / "small", checkpoint_every=2)
    train(small)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(tmp_path / "small" / "checkpoints", other / "checkpoints")
    with pytest.raises(SlmscaleError, match=r"checkpoint belongs to another model: model='tiny-100K' \(this run: 'tiny-1M'\)"):
        train(_cfg(units, other, model="tiny-1M", tokens=2048 * 2))
    assert not (other / "metrics.jsonl").exists()
    # the same run directory with a different model size is refused from its config.json
    with pytest.raises(SlmscaleError, match=r"resuming with a different config is refused \(model: run has 'tiny-100K'"):
        train(_cfg(units, tmp_path / "small", model="tiny-1M"))
    # and a run directory whose units changed
    moved = write_pattern_units(tmp_path / "units2", n_units=40, n_utterances=300, seed=5)
    with pytest.raises(SlmscaleError, match="is not the one the run"):
        train(_cfg(moved, tmp_path / "small", checkpoint_every=2))
