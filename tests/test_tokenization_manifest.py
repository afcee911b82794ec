"""Audio manifests from folders and lists; unreadable files become rejects, not exceptions."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from slmscale.errors import SlmscaleError
from slmscale.io import sha256_file
from slmscale.tokenization.manifest import MANIFEST_SCHEMA, build_manifest, read_manifest, rejects_path_for


def _tone(path, sr=16000, seconds=1.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr)


def test_folder_manifest_records_headers_and_rejects(tmp_path):
    src = tmp_path / "corpus"
    (src / "spk1").mkdir(parents=True)
    _tone(src / "spk1" / "a.wav", sr=16000, seconds=1.5)
    _tone(src / "b.flac", sr=44100, seconds=0.5, channels=2)
    _tone(src / "c.ogg", sr=8000, seconds=1.0)
    _tone(src / "d.mp3", sr=22050, seconds=1.0)
    (src / "empty.wav").write_bytes(b"")
    (src / "text.mp3").write_bytes(b"this is not audio" * 10)
    (src / "notes.txt").write_text("ignored: not an audio extension")
    out = build_manifest(src, tmp_path / "m.parquet", progress=False)
    table = read_manifest(out)
    assert table.schema.names == MANIFEST_SCHEMA.names
    rows = {r["utt_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["b", "c", "d", "spk1/a"]
    assert rows["spk1/a"]["sample_rate"] == 16000 and rows["spk1/a"]["duration_s"] == pytest.approx(1.5)
    assert rows["b"]["channels"] == 2 and rows["b"]["sample_rate"] == 44100
    assert rows["c"]["sample_rate"] == 8000
    assert rows["d"]["sample_rate"] == 22050 and rows["d"]["duration_s"] == pytest.approx(1.0, abs=0.1)
    assert rows["spk1/a"]["sha256"] == sha256_file(src / "spk1" / "a.wav")
    assert rows["spk1/a"]["source"] == "corpus" and rows["spk1/a"]["transcript"] is None
    rejects = pq.read_table(rejects_path_for(out)).to_pylist()
    assert sorted((r["source"].rsplit("/", 1)[1], r["reason"]) for r in rejects) == [("empty.wav", "empty"), ("text.mp3", "not_audio")]
    assert len(rows) + len(rejects) == 6  # every audio-extension file is accounted for


def test_tsv_and_jsonl_lists(tmp_path):
    _tone(tmp_path / "x.wav")
    _tone(tmp_path / "y.wav")
    tsv = tmp_path / "list.tsv"
    tsv.write_text("path\tutt_id\ttranscript\tspeaker\nx.wav\tu1\thello there\tbob\ny.wav\tu2\t\t\nmissing.wav\tu3\t\t\n")
    table = read_manifest(build_manifest(tsv, tmp_path / "t.parquet", source="mine", progress=False)).to_pylist()
    assert [(r["utt_id"], r["transcript"], r["speaker"], r["source"]) for r in table] == [
        ("u1", "hello there", "bob", "mine"), ("u2", None, None, "mine")]
    assert pq.read_table(rejects_path_for(tmp_path / "t.parquet")).column("reason").to_pylist() == ["missing"]
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"path": str(tmp_path / "x.wav"), "transcript": "hi"},
                                                        {"path": "y.wav", "utt_id": "why"}]) + "\n")
    rows = read_manifest(build_manifest(jsonl, tmp_path / "j.parquet", progress=False)).to_pylist()
    assert [(r["utt_id"], r["transcript"]) for r in rows] == [("x", "hi"), ("why", None)]


def test_bad_lists_and_sources_are_named(tmp_path):
    with pytest.raises(SlmscaleError, match="no such folder"):
        build_manifest(tmp_path / "nope", tmp_path / "m.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SlmscaleError, match="no audio files"):
        build_manifest(tmp_path / "empty_dir", tmp_path / "m.parquet")
    bad = tmp_path / "bad.tsv"
    bad.write_text("file\tutt_id\na.wav\tx\n")
    with pytest.raises(SlmscaleError, match="'path'"):
        build_manifest(bad, tmp_path / "m.parquet")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"path": "a.wav", "utt_id": "x"}\n{"path": "b.wav", "utt_id": "x"}\n')
    with pytest.raises(SlmscaleError, match="duplicate utt_id"):
        build_manifest(dup, tmp_path / "m.parquet")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"path": "a.wav"\n')
    with pytest.raises(SlmscaleError, match="broken.jsonl:1"):
        build_manifest(broken, tmp_path / "m.parquet")
    (tmp_path / "notparquet.parquet").write_text("hello")
    with pytest.raises(SlmscaleError, match="not a readable Parquet"):
        read_manifest(tmp_path / "notparquet.parquet")
