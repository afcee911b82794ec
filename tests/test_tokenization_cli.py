"""`slmscale tokenize ...` commands (in-process through slmscale.cli.main), unigram train/apply and stats."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import soundfile as sf

from slmscale.cli import build_parser, main
from slmscale.io import code_version
from slmscale.tokenization.dedup import collapse_runs
from slmscale.tokenization.schema import (
    UNIT_SHARD_SCHEMA,
    UnitsMeta,
    read_meta,
    read_units_table,
    write_meta,
    write_shard,
)
from slmscale.tokenization.tokenizer import load_tokenizer
from slmscale.tokenization.unigram import units_to_text


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_at_every_level(capsys):
    for argv in (["tokenize"], ["tokenize", "manifest"], ["tokenize", "encode"], ["tokenize", "fit-kmeans"],
                 ["tokenize", "import-kmeans"], ["tokenize", "unigram"], ["tokenize", "unigram", "train"],
                 ["tokenize", "unigram", "apply"], ["tokenize", "synth"], ["tokenize", "stats"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv + ["--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "usage: slmscale " + " ".join(argv) in text
    encode_help = build_parser().format_help()
    assert "tokenize" in encode_help


@pytest.fixture(scope="module")
def story_units(tmp_path_factory):
    """`tokenize synth --stories 16` + `tokenize manifest`, then units written in-process (no Ray needed here)."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["tokenize", "synth", "--stories", "16", "-o", str(root / "audio"), "-q", "--rates", "170", "200"]) == 0
    assert main(["tokenize", "manifest", str(root / "audio"), "-o", str(root / "m.parquet"), "-q"]) == 0
    tok = load_tokenizer("mfcc")
    rows = []
    for r in pq.read_table(root / "m.parquet").to_pylist():
        wav, _ = sf.read(r["path"], dtype="float32")
        frames = tok.frame_units([wav])[0]
        units, durs = collapse_runs(frames)
        rows.append({"utt_id": r["utt_id"], "units": units, "durations": durs, "n_frames": len(frames),
                     "n_units": len(units), "duration_s": len(wav) / 16000, "source": "stinystories",
                     "sha256": r["sha256"]})
    units_dir = root / "units"
    write_shard(units_dir / "shard-00000.parquet", pa.Table.from_pylist(rows[:8], schema=UNIT_SHARD_SCHEMA))
    write_shard(units_dir / "shard-00001.parquet", pa.Table.from_pylist(rows[8:], schema=UNIT_SHARD_SCHEMA))
    write_meta(units_dir, UnitsMeta(vocab_size=100, tokenizer=tok.info(), counts={"units": sum(r["n_units"] for r in rows)},
                                    code_version=code_version()))
    return root


def test_synth_stories_writes_transcribed_manifest(story_units):
    table = pq.read_table(story_units / "audio" / "manifest.parquet").to_pylist()
    assert len(table) == 16 and all(r["transcript"] and r["duration_s"] > 3 for r in table)
    assert {r["speaker"].split("@")[1] for r in table} == {"170", "200"}
    assert len({r["speaker"] for r in table}) == 10  # 5 default voices x 2 rates
    manifest = pq.read_table(story_units / "m.parquet")
    assert manifest.num_rows == 16


def test_stats_command(story_units, capsys):
    rc, out, _ = _run(capsys, "tokenize", "stats", str(story_units / "units"))
    assert rc == 0 and "stinystories" in out and "units_per_s" in out and "total" in out
    rc, out, _ = _run(capsys, "tokenize", "stats", str(story_units / "units"), "--json")
    records = {r["source"]: r for r in json.loads(out)}
    table = read_units_table(story_units / "units")
    total = records["total"]
    assert total["utterances"] == 16 == table.num_rows
    assert total["units"] == sum(table.column("n_units").to_pylist())
    assert total["hours"] == pytest.approx(sum(table.column("duration_s").to_pylist()) / 3600, rel=1e-5)
    assert total["units_per_s"] == pytest.approx(total["units"] / (total["hours"] * 3600), rel=1e-5)
    assert 20 < total["units_per_s"] < 100


def test_unigram_train_and_apply(story_units, capsys, tmp_path):
    units_dir = story_units / "units"
    rc, out, err = _run(capsys, "tokenize", "unigram", "train", str(units_dir), "--vocab-size", "300",
                        "-o", str(tmp_path / "uni"))
    assert rc == 0, err
    assert (tmp_path / "uni.model").is_file() and (tmp_path / "uni.json").is_file()
    rc, out, err = _run(capsys, "tokenize", "unigram", "apply", str(units_dir), "--model", str(tmp_path / "uni"),
                        "-o", str(tmp_path / "pieces"))
    assert rc == 0, err
    parent = read_meta(units_dir)
    meta = read_meta(tmp_path / "pieces")
    assert 101 < meta.vocab_size <= 300 and meta.tokenizer["kind"] == "unigram"  # soft limit on a small corpus
    assert json.loads((tmp_path / "uni.json").read_text())["vocab_size"] == meta.vocab_size
    assert meta.tokenizer["parent"]["hash"] == parent.tokenizer_hash != meta.tokenizer_hash
    assert meta.extra["parent"]["tokenizer"]["hash"] == parent.tokenizer_hash
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "uni.model"))
    before = {r["utt_id"]: r for r in read_units_table(units_dir, ("utt_id", "units", "durations")).to_pylist()}
    after = read_units_table(tmp_path / "pieces").to_pylist()
    assert [r["utt_id"] for r in after] == list(before)
    for r in after:
        src = before[r["utt_id"]]
        assert max(r["units"]) < meta.vocab_size and r["n_units"] == len(r["units"]) <= len(src["units"])
        assert sp.decode(r["units"]) == units_to_text(src["units"])  # lossless: pieces spell the unit string
        assert sum(r["durations"]) == sum(src["durations"])  # piece durations cover the same frames
    assert meta.counts["compression"] > 1.0  # MFCC units are noisy: multi-unit pieces are rare but present
    rc, _, err = _run(capsys, "tokenize", "unigram", "train", str(units_dir), "--vocab-size", "50", "-o", str(tmp_path / "x"))
    assert rc == 2 and "--vocab-size 50" in err


def test_fit_and_import_kmeans_commands(story_units, capsys, tmp_path):
    rc, _, err = _run(capsys, "tokenize", "fit-kmeans", "--manifest", str(story_units / "m.parquet"), "-k", "20",
                      "-o", str(tmp_path / "km20"), "--max-files", "4", "-q")
    assert rc == 0, err
    centroids = np.load(tmp_path / "km20.npy")
    meta = json.loads((tmp_path / "km20.json").read_text())
    assert centroids.shape == (20, 39) and meta["k"] == 20 and meta["features"]["kind"] == "mfcc"
    tok = load_tokenizer("mfcc", kmeans=tmp_path / "km20")
    assert tok.vocab_size == 20 and tok.hash != load_tokenizer("mfcc").hash

    import joblib
    from sklearn.cluster import KMeans

    joblib.dump(KMeans(n_clusters=3, n_init=1, random_state=0).fit(centroids), tmp_path / "km.pkl")
    rc, _, err = _run(capsys, "tokenize", "import-kmeans", str(tmp_path / "km.pkl"), "-o", str(tmp_path / "imp"),
                      "--features", "mfcc")
    assert rc == 2 and "--trust-pickle" in err and not (tmp_path / "imp.npy").exists()
    rc, _, err = _run(capsys, "tokenize", "import-kmeans", str(tmp_path / "km.pkl"), "-o", str(tmp_path / "imp"),
                      "--features", "hubert", "--layer", "11", "--trust-pickle")
    assert rc == 0, err
    assert np.load(tmp_path / "imp.npy").shape == (3, 39)
    assert json.loads((tmp_path / "imp.json").read_text())["features"] == {"kind": "hubert", "layer": 11}


