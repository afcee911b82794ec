"""One import root: the built wheel installs `slmscale` and nothing else, in a fresh venv, away from the repo.

The wheel is built from this tree (`pip wheel --no-deps`) and installed into a new venv without its
dependencies; the venv borrows the third-party packages of the running interpreter through a .pth line (not its
editable slmscale: .pth files of a path added that way are not executed). Commands run outside the repository,
so the folders models/, analysis/, ... of the checkout are not on sys.path.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = {"analysis": "slmscale.analysis", "models": "slmscale.models", "sweep": "slmscale.sweep",
          "tokenization": "slmscale.tokenization", "slmscale": "slmscale"}


def source_packages() -> set[str]:
    """Every package folder of the checkout (a folder with __init__.py), by its installed name."""
    found = set()
    for folder, name in STAGES.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a clean copy of the sources: setuptools builds in the source tree, and a stale build/ there
    # would put modules deleted since into the wheel.
    src = tmp_path_factory.mktemp("src") / "slmscale"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "demo_out", "bench_out",
                                                             "__pycache__", "*.egg-info", ".*cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", str(src),
                    "-w", str(out)], check=True, capture_output=True, text=True, timeout=300)
    (found,) = out.glob("slmscale-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def run(py: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_wheel_installs_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"slmscale", wheel.name.split("-py3")[0] + ".dist-info"}
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["slmscale"]
    # The explicit package list in pyproject.toml covers every package folder, and the data files come along.
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == source_packages()
    for data in ("slmscale/analysis/data/chinchilla_epoch_svg_extracted.csv", "slmscale/sweep/grids/paper.yaml",
                 "slmscale/tokenization/data/mfcc_k100.npy", "slmscale/tokenization/data/mfcc_k100.json"):
        assert data in names


def test_fresh_venv_imports_slmscale_only(fresh_venv, tmp_path):
    code = (
        "import json, slmscale, slmscale.analysis, slmscale.models, slmscale.sweep, slmscale.tokenization\n"
        "import slmscale.models.evaluation\n"
        "print(json.dumps([m.__file__ for m in (slmscale, slmscale.analysis, slmscale.models, slmscale.sweep, "
        "slmscale.tokenization)]))"
    )
    out = run(fresh_venv, code, tmp_path)
    assert out.returncode == 0, out.stderr
    venv_root = fresh_venv.parent.parent
    for path in json.loads(out.stdout):
        assert Path(path).is_relative_to(venv_root), path  # the installed copy, not the checkout
    for bare in ("models", "analysis", "sweep", "tokenization"):
        out = run(fresh_venv, f"import {bare}", tmp_path)
        assert out.returncode == 1 and f"No module named '{bare}'" in out.stderr, (bare, out.stderr)


def test_fresh_venv_cli_help(fresh_venv, tmp_path):
    out = subprocess.run([str(fresh_venv), "-m", "slmscale", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    for command in ("tokenize", "train", "eval", "sweep", "demo", "fit", "optimal", "downstream", "report"):
        assert command in out.stdout


def test_a_fit_loads_neither_ray_nor_audio_code(fresh_venv, tmp_path):
    csv = REPO / "analysis" / "data" / "chinchilla_epoch_svg_extracted.csv"
    code = (
        "import sys\n"
        "from slmscale.cli import main\n"
        f"rc = main(['fit', '--results', {str(csv)!r}, '--n-col', 'Model Size', '--flops-col', 'Training FLOP',\n"
        "            '--exclude-highest-loss', '5', '--grid', 'coarse', '--json'])\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in ('ray', 'soundfile', 'soxr', 'transformers', 'kaldi_native_fbank') if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    out = run(fresh_venv, code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout
