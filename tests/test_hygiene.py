"""The hygiene gate (`make lint`, run first by `make test`): `ruff check .` runs in the Makefile; here
import-linter's layering contracts hold, and each contract and ruff's ban on bare stage imports fails when broken.

import-linter walks a package's folder on disk and does not follow setuptools' package-dir mapping (models/ is
installed as slmscale.models), so the contracts are checked on a copy of the sources in the installed layout.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STAGES = ("analysis", "models", "sweep", "tokenization")


def installed_layout(dest: Path) -> Path:
    """Copy the Python sources into `dest/slmscale/...` as they are installed; returns the folder to run from."""
    root = dest / "slmscale"
    shutil.copytree(REPO / "slmscale", root, ignore=shutil.ignore_patterns("__pycache__"))
    for stage in STAGES:
        shutil.copytree(REPO / stage, root / stage, ignore=shutil.ignore_patterns("__pycache__", "data", "grids"))
    return dest


def lint_imports(layout: Path) -> subprocess.CompletedProcess:
    exe = BIN / "lint-imports"
    if not exe.exists():
        pytest.fail(f"{exe} missing: install the dev extras (make install)")
    return subprocess.run([str(exe), "--config", str(REPO / ".importlinter"), "--no-cache"], cwd=layout,
                          capture_output=True, text=True, timeout=120)


def ruff(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_ruff_refuses_a_bare_stage_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import models.train\nfrom analysis.fit import fit_chinchilla\nimport slmscale.models\n")
    out = ruff("check", "--config", str(REPO / "pyproject.toml"), "--select", "TID251", str(probe))
    assert out.returncode == 1
    assert "`models` is banned" in out.stdout and "`analysis` is banned" in out.stdout
    assert out.stdout.count("TID251") == 2  # slmscale.models is the allowed spelling


def test_layering_contracts_hold(tmp_path):
    out = lint_imports(installed_layout(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


@pytest.mark.parametrize(("where", "statement", "contract"), [
    ("analysis/fit.py", "import slmscale.sweep.results", "analysis imports no other stage"),
    ("analysis/schema.py", "import ray", "analysis imports no other stage"),
    ("tokenization/stats.py", "from slmscale.models import ladder", "tokenization imports neither models nor sweep"),
    ("models/data.py", "from slmscale.sweep import grid", "models does not import sweep"),
    ("io.py", "import slmscale.analysis.schema", "the core (errors, io, locks, objstore, ray_utils, typed) imports no stage"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, where, statement, contract):
    layout = installed_layout(tmp_path)
    module = layout / "slmscale" / where
    # Inside a function, as the code base's lazy imports are: the contract must see those too.
    module.write_text(module.read_text() + f"\n\ndef _probe():\n    {statement}\n")
    out = lint_imports(layout)
    assert out.returncode == 1, out.stdout
    assert f"{contract}" in out.stdout and "BROKEN" in out.stdout
    assert "1 broken" in out.stdout
