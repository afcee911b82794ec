"""`encode` on Ray Data: end to end from synthesised speech, every bad input of issue 3, resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr

from slmscale.errors import SlmscaleError
from slmscale.tokenization.dedup import collapse_runs
from slmscale.tokenization.encode import encode
from slmscale.tokenization.manifest import build_manifest, read_manifest, write_manifest
from slmscale.tokenization.schema import UNIT_SHARD_SCHEMA, read_meta, read_units_table, shard_paths
from slmscale.tokenization.synth import synthesize, tts
from slmscale.tokenization.tokenizer import load_tokenizer

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent

SENTENCES = [
    "Tom had a red ball and he liked to play with it.",
    "Anna went to the park with her little dog.",
    "The sun was warm and the birds were singing.",
    "Once upon a time there was a shy fox.",
    "They shared the cookie and smiled.",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("mfcc")


def reference_units(tok, wav16k: np.ndarray) -> list[int]:
    return collapse_runs(tok.frame_units([wav16k])[0])[0].tolist()


def speech16k(text: str, voice: str = "en") -> np.ndarray:
    wav, sr = tts(text, voice=voice)
    return soxr.resample(wav, sr, 16000).astype(np.float32)


def test_synthesize_manifest_encode_end_to_end(ray_local, tmp_path, tok):
    audio = tmp_path / "audio"
    synthesize([(f"utt{i}", s) for i, s in enumerate(SENTENCES)], audio, progress=False)
    manifest = build_manifest(audio, tmp_path / "manifest.parquet", progress=False)
    out = tmp_path / "units"
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    executor_log = logging.getLogger("ray.data._internal.execution.streaming_executor")
    seen_levels = []

    def record(rec):
        seen_levels.append(rec.levelno)
        return True

    executor_log.addFilter(record)
    try:
        meta = encode(manifest, "mfcc", out, rows_per_shard=2, window_rows=4, progress=False)  # 2 Ray Data runs
    finally:
        executor_log.removeFilter(record)
    # Ray Data's INFO chatter is silenced during encode (we show our own bar) and its settings are restored
    assert logging.INFO not in seen_levels and (ctx.enable_progress_bars, ctx.print_on_execution_start) == before

    assert [p.name for p in shard_paths(out)] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    table = read_units_table(out)
    assert table.schema.equals(UNIT_SHARD_SCHEMA)
    rows = {r["utt_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == [f"utt{i}" for i in range(5)]
    for i in range(5):
        r = rows[f"utt{i}"]
        wav, sr = sf.read(audio / f"utt{i}.wav", dtype="float32")
        assert r["units"] == reference_units(tok, wav)  # the pipeline gives exactly the in-process units
        assert sum(r["durations"]) == r["n_frames"] and r["n_units"] == len(r["units"])
        assert r["duration_s"] == pytest.approx(len(wav) / 16000, abs=1e-4)
        assert r["source"] == "audio" and len(r["sha256"]) == 64
        assert all(a != b for a, b in zip(r["units"], r["units"][1:]))  # dedup: no consecutive repeats
    assert meta.vocab_size == 100 and meta.dedup
    assert meta.tokenizer["kind"] == "mfcc" and meta.tokenizer["hash"] == tok.hash
    assert meta.tokenizer["frame_rate_hz"] == 100.0
    assert meta.counts["utterances"] == 5 and meta.counts["rejected"] == 0
    assert meta.counts["units"] == sum(r["n_units"] for r in rows.values())
    assert read_meta(out).tokenizer_hash == tok.hash
    shard_meta = pq.read_schema(out / "shard-00000.parquet").metadata
    assert shard_meta[b"slmscale.tokenizer_hash"].decode() == tok.hash
    assert shard_meta[b"slmscale.code_version"].decode().startswith("slmscale")
    assert pq.read_table(out / "rejects.parquet").num_rows == 0
    # CPU-only actors decode their own rows: no decode operator, so no waveform crossed the object store
    assert meta.extra["resources"]["operators"] == ["FromArrow", "MapBatches(UnitActor)"]

    # a rerun finds everything done and rewrites no shard; a different setting is refused, nothing lost
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_paths(out)}
    meta_bytes = (out / "meta.json").read_bytes()
    again = encode(manifest, "mfcc", out, rows_per_shard=2, window_rows=4, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in shard_paths(out)} == stamps
    assert (out / "meta.json").read_bytes() == meta_bytes  # its hash identifies the dataset to trained runs
    assert again.counts == meta.counts
    with pytest.raises(SlmscaleError, match="dedup"):
        encode(manifest, "mfcc", out, rows_per_shard=2, dedup=False, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in shard_paths(out)} == stamps



def test_windows_group_whole_shards():
    from slmscale.tokenization.encode import _windows

    pending = {0: [0, 1], 1: [2, 3], 3: [6, 7], 4: [8]}
    assert _windows(pending, 4) == [{0: [0, 1], 1: [2, 3]}, {3: [6, 7], 4: [8]}]
    assert _windows(pending, 1) == [{0: [0, 1]}, {1: [2, 3]}, {3: [6, 7]}, {4: [8]}]  # a shard is never split
    assert _windows(pending, 100) == [pending]


def test_unit_actor_without_dedup_keeps_every_frame(tok):
    """The actor stage alone (no Ray): a batch with one chunk and one upstream reject."""
    from slmscale.tokenization.pipeline import UnitActor

    wav = speech16k(SENTENCES[3])
    batch = {"row": np.array([0, 1]), "shard": np.array([0, 0]), "chunk": np.array([0, 0]),
             "n_chunks": np.array([1, 1]), "utt_id": np.array(["a", "b"], dtype=object),
             "source": np.array(["s", None], dtype=object), "sha256": np.array(["x", "y"], dtype=object),
             "path": np.array(["/a.wav", "/b.wav"], dtype=object), "reason": np.array(["", "silent"], dtype=object),
             "detail": np.array(["", "all zero"], dtype=object),
             "wav": np.array([wav, np.zeros(0, np.float32)], dtype=object)}
    raw = UnitActor(tok.spec, dedup=False)(batch).to_pylist()
    frames = tok.frame_units([wav])[0].tolist()
    assert raw[0]["units"] == frames and raw[0]["durations"] == [1] * len(frames) and raw[0]["n_frames"] == len(frames)
    assert raw[1]["reason"] == "silent" and raw[1]["units"] is None and raw[1]["source"] is None
    deduped = UnitActor(tok.spec, dedup=True)(batch).to_pylist()[0]
    assert deduped["units"] == reference_units(tok, wav) and sum(deduped["durations"]) == len(frames)


def test_decode_batch_bounds_memory_and_keeps_every_row(tmp_path):
    """The decode stage alone (no Ray): output batches hold at most max_samples of audio (or one chunk),
    equal-length waveforms stay one object each, and a bad file becomes its one reject row in place."""
    from slmscale.tokenization.pipeline import decode_batch

    wav = speech16k(SENTENCES[2])
    sf.write(tmp_path / "a.wav", wav, 16000)
    sf.write(tmp_path / "long.wav", np.tile(wav, 4), 16000)  # chunked into 4 chunks below
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 20)
    paths = [tmp_path / n for n in ("a.wav", "bad.wav", "a.wav", "long.wav")]
    batch = {"row": np.arange(4), "shard": np.zeros(4, np.int64), "utt_id": np.array(["u0", "u1", "u2", "u3"]),
             "source": np.array(["s"] * 4), "sha256": np.array(["h"] * 4), "path": np.array([str(p) for p in paths])}
    chunk_s = len(wav) / 16000  # long.wav is exactly 4 chunks
    outs = list(decode_batch(batch, chunk_s=chunk_s, min_samples=400, max_samples=2 * len(wav)))
    assert all(sum(len(w) for w in o["wav"]) <= 2 * len(wav) for o in outs)
    rows = [{k: o[k][i] for k in o} for o in outs for i in range(len(o["row"]))]
    assert [(int(r["row"]), int(r["chunk"]), int(r["n_chunks"])) for r in rows] == [
        (0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 0, 4), (3, 1, 4), (3, 2, 4), (3, 3, 4)]
    assert rows[1]["reason"] == "not_audio" and len(rows[1]["wav"]) == 0
    assert all(o["wav"].dtype == object and o["wav"].ndim == 1 for o in outs)
    np.testing.assert_array_equal(rows[2]["wav"], rows[0]["wav"])
    np.testing.assert_allclose(np.concatenate([r["wav"] for r in rows[3:]]), np.tile(wav, 4), atol=1e-4)


def test_unit_actor_decoding_its_own_rows_matches_the_two_stage_layout(tmp_path, tok):
    """UnitActor(decode=...) on manifest rows (the CPU layout) gives the rows of decode_batch -> UnitActor (the GPU
    layout), tokenizing at most batch_size chunks at a time; a bad file is its one reject row."""
    from slmscale.tokenization.pipeline import UnitActor, decode_batch

    wav = speech16k(SENTENCES[4])
    sf.write(tmp_path / "a.wav", wav, 16000)
    sf.write(tmp_path / "long.wav", np.tile(wav, 3), 16000)
    (tmp_path / "bad.wav").write_bytes(b"")
    names = ["a.wav", "long.wav", "bad.wav"]
    batch = {"row": np.arange(3), "shard": np.zeros(3, np.int64), "utt_id": np.array(["a", "l", "b"]),
             "source": np.array(["s"] * 3), "sha256": np.array(["h"] * 3),
             "path": np.array([str(tmp_path / n) for n in names])}
    decode = {"chunk_s": len(wav) / 16000, "min_samples": 400}
    actor = UnitActor(tok.spec, decode={**decode, "batch_size": 2})
    calls = []
    frame_units = actor.tokenizer.frame_units
    actor.tokenizer.frame_units = lambda wavs: calls.append(len(wavs)) or frame_units(wavs)
    fused = actor(batch).to_pylist()
    staged = [r for chunks in decode_batch(batch, **decode) for r in UnitActor(tok.spec)(chunks).to_pylist()]
    assert fused == staged and len(fused) == 5  # a, long x 3 chunks, bad
    assert max(calls) <= 2 and sum(calls) == 4
    assert fused[-1]["reason"] == "empty"
    assert fused[0]["units"] == reference_units(tok, sf.read(tmp_path / "a.wav", dtype="float32")[0])


_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from slmscale.tokenization.pipeline import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
rng = np.random.default_rng(0)
def features():  # a 12 s utterance framed at 25 ms / 10 ms, spectra, logs: megabyte-sized temporaries, then freed
    frames = rng.normal(size=(1200, 400)).astype(np.float32)
    return np.log(np.abs(np.fft.rfft(frames, 512, axis=1)) ** 2 + 1e-6).sum()
features()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    features()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_stops_large_temporaries_from_refaulting():
    """With glibc's defaults, per-file numpy temporaries of a megabyte or more are mapped afresh every time (page
    faults: ~40 % of an encode's CPU time with the previous numpy MFCC); the actors' malloc settings reuse them
    (measured in fresh processes: the settings are process-wide)."""
    faults = {}
    for mode in ("default", "keep"):
        proc = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        faults[mode] = int(proc.stdout.split()[-1])
    assert faults["default"] > 10_000 and faults["keep"] < faults["default"] / 20, faults


def _bad_corpus(root: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Every bad input of issue 3. Returns ({name: expected reject reason}, {name: 16 kHz reference audio})."""
    root.mkdir()
    a = speech16k(SENTENCES[0])
    b_raw, b_sr = tts(SENTENCES[1], voice="en+f3")
    sf.write(root / "good.wav", a, 16000)
    sf.write(root / "stereo.wav", np.stack([a, a], 1), 16000)  # same speech in both channels
    sf.write(root / "rate8k.wav", soxr.resample(b_raw, b_sr, 8000), 8000)
    sf.write(root / "rate44k.flac", soxr.resample(b_raw, b_sr, 44100), 44100)
    sf.write(root / "rate16k.wav", soxr.resample(b_raw, b_sr, 16000), 16000)
    (root / "empty.wav").write_bytes(b"")
    full = (root / "good.wav").read_bytes()
    (root / "truncated.wav").write_bytes(full[: len(full) // 2])
    sf.write(root / "full.flac", a, 16000)
    flac = (root / "full.flac").read_bytes()
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (root / "full.flac").unlink()
    (root / "notaudio.mp3").write_bytes(b"ID3? no, just text pretending to be audio\n" * 50)
    nan = a.copy()
    nan[1234] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = a.copy()
    inf[-10] = np.inf
    sf.write(root / "inf.wav", inf, 16000, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(root / "tiny.wav", a[:200], 16000)  # 12 ms: shorter than one analysis window
    # a 5-minute file (chunked at 60 s): speech repeated over a quiet tone
    t = np.arange(16000 * 300) / 16000
    long = (0.01 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    for s in range(0, len(long) - len(a), 16000 * 20):
        long[s: s + len(a)] += a
    sf.write(root / "long.flac", long, 16000)
    expected = {"empty": "empty", "truncated": "truncated", "truncated.flac": "truncated", "notaudio": "not_audio",
                "nan": "non_finite", "inf": "non_finite", "silent": "silent", "tiny": "too_short",
                "missing": "missing"}
    decoded = {name: sf.read(root / f"{name}.{ext}", dtype="float32")[0]
               for name, ext in (("good", "wav"), ("long", "flac"), ("rate16k", "wav"))}  # as quantised on disk
    return expected, decoded


def test_every_bad_input_becomes_units_or_one_reject(ray_local, tmp_path, tok):
    expected, ref = _bad_corpus(tmp_path / "bad")
    files = sorted(p for p in (tmp_path / "bad").iterdir())
    # a hand-made manifest with every file (build_manifest would already drop the unreadable ones)
    rows = [{"utt_id": p.name if p.name == "truncated.flac" else p.stem, "path": str(p)} for p in files]
    rows.append({"utt_id": "missing", "path": str(tmp_path / "bad" / "missing.wav")})
    manifest = write_manifest(rows, tmp_path / "all.parquet")
    out = tmp_path / "units"
    meta = encode(manifest, "mfcc", out, rows_per_shard=4, progress=False)

    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    got = {r["detail"].split(":", 1)[0].removeprefix("utt_id="): r["reason"] for r in rejects}
    assert got == expected
    assert all(r["detail"] and r["source"].startswith(str(tmp_path)) for r in rejects)
    units = {r["utt_id"]: r for r in read_units_table(out).to_pylist()}
    encoded_files = {u.split("#")[0] for u in units}
    assert encoded_files == {"good", "stereo", "rate8k", "rate44k", "rate16k", "long"}
    assert len(encoded_files) + len(rejects) == len(rows)  # rows in = encoded + rejected
    assert meta.counts["files"] == len(rows) and meta.counts["rejected"] == len(expected)
    assert meta.counts["encoded_files"] == len(encoded_files)
    from slmscale.tokenization.stats import unit_stats

    reasons = list(expected.values())
    assert unit_stats(out).attrs["rejected_by_reason"] == {r: reasons.count(r) for r in set(reasons)}

    assert units["good"]["units"] == reference_units(tok, ref["good"])
    assert units["stereo"]["units"] == units["good"]["units"]  # downmix of identical channels = the mono file
    for name in ("rate8k", "rate44k"):  # resampled to 16 kHz: same length, mostly the same units
        assert units[name]["duration_s"] == pytest.approx(units["rate16k"]["duration_s"], abs=0.01)
        assert abs(units[name]["n_frames"] - units["rate16k"]["n_frames"]) <= 1
    frames44 = tok.frame_units([ref["rate16k"]])[0]
    decoded44 = soxr.resample(sf.read(tmp_path / "bad" / "rate44k.flac", dtype="float32")[0], 44100, 16000)
    agree = (tok.frame_units([decoded44])[0][: len(frames44)] == frames44[: len(decoded44) // 160 - 2]).mean()
    assert agree > 0.8
    chunks = sorted(u for u in units if u.startswith("long#"))
    assert chunks == [f"long#{i:04d}" for i in range(5)]
    assert sum(units[c]["duration_s"] for c in chunks) == pytest.approx(300.0, abs=0.01)
    assert all(units[c]["n_frames"] == 5998 for c in chunks)  # 60 s at 100 Hz, whole windows only
    assert units["long#0000"]["units"] == reference_units(tok, ref["long"][: 16000 * 60])


def test_interrupted_encode_resumes_without_redoing_shards(ray_local, tmp_path, tok):
    audio = tmp_path / "audio"
    texts = [(f"s{i:02d}", f"{SENTENCES[i % 5]} Number {i}.") for i in range(24)]
    manifest = synthesize(texts, audio, voices=["en", "en+f3"], rates=[170], progress=False)
    out = tmp_path / "units"
    cmd = [sys.executable, "-m", "slmscale", "tokenize", "encode", "--manifest", str(manifest), "--tokenizer", "mfcc",
           "-o", str(out), "--rows-per-shard", "1", "--actors", "1", "--batch-size", "1", "-q"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.glob("shard-*.parquet")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no shard appeared within 120 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: like a crashed node or a pulled plug
    proc.wait()
    done_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_paths(out)}
    assert 1 <= len(done_before) < 24, "the run was not interrupted part-way"
    assert not (out / "meta.json").exists()

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for name, stamp in done_before.items():  # not redone: same inode, same mtime
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    table = read_units_table(out)
    ids = table.column("utt_id").to_pylist()
    assert len(ids) == len(set(ids)) == 24  # no row lost, none duplicated
    meta = read_meta(out)
    assert meta.counts["utterances"] == 24 and meta.counts["shards"] == 24 and meta.counts["rejected"] == 0
    for row in table.to_pylist()[:3]:
        wav, _ = sf.read(audio / f"{row['utt_id']}.wav", dtype="float32")
        assert row["units"] == reference_units(tok, wav)
    assert not list(out.glob(".*.parquet*"))  # no temp file left behind by the killed writer


def test_gpu_actor_layout_decodes_in_separate_tasks(ray_local, tmp_path):
    """The layout `encode` picks beside GPU actors, on a separate local Ray that declares one (logical) GPU: decode
    runs in its own CPU tasks, and the units equal those of the CPU layout, where the actors decode."""
    audio = tmp_path / "audio"
    texts = [(f"g{i}", f"{SENTENCES[i % 5]} Item {i}.") for i in range(6)]
    manifest = synthesize(texts, audio, voices=["en"], rates=[170], progress=False)
    cpu_meta = encode(manifest, "mfcc", tmp_path / "cpu", rows_per_shard=3, progress=False)
    script = (
        "import json, sys, ray\n"
        "ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level='ERROR')\n"
        "from slmscale.tokenization.encode import encode\n"
        f"meta = encode({str(manifest)!r}, 'mfcc', {str(tmp_path / 'gpu')!r}, rows_per_shard=3, gpus_per_actor=1,"
        " progress=False)\n"
        "print(json.dumps(meta.extra['resources']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resources = json.loads(proc.stdout.strip().splitlines()[-1])
    assert resources["gpus_per_actor"] == 1 and resources["actors"] == 1
    assert resources["operators"][-2:] == ["MapBatches(decode_batch)", "MapBatches(UnitActor)"], resources
    assert cpu_meta.extra["resources"]["operators"] == ["FromArrow", "MapBatches(UnitActor)"]
    assert read_units_table(tmp_path / "gpu").to_pylist() == read_units_table(tmp_path / "cpu").to_pylist()


def test_encode_input_errors(ray_local, tmp_path):
    with pytest.raises(SlmscaleError, match="manifest not found"):
        encode(tmp_path / "none.parquet", "mfcc", tmp_path / "u")
    sf.write(tmp_path / "a.wav", speech16k("Hello there."), 16000)
    manifest = write_manifest([{"utt_id": "a", "path": str(tmp_path / "a.wav")}], tmp_path / "m.parquet")
    with pytest.raises(SlmscaleError, match="--tokenizer"):
        encode(manifest, "wav2vec", tmp_path / "u")
    with pytest.raises(SlmscaleError, match="--rows-per-shard"):
        encode(manifest, "mfcc", tmp_path / "u", rows_per_shard=0)
    with pytest.raises(SlmscaleError, match="--layer"):
        encode(manifest, "mfcc", tmp_path / "u", layer=3)
    with pytest.raises(SlmscaleError, match="--gpus-per-actor"):
        encode(manifest, "mfcc", tmp_path / "u", gpus_per_actor=1)
    with pytest.raises(SlmscaleError, match="k-means codebook not found"):
        encode(manifest, "mfcc", tmp_path / "u", kmeans=tmp_path / "nope")


@pytest.mark.slow
def test_two_hour_file_is_chunked(ray_local, tmp_path, tok):
    """A 2-hour 8 kHz FLAC (quiet tone + speech bursts): 120 one-minute chunks, bounded memory."""
    a = soxr.resample(speech16k(SENTENCES[2]), 16000, 8000)
    path = tmp_path / "two_hours.flac"
    t = np.arange(8000 * 60) / 8000
    minute = (0.02 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    minute[: len(a)] += a
    with sf.SoundFile(path, "w", 8000, 1, subtype="PCM_16") as f:
        for _ in range(120):
            f.write(minute)
    manifest = build_manifest(tmp_path, tmp_path / "m.parquet", progress=False)
    assert read_manifest(manifest).column("duration_s").to_pylist() == [7200.0]
    meta = encode(manifest, "mfcc", tmp_path / "units", progress=False)
    table = read_units_table(tmp_path / "units")
    assert table.num_rows == 120 and meta.counts["rejected"] == 0
    assert table.column("utt_id").to_pylist() == [f"two_hours#{i:04d}" for i in range(120)]
    assert meta.counts["hours"] == pytest.approx(2.0, abs=1e-3)
    assert all(d == 60.0 for d in table.column("duration_s").to_pylist())
    from slmscale.tokenization.dedup import expand_runs

    rows = table.to_pylist()
    a, b = (expand_runs(rows[i]["units"], rows[i]["durations"]) for i in (5, 77))
    n = min(len(a), len(b))
    # identical minutes give (nearly) the same frame units wherever they are in the file; the streaming
    # resampler may shift a chunk boundary by a sample or two, which moves a few frames across units
    assert (a[:n] == b[:n]).mean() > 0.9


@pytest.fixture(scope="module")
def four_utterances(tmp_path_factory) -> Path:
    audio = tmp_path_factory.mktemp("four") / "audio"
    return synthesize([(f"f{i}", f"{SENTENCES[i]} Four.") for i in range(4)], audio, voices=["en"], rates=[170],
                      progress=False)


def test_reencode_redoes_a_damaged_shard_and_says_why(ray_local, tmp_path, four_utterances, capfd):
    out = tmp_path / "units"
    meta = encode(four_utterances, "mfcc", out, rows_per_shard=2, progress=False)
    first, second = out / "shard-00000.parquet", out / "shard-00001.parquet"
    assert meta.schema_version == 2 and set(meta.shards) == {first.name, second.name}
    assert meta.shards[first.name]["rows"] == 2 and len(meta.shards[first.name]["sha256"]) == 64
    original = pq.read_table(first).to_pylist()
    kept = (second.stat().st_ino, second.stat().st_mtime_ns)
    capfd.readouterr()

    first.write_bytes(first.read_bytes()[:-100])  # truncated: the footer is gone
    encode(four_utterances, "mfcc", out, rows_per_shard=2, progress=False)
    assert f"redoing {first}: it has" in capfd.readouterr().err
    assert pq.read_table(first).to_pylist() == original
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == kept  # the intact shard is not redone

    # same size, same row count, other bytes: only the checksum tells
    data = bytearray(first.read_bytes())
    data[8] ^= 0xFF
    first.write_bytes(bytes(data))
    again = encode(four_utterances, "mfcc", out, rows_per_shard=2, progress=False)
    assert f"redoing {first}: its SHA-256 differs" in capfd.readouterr().err
    assert pq.read_table(first).to_pylist() == original and again.counts == meta.counts
    assert json.loads((out / "meta.json").read_text())["shards"][first.name] == json.loads(
        (out / ".shards" / "shard-00000.json").read_text())


def test_duplicate_audio_is_rejected_naming_the_first_and_actors_are_capped(ray_local, tmp_path, four_utterances,
                                                                            capfd):
    rows = read_manifest(four_utterances).to_pylist()
    copy = tmp_path / "copy_of_f1.wav"
    copy.write_bytes(Path(rows[1]["path"]).read_bytes())  # the same recording under another name
    manifest = build_manifest(tmp_path, tmp_path / "m.parquet", progress=False)  # copy only; add the others
    table = read_manifest(manifest).to_pylist() + rows
    manifest = write_manifest(sorted(table, key=lambda r: r["utt_id"]), tmp_path / "all.parquet")
    meta = encode(manifest, "mfcc", tmp_path / "units", rows_per_shard=2, actors=8, progress=False)
    assert "--actors 8 capped at 2, the CPUs of the Ray cluster" in capfd.readouterr().err
    assert meta.extra["resources"]["actors"] <= 2
    ids = read_units_table(tmp_path / "units").column("utt_id").to_pylist()
    assert sorted(ids) == ["copy_of_f1", "f0", "f2", "f3"]  # manifest order copy_of_f1 f0 f1 ...: the copy is first
    rejects = pq.read_table(tmp_path / "units" / "rejects.parquet").to_pylist()
    assert [(r["reason"], r["source"]) for r in rejects] == [("duplicate", rows[1]["path"])]
    assert "utt_id=f1: same audio" in rejects[0]["detail"] and f"utt_id=copy_of_f1 ({copy})" in rejects[0]["detail"]
    assert meta.counts["files"] == 5 and meta.counts["encoded_files"] == 4 and meta.counts["rejected"] == 1
