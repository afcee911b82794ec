"""benchmarks/render_results.py: the README's GPU table from results JSON files (fake ones in a temp dir; the real
README is never touched), its --check mode, and the helpers the GPU benchmarks write those files with."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rr():
    spec = importlib.util.spec_from_file_location("render_results", REPO / "benchmarks" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENV = {"device": "NVIDIA H200", "torch": "2.13.0+cu128", "cuda": "12.8", "date": "2026-12-01"}


def _train_rows():
    def row(model, fused, mfu, tps):
        return {"model": model, "fused_kernels": fused, "mfu": mfu, "tokens_per_s": tps, "error": None}

    return [row("20M", "on", 0.301, 1.4e6), row("85M", "on", 0.462, 6.1e5), row("85M", "off", 0.401, 5.3e5),
            {"model": "823M", "fused_kernels": "on", "error": "OutOfMemoryError: CUDA out of memory"},
            row("823M", "off", 0.55, 9.5e4)]


def _setup(tmp_path, rr, readme_text="# x\n\nintro\n\n<!-- gpu-results:start -->\nold\n<!-- gpu-results:end -->\n\nrest\n"):
    results = tmp_path / "results"
    rr.write_results(rr.results_file("train-gpu", ENV, results),
                     {"kind": "train-gpu", **ENV, "rows": _train_rows(), "peak_tflops": float("nan")})
    rr.write_results(rr.results_file("tokenize-gpu", ENV, results),
                     {"kind": "tokenize-gpu", **ENV, "in_process": {"rtf": 10450.3},
                      "ray_data": {"steady_rtf": 9876.5, "startup_s": 21.43}, "errors": {}})
    (results / "notes.json").write_text(json.dumps({"something": "else"}))  # not a results file: ignored
    readme = tmp_path / "README.md"
    readme.write_text(readme_text)
    return results, readme


def test_results_file_names_and_standard_json(tmp_path, rr):
    path = rr.results_file("train-gpu", {**ENV, "device": "NVIDIA H100 80GB HBM3"}, tmp_path)
    assert path.name == "train-gpu-nvidia-h100-80gb-hbm3-2026-12-01.json"
    rr.write_results(path, {"mfu": float("nan"), "rows": [{"x": float("inf")}]})
    assert json.loads(path.read_text()) == {"mfu": None, "rows": [{"x": None}]}
    assert not list(tmp_path.glob("*.tmp"))


def test_render_rewrites_only_the_block_and_check_detects_staleness(tmp_path, rr, capsys):
    results, readme = _setup(tmp_path, rr)
    args = ["--results", str(results), "--readme", str(readme)]
    assert rr.main(["--check", *args]) == 1  # "old" is stale
    assert rr.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n<!-- gpu-results:start -->\n") and text.endswith(
        "<!-- gpu-results:end -->\n\nrest\n")
    assert "old" not in text
    lines = text.splitlines()
    on = next(ln for ln in lines if "on (liger)" in ln)
    off = next(ln for ln in lines if "off (plain)" in ln)
    assert "| NVIDIA H200 | 2026-12-01 | 2.13.0+cu128 / 12.8 |" in on
    assert on.split("|")[5:10] == [" **30.1 %** (1,400 k tok/s) ", " **46.2 %** (610 k tok/s) ", " — ",
                                   " failed: OutOfMemoryError ", ""]
    assert off.split("|")[5:9] == [" — ", " **40.1 %** (530 k tok/s) ", " — ", " **55.0 %** (95 k tok/s) "]
    assert "| 10,450× | 9,876× | 21.4 s |" in text
    assert rr.main(["--check", *args]) == 0
    before = readme.read_text()
    assert rr.main(args) == 0 and readme.read_text() == before  # idempotent
    rr.write_results(rr.results_file("tokenize-gpu", {**ENV, "date": "2026-12-02"}, results),
                     {"kind": "tokenize-gpu", **ENV, "date": "2026-12-02", "in_process": {"rtf": 11000.0}})
    assert rr.main(["--check", *args]) == 1  # a new results file makes the block stale
    assert "stale" in capsys.readouterr().err


def test_no_results_and_missing_markers(tmp_path, rr):
    (tmp_path / "empty").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- gpu-results:start -->\n<!-- gpu-results:end -->\n")
    assert rr.main(["--results", str(tmp_path / "empty"), "--readme", str(readme)]) == 0
    assert "No GPU figures yet" in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="gpu-results:start"):
        rr.main(["--results", str(tmp_path / "empty"), "--readme", str(readme)])


def test_the_readme_gpu_block_matches_the_committed_results(rr, capsys):
    """The real README's generated block is what benchmarks/results/*.json give (read only: --check writes nothing),
    so a results file committed without re-rendering, or a hand edit of the table, fails the suite."""
    assert rr.main(["--check"]) == 0, capsys.readouterr()
