"""espeak-ng TTS (tts, synthesize) and the embedded story generator."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from slmscale.errors import SlmscaleError
from slmscale.tokenization.stories import generate_stories, story_items
from slmscale.tokenization.synth import available_backend, synthesize, tts

TEXT = "The little cat went to the park and found a red ball."


def test_backend_is_available():
    assert available_backend() in ("libespeak-ng", "espeak-ng-binary")


def test_tts_returns_speech_like_mono_float32():
    wav, sr = tts(TEXT)
    assert wav.dtype == np.float32 and wav.ndim == 1 and sr > 8000
    duration = len(wav) / sr
    assert 1.5 < duration < 8.0, duration  # 12 words at 160 wpm is ~4.5 s including pauses
    assert 0.1 < np.abs(wav).max() <= 1.0
    # speech has energy in the 100-4000 Hz band, not just a tone or clicks
    spec = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / sr)
    assert spec[(freqs > 100) & (freqs < 4000)].sum() > 0.8 * spec.sum()


def test_tts_is_deterministic_in_and_across_processes():
    a, _ = tts(TEXT, voice="en+f3", rate=180)
    tts("Something else spoken in between.", voice="en-us+m3", rate=120)
    b, _ = tts(TEXT, voice="en+f3", rate=180)
    assert np.array_equal(a, b)
    code = (f"from slmscale.tokenization.synth import tts; import hashlib; "
            f"print(hashlib.sha256(tts({TEXT!r}, voice='en+f3', rate=180)[0].tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    assert out == hashlib.sha256(a.tobytes()).hexdigest()


def test_voices_and_rates_change_the_audio():
    slow, sr = tts(TEXT, rate=100)
    fast, _ = tts(TEXT, rate=300)
    assert len(slow) > 1.8 * len(fast)
    male, _ = tts(TEXT, voice="en-us+m3")
    female, _ = tts(TEXT, voice="en+f3")
    assert not np.array_equal(male[:20000], female[:20000])


def test_tts_bad_input_errors():
    with pytest.raises(SlmscaleError, match="voice 'xx-nope'"):
        tts(TEXT, voice="xx-nope")
    with pytest.raises(SlmscaleError, match="rate"):
        tts(TEXT, rate=5)
    with pytest.raises(SlmscaleError, match="non-empty"):
        tts("   ")


def test_synthesize_writes_wavs_and_manifest_with_transcripts(tmp_path):
    items = [("a", "Tom had a red ball."), ("sub/b", "Anna went to the park."), ("c", "The dog was happy.")]
    manifest = synthesize(items, tmp_path, voices=["en", "en+f3"], rates=[150, 200], progress=False)
    table = pq.read_table(manifest).to_pandas().set_index("utt_id")
    assert sorted(table.index) == ["a", "c", "sub/b"]
    assert table.loc["sub/b", "transcript"] == "Anna went to the park."
    assert table.loc["a", "speaker"] == "en@150" and table.loc["sub/b", "speaker"] == "en+f3@150"
    assert table.loc["c", "speaker"] == "en@200"  # voices cycle first, then rates
    for _, row in table.iterrows():
        info = sf.info(row["path"])
        assert info.samplerate == 16000 and info.channels == 1 and row["sample_rate"] == 16000
        assert abs(info.duration - row["duration_s"]) < 1e-6 and row["duration_s"] > 0.5
    # a rerun keeps existing WAVs (same bytes) and rewrites the same manifest
    before = (tmp_path / "a.wav").stat().st_mtime_ns
    synthesize(items, tmp_path, voices=["en", "en+f3"], rates=[150, 200], progress=False)
    assert (tmp_path / "a.wav").stat().st_mtime_ns == before


def test_synthesize_rejects_duplicate_ids(tmp_path):
    with pytest.raises(SlmscaleError, match="duplicate"):
        synthesize([("x", "one"), ("x", "two")], tmp_path, progress=False)


def test_story_generator_is_seeded_and_varied():
    a = generate_stories(30, seed=3)
    assert a == generate_stories(30, seed=3)
    assert a != generate_stories(30, seed=4)
    assert len(set(a)) == 30
    for story in a:
        sentences = [s for s in story.split(".") if s.strip()]
        assert 5 <= len(sentences) <= 9
        assert "{" not in story and "}" not in story  # every template slot filled
    words = {w.strip(".,").lower() for s in a for w in s.split()}
    assert 60 < len(words) < 400  # a small, child-level vocabulary
    assert story_items(2, seed=3)[1] == ("story000001", a[1])
