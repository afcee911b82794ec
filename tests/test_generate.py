"""`slmscale generate` end to end on a tiny model trained from scratch on mfcc units of espeak-ng speech:
prompt audio -> the run's tokenizer -> KV-cached sampling -> units + WAVs whose length is frames x hop; the
refusals (missing run, units of another tokenizer, a vocoder of another unit count, a corrupt checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from slmscale.cli import main
from slmscale.errors import SlmscaleError
from slmscale.models.generation import generate

HOP = 160  # mfcc tokenizer: 10 ms frames at 16 kHz


def _spoken(texts: list[str]) -> list[np.ndarray]:
    import soxr

    from slmscale.tokenization.synth import DEFAULT_VOICES, tts

    out = []
    for i, text in enumerate(texts):
        wav, sr = tts(text, voice=DEFAULT_VOICES[i % len(DEFAULT_VOICES)])
        out.append(soxr.resample(wav, sr, 16000).astype(np.float32))
    return out


def _mfcc_units(root: Path, wavs: list[np.ndarray], dedup: bool) -> Path:
    """A unit dataset of `wavs` made with the real mfcc tokenizer and the real dataset writers."""
    from slmscale.io import code_version
    from slmscale.tokenization.dedup import collapse_runs
    from slmscale.tokenization.schema import UNIT_SHARD_SCHEMA, UnitsMeta, write_meta, write_shard
    from slmscale.tokenization.tokenizer import load_tokenizer

    tok = load_tokenizer("mfcc")
    rows = []
    for i, frames in enumerate(tok.frame_units(wavs)):
        units, durations = collapse_runs(frames) if dedup else (frames, np.ones(len(frames), np.uint16))
        rows.append({"utt_id": f"story/{i:04d}", "units": units.tolist(), "durations": durations.tolist(),
                     "n_frames": len(frames), "n_units": len(units), "duration_s": len(wavs[i]) / 16000,
                     "source": "test", "sha256": ""})
    write_shard(root / "shard-00000.parquet", pa.Table.from_pylist(rows, schema=UNIT_SHARD_SCHEMA))
    write_meta(root, UnitsMeta(vocab_size=tok.vocab_size, tokenizer=tok.info(), dedup=dedup,
                               counts={"utterances": len(rows), "units": sum(r["n_units"] for r in rows), "shards": 1},
                               code_version=code_version()))
    return root


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """12 spoken stories (training data) and one held-out prompt WAV."""
    from slmscale.tokenization.stories import generate_stories

    root = tmp_path_factory.mktemp("speech")
    wavs = _spoken(generate_stories(13, seed=3))
    prompt = root / "prompt.wav"
    sf.write(prompt, wavs[-1][:32000], 16000)  # 2 s
    return wavs[:-1], prompt


def _train(root: Path, wavs, dedup: bool) -> Path:
    from slmscale.models.train import TrainConfig, train

    units = _mfcc_units(root / "units", wavs, dedup)
    cfg = TrainConfig(units_dir=str(units), model="tiny-100K", out_dir=str(root / "run"), tokens=512 * 8,
                      val_fraction=0.1, test_fraction=0.1, eval_tokens=512, test_tokens=512, warmup_steps=2,
                      report_every=4, threads=1, progress=False)
    train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def run_frames(tmp_path_factory, speech):
    """A tiny model trained for 8 updates on frame units (no dedup: one unit = one 10 ms frame)."""
    return _train(tmp_path_factory.mktemp("run_frames"), speech[0], dedup=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the embedded vocoder is built once."""
    return tmp_path_factory.mktemp("cache")


