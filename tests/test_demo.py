"""The whole study end to end: `slmscale demo --scale smallest`, killed in the middle of its sweep and rerun.

One run covers both "Must show" items of the end-to-end issue: the rerun completes without redoing finished
trials, and the report exists with every section, its fitted numbers finite and computed from this run's trials.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

SECTIONS = ("Data", "Training curves", "Trials", "Parametric fit", "Can this law be trusted?",
            "Compute-optimal allocation", "Downstream laws", "Listen", "Provenance")


def _demo_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "slmscale", "demo", "--scale", "smallest", "-o", str(out), "--quiet"]


def _finished_rows(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "sweep" / "runs").glob("*/row.json")}


@pytest.mark.timeout(1500)
def test_demo_killed_mid_sweep_reruns_to_a_complete_report(tmp_path):
    out = tmp_path / "demo out"  # a space in the path, as users have
    env = {**os.environ, "SLMSCALE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_demo_cmd(out), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 1200
    try:
        while time.time() < deadline:  # wait for the sweep to finish its first trial, then kill everything
            if _finished_rows(out):
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the demo finished no trial in time")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
        first.wait()
    finished_before = _finished_rows(out)
    trials_total = 9
    assert 0 < len(finished_before) < trials_total

    second = subprocess.run(_demo_cmd(out) + ["--json"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])

    # Finished trials were not redone: same row.json, one attempt each.
    after = _finished_rows(out)
    assert len(after) == trials_total
    for run_id, mtime in finished_before.items():
        assert after[run_id] == mtime, f"{run_id} was rerun"
        attempt = json.loads((out / "sweep" / "runs" / run_id / "attempt.json").read_text())
        assert attempt["attempt"] == 1

    # Results: every trial exactly once, losses from the trials' own rows, downstream metrics present.
    results = pd.read_parquet(out / "results.parquet")
    assert sorted(results["run_id"]) == sorted(after)
    for row in results.itertuples():
        own = json.loads((out / "sweep" / "runs" / row.run_id / "row.json").read_text())
        assert row.loss == pytest.approx(own["loss"])
        assert 0.0 <= row.sblimp_macro <= 1.0 and 0.0 <= row.tsc <= 1.0 and 0.0 <= row.swuggy <= 1.0

    # The report has every section, and its fit is finite and is the fit of this results table.
    html = Path(summary["report_html"]).read_text()
    md = Path(summary["report_md"]).read_text()
    for title in SECTIONS:
        assert f">{title}" in html and f"## {title}" in md, title
    for png in ("training_curves.png", "loss_vs_tokens.png", "isoflops.png", "optimal_vs_compute.png"):
        assert (Path(summary["report_html"]).parent / png).stat().st_size > 10_000, png
    fit = summary["fit"]
    assert all(math.isfinite(fit[k]) for k in ("E", "A", "B", "alpha", "beta"))
    assert min(fit["E"], fit["A"], fit["B"]) > 0  # exp() of the log-sum-exp parameters; the exponents may have
    # any sign at this smoke-test scale (the report then says there is no compute-optimal allocation)
    assert fit["n_runs"] == trials_total
    from slmscale.analysis.fit import FitConfig, fit_scaling_law
    from slmscale.analysis.schema import read_results

    refit = fit_scaling_law(read_results(out / "results.parquet"), FitConfig())
    assert refit.params.E == pytest.approx(fit["E"], rel=1e-6)
    assert refit.params.alpha == pytest.approx(fit["alpha"], rel=1e-6)
    assert f"{fit['E']:.4g}" in md  # the number printed in the report is this fit's
    units_meta_hash = results["units_meta_hash"].iloc[0]
    assert units_meta_hash[:16] in md or units_meta_hash in md  # provenance names this run's unit dataset
