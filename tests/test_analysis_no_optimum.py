"""Tables where the scaling law degenerates still give a report, with the reason spelled out.

Real sweeps produce such tables: a grid of far under-trained runs where larger models are no better
(fitted alpha <= 0), or a downstream score that does not grow with compute (gamma <= 0).
"""
from __future__ import annotations

import numpy as np
import pytest

from slmscale.analysis.optimal import closed_form_optimal, compute_optimal
from slmscale.analysis.params import ScalingParams
from slmscale.analysis.synthetic import synthetic_results
from slmscale.cli import main
from slmscale.errors import SlmscaleError

FLAT_IN_N = ScalingParams(E=1.5, A=0.5, B=400.0, alpha=-0.1, beta=0.3)  # larger models *worse*


def test_no_optimum_is_nan_in_the_closed_form_and_an_error_for_a_query():
    n, d = closed_form_optimal([1e18, 1e20], FLAT_IN_N)
    assert np.isnan(n).all() and np.isnan(d).all()
    with pytest.raises(SlmscaleError, match="alpha = -0.1.*no compute-optimal allocation"):
        compute_optimal(1e20, FLAT_IN_N)
    good = ScalingParams(E=1.5, A=400.0, B=400.0, alpha=0.3, beta=0.3)
    assert np.isfinite(closed_form_optimal(1e20, good)).all()


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no optimum is an answer, not a numpy warning
def test_report_of_a_degenerate_study_is_written_with_the_reason(tmp_path, capsys):
    df = synthetic_results(FLAT_IN_N, sizes=(1e5, 3e5, 1e6), ratios=(0.05, 0.15, 0.4), noise=0.002,
                           metrics={"sblimp_macro": (0.9, -0.01), "tsc": (0.2, 0.02)})  # sBLIMP falls with compute
    table = tmp_path / "results.csv"
    df.to_csv(table, index=False)
    out = tmp_path / "report"
    assert main(["report", "--results", str(table), "-o", str(out), "--grid", "coarse", "--bootstrap", "4"]) == 0
    md = (out / "report.md").read_text()
    assert "no compute-optimal allocation" in md
    for png in ("loss_vs_tokens.png", "isoflops.png", "optimal_vs_compute.png", "downstream_sblimp_macro.png"):
        assert (out / png).stat().st_size > 5_000, png
    # the falling metric is fitted (gamma < 0) but gets no compute multiplier; the rising one gets one
    assert "sblimp_macro" in md and "tsc" in md
    capsys.readouterr()
    assert main(["fit", "--results", str(table), "--grid", "coarse"]) == 0
    assert "no compute-optimal allocation" in capsys.readouterr().out
    assert main(["optimal", "--compute", "1e20", "--params", str(_params_json(tmp_path))]) == 2
    assert "'alpha' must be a finite positive number, got -0.1" in capsys.readouterr().err


def _params_json(tmp_path):
    import json

    path = tmp_path / "flat.json"
    path.write_text(json.dumps({k: getattr(FLAT_IN_N, k) for k in ("E", "A", "B", "alpha", "beta")}))
    return path