def test_cli_generate_embedded_vocoder_wavs_match_units(run_frames, speech, cache, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["generate", "--model", str(run_frames), "--prompt", str(speech[1]), "-o", str(out),
               "--vocoder", "embedded", "--max-units", "40", "--num-samples", "2", "--seed", "3",
               "--cache-dir", str(cache)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "samples.json").read_text())
    assert result["prompt"]["n_units"] == 1 + (32000 - 400) // HOP  # every 10 ms frame of the 2 s prompt, no dedup
    n_prompt = result["prompt"]["n_units_seen"]  # the end of the prompt that fits the model's context (64)
    assert n_prompt == 64 - 1 - 32
    assert result["provenance"]["tokenizer_hash"] == json.loads((run_frames / "run.json").read_text())["tokenizer_hash"]
    assert result["provenance"]["vocoder"]["kind"] == "unit-exemplar-griffin-lim"
    assert result["provenance"]["seed"] == 3 and result["provenance"]["code_version"].startswith("slmscale")
    for s in result["samples"]:
        assert s["n_units"] == 40 and all(0 <= u < 100 for u in s["units"])
        wav, sr = sf.read(out / s["wav"])
        assert sr == 16000
        assert s["frames"] == [1] * 40  # frame units: one frame each
        assert len(wav) == (n_prompt + 40) * HOP  # (prompt + generated units) x hop
        assert s["continuation_starts_s"] == pytest.approx(n_prompt * HOP / 16000)
        assert np.abs(wav).max() > 0.01  # audible, not silence
    prompt_wav, _ = sf.read(out / "prompt.wav")
    assert len(prompt_wav) == n_prompt * HOP
    assert "2 sample(s) of 40 units" in capsys.readouterr().out

    # `slmscale report --samples OUT` plays them (any results table: here a synthetic one).
    from slmscale.analysis.params import ScalingParams
    from slmscale.analysis.schema import write_results
    from slmscale.analysis.synthetic import synthetic_results

    table = write_results(synthetic_results(ScalingParams(1.7, 400.0, 400.0, 0.34, 0.28), sizes=(1e6, 1e7, 1e8),
                                            ratios=(2, 20, 200), noise=0.0, seed=0), tmp_path / "results.csv")
    assert main(["report", "--results", str(table), "-o", str(tmp_path / "report"), "--grid", "coarse",
                 "--bootstrap", "0", "--holdout-fraction", "0", "--samples", str(out)]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert ">Listen" in page and page.count("<audio controls") == 3  # the prompt's resynthesis + 2 samples
    assert f"{run_frames.name} (tiny-100K, step 8): sample 1 (continuation from" in page
    assert main(["report", "--results", str(table), "-o", str(tmp_path / "r2"), "--samples", str(tmp_path)]) == 2
    assert "no samples.json, expected an output folder of `slmscale generate`" in capsys.readouterr().err


def test_generation_is_deterministic_for_a_seed(run_frames, tmp_path):
    units_file = tmp_path / "p.json"
    info = json.loads((run_frames / "run.json").read_text())
    units_file.write_text(json.dumps({"tokenizer_hash": info["tokenizer_hash"], "units": [5, 17, 17, 42, 8] * 4}))
    runs = [generate(run_frames, tmp_path / f"o{i}", prompt_units=units_file, max_units=30, num_samples=3, seed=s,
                     top_k=20)["samples"] for i, s in enumerate((11, 11, 12))]
    units = [[s["units"] for s in r] for r in runs]
    assert units[0] == units[1]
    assert units[0] != units[2]
    assert len({tuple(u) for u in units[0]}) > 1  # the samples of one batch differ from each other
    greedy = [generate(run_frames, tmp_path / f"g{i}", prompt_units=units_file, max_units=10, temperature=0,
                       num_samples=2, seed=i)["samples"] for i in range(2)]
    assert greedy[0][0]["units"] == greedy[0][1]["units"] == greedy[1][0]["units"]  # greedy ignores the seed


def test_prompt_units_round_trip_and_eos_stop(run_frames, speech, tmp_path):
    first = generate(run_frames, tmp_path / "a", prompt=speech[1], max_units=5)
    again = generate(run_frames, tmp_path / "b", prompt_units=tmp_path / "a" / "prompt_units.json", max_units=5)
    assert again["prompt"]["n_units"] == first["prompt"]["n_units"]
    assert again["samples"][0]["units"] == first["samples"][0]["units"]  # same prompt units, same seed
    stopped = generate(run_frames, tmp_path / "c", prompt=speech[1], max_units=30, stop_at_eos=True, num_samples=4)
    assert all(len(s["units"]) <= 30 for s in stopped["samples"])


def test_bad_inputs_are_refused_with_the_flag_named(run_frames, speech, tmp_path):
    with pytest.raises(SlmscaleError, match="--model .*directory not found"):
        generate(tmp_path / "nope", tmp_path / "o", prompt=speech[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmscaleError, match="no run.json"):
        generate(tmp_path / "empty", tmp_path / "o", prompt=speech[1])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"tokenizer_hash": "hubert-" + "0" * 40, "units": [1, 2, 3]}))
    with pytest.raises(SlmscaleError, match="units of another\ntokenizer|another tokenizer mean nothing"):
        generate(run_frames, tmp_path / "o", prompt_units=other)
    with pytest.raises(SlmscaleError, match="exactly one"):
        generate(run_frames, tmp_path / "o")
    with pytest.raises(SlmscaleError, match="--max-units: expected at least 1"):
        generate(run_frames, tmp_path / "o", prompt=speech[1], max_units=0)
    not_audio = tmp_path / "x.wav"
    not_audio.write_text("hello")
    with pytest.raises(SlmscaleError, match="--prompt .*x.wav"):
        generate(run_frames, tmp_path / "o", prompt=not_audio)