def test_cli_errors_are_one_line(capsys, tmp_path):
    rc, _, err = _run(capsys, "tokenize", "stats", str(tmp_path / "nothing"))
    assert rc == 2 and err.count("\n") == 1 and "not a directory" in err
    rc, _, err = _run(capsys, "tokenize", "synth", "--text", str(tmp_path / "none.txt"), "-o", str(tmp_path / "a"))
    assert rc == 2 and "--text" in err
    rc, _, err = _run(capsys, "tokenize", "manifest", str(tmp_path / "nope"), "-o", str(tmp_path / "m.parquet"))
    assert rc == 2 and "no such folder" in err


def test_encode_checks_its_arguments_before_starting_ray(story_units, capsys, tmp_path, monkeypatch):
    """A wrong manifest or flag costs no Ray start-up (7-16 s): the error comes before ensure_ray is reached."""
    import slmscale.ray_utils

    started = []
    monkeypatch.setattr(slmscale.ray_utils, "ensure_ray", lambda *a, **k: started.append(a))
    rc, _, err = _run(capsys, "tokenize", "encode", "--manifest", str(tmp_path / "none.parquet"), "-o", str(tmp_path / "u"),
                      "--address", "127.0.0.1:9")
    assert rc == 2 and "manifest not found" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, "tokenize", "encode", "--manifest", str(story_units / "m.parquet"), "-o", str(tmp_path / "u"),
                      "--actors", "0")
    assert rc == 2 and "--actors" in err
    assert started == [] and not (tmp_path / "u").exists()


def test_encode_with_an_address_nobody_listens_on_fails_in_seconds(story_units, tmp_path):
    """`ray.init` would retry for minutes, deaf to SIGTERM; the address is checked before Ray is touched."""
    import socket
    import subprocess
    import sys
    import time

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "slmscale", "tokenize", "encode", "--manifest",
                           str(story_units / "m.parquet"), "-o", str(tmp_path / "u"), "--address", f"127.0.0.1:{port}",
                           "-q"], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2 and time.monotonic() - start < 45, proc.stderr[-2000:]
    assert f"could not reach a Ray cluster at --address '127.0.0.1:{port}'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "u").exists()


def test_synth_refuses_utt_ids_that_leave_the_output_folder(capsys, tmp_path):
    from slmscale.errors import SlmscaleError
    from slmscale.tokenization.synth import synthesize

    out = tmp_path / "deep" / "audio"
    for bad in ("../escape", "/tmp/escape", "a/../../escape", "a//b", "./a", ""):
        text = tmp_path / "lines.txt"
        text.write_text(f"ok1\tHello there.\n{bad}\tGoodbye.\n")
        rc, _, err = _run(capsys, "tokenize", "synth", "--text", str(text), "-o", str(out), "-q")
        assert rc == 2 and f"{text}:2: utt_id {bad!r}" in err and err.count("\n") == 1, err
        with pytest.raises(SlmscaleError, match="inside the output folder"):
            synthesize([("ok1", "Hello."), (bad, "Goodbye.")], out, progress=False)
    assert not any(p.suffix == ".wav" for p in tmp_path.rglob("*"))  # refused before anything was spoken
    assert synthesize([("spk1/utt1", "Hello there.")], out, progress=False).is_file()
    assert (out / "spk1" / "utt1.wav").is_file()


def test_stats_names_a_damaged_shard_in_one_line(story_units, capsys, tmp_path):
    import shutil

    units = tmp_path / "units"
    shutil.copytree(story_units / "units", units)
    shard = units / "shard-00001.parquet"
    assert json.loads((units / ".shards" / "shard-00001.json").read_text())["rows"] == 8  # recorded when written
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated copy
    rc, _, err = _run(capsys, "tokenize", "stats", str(units))
    assert rc == 2 and err.count("\n") == 1 and f"{shard}: corrupt unit shard" in err and "truncated" in err, err
    shutil.rmtree(units / ".shards")  # a dataset from before the records: Parquet itself refuses the file
    rc, _, err = _run(capsys, "tokenize", "stats", str(units))
    assert rc == 2 and err.count("\n") == 1 and f"{shard}: corrupt unit shard" in err and "not readable" in err, err