def test_cli_prints_one_line_errors(run_frames, speech, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", str(speech[1]), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slmscale generate: error: --model") and "\n" not in err


def random_codehifigan(path: Path, n_units: int = 100, **overrides) -> Path:
    """A random-weight CodeHiFiGAN checkpoint directory (config.json + generator.safetensors), 160x upsampling."""
    import torch
    from safetensors.torch import save_file

    from slmscale.models.generation.codehifigan import CodeHiFiGAN

    cfg = {"upsample_rates": [5, 4, 4, 2], "upsample_kernel_sizes": [11, 8, 8, 4], "upsample_initial_channel": 32,
           "resblock": "1", "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
           "num_embeddings": n_units, "embedding_dim": 16, "model_in_dim": 16, "sampling_rate": 16000,
           "code_hop_size": 160, **overrides}
    torch.manual_seed(0)
    module = CodeHiFiGAN(cfg)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path / "generator.safetensors"))
    return path


def test_cli_generate_with_a_codehifigan_directory(run_frames, speech, tmp_path, capsys):
    from slmscale.models.generation.codehifigan import weights_sha256

    voc = random_codehifigan(tmp_path / "hifigan")
    out = tmp_path / "out"
    assert main(["generate", "--model", str(run_frames), "--prompt", str(speech[1]), "-o", str(out), "--vocoder",
                 str(voc), "--vocoder-sha256", weights_sha256(voc), "--max-units", "20", "--num-samples", "2"]) == 0
    result = json.loads((out / "samples.json").read_text())
    assert result["provenance"]["vocoder"]["kind"] == "codehifigan"
    assert result["provenance"]["vocoder"]["sha256"] == weights_sha256(voc)
    n_seen = result["prompt"]["n_units_seen"]
    for s in result["samples"]:
        wav, sr = sf.read(out / s["wav"])
        assert sr == 16000 and len(wav) == (n_seen + 20) * HOP
        assert np.isfinite(wav).all() and np.abs(wav).max() > 0
    # a pinned sha256 that is not this checkpoint's is refused
    assert main(["generate", "--model", str(run_frames), "--prompt", str(speech[1]), "-o", str(out), "--vocoder",
                 str(voc), "--vocoder-sha256", "0" * 64]) == 2
    assert "--vocoder-sha256" in capsys.readouterr().err


def test_vocoders_that_do_not_fit_the_model_are_refused(run_frames, speech, tmp_path):
    other_k = random_codehifigan(tmp_path / "k50", n_units=50)
    with pytest.raises(SlmscaleError, match="renders 50 units, but the model's vocabulary has 100"):
        generate(run_frames, tmp_path / "o", prompt=speech[1], vocoder=other_k)
    slow = random_codehifigan(tmp_path / "hop320", upsample_rates=[5, 4, 4, 4], upsample_kernel_sizes=[11, 8, 8, 8],
                              code_hop_size=320)
    with pytest.raises(SlmscaleError, match="50 units per second .* 100 frames per second"):
        generate(run_frames, tmp_path / "o", prompt=speech[1], vocoder=slow)
    corrupt = random_codehifigan(tmp_path / "corrupt")
    blob = (corrupt / "generator.safetensors").read_bytes()
    (corrupt / "generator.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SlmscaleError, match="generator.safetensors: not a readable safetensors file"):
        generate(run_frames, tmp_path / "o", prompt=speech[1], vocoder=corrupt)
    with pytest.raises(SlmscaleError, match="--vocoder .*nope: not a directory"):
        generate(run_frames, tmp_path / "o", prompt=speech[1], vocoder=tmp_path / "nope")
