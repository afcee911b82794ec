"""Downstream laws: gamma recovery with CI, linear fit vs loss, compute multiplier."""
from __future__ import annotations

import json

import numpy as np
import pytest

from slmscale.analysis.downstream import GAMMA_TABLE4, compute_multiplier, downstream_analysis, fit_power_law
from slmscale.analysis.params import PRESETS
from slmscale.analysis.synthetic import synthetic_results
from slmscale.errors import SlmscaleError


def test_power_law_recovers_gamma_and_k_with_ci():
    rng = np.random.default_rng(0)
    c = np.logspace(18, 22, 25)
    q = 0.12 * c**0.021 * np.exp(0.004 * rng.standard_normal(len(c)))
    law = fit_power_law(c, q)
    assert law.gamma == pytest.approx(0.021, abs=0.002)
    assert law.gamma_ci[0] < 0.021 < law.gamma_ci[1]
    assert law.k_ci[0] < 0.12 < law.k_ci[1]


def test_compute_multiplier_speech_vs_text_is_three_orders_for_sblimp():
    g = GAMMA_TABLE4["sblimp"]
    m = compute_multiplier(g["speech"], g["text"])
    assert m == pytest.approx(10 ** (0.066 / 0.021))
    assert 1e3 < m < 2e3  # the paper's "up to three orders of magnitude"
    assert compute_multiplier(0.05, 0.05) == pytest.approx(10.0)


def test_downstream_analysis_on_a_table(tmp_path):
    df = synthetic_results(PRESETS["speech"], noise=0.002, seed=4, metrics={"sblimp_macro": (0.2, 0.021)})
    out = downstream_analysis(df, "sblimp_macro", versus="text")
    assert out["gamma"] == pytest.approx(0.021, abs=0.003)
    assert out["compute_multiplier"] == pytest.approx(10 ** (0.066 / out["gamma"]))
    lo, hi = out["ci"]["compute_multiplier"]
    assert lo < out["compute_multiplier"] < hi
    assert out["versus_loss"]["slope"] < 0  # lower loss, better score
    f = tmp_path / "other.json"
    f.write_text(json.dumps({"sblimp_macro": {"gamma": 0.042}}))
    assert downstream_analysis(df, "sblimp_macro", versus=str(f))["compute_multiplier"] == pytest.approx(
        10 ** (0.042 / out["gamma"]))


def test_downstream_bad_inputs(tmp_path):
    df = synthetic_results(PRESETS["speech"], metrics={"ssc": (0.3, 0.017)})
    with pytest.raises(SlmscaleError, match="missing metric column 'tsc'"):
        downstream_analysis(df, "tsc")
    with pytest.raises(SlmscaleError, match="column 'ssc' must hold positive"):
        downstream_analysis(df.assign(ssc=-df["ssc"]), "ssc")
    with pytest.raises(SlmscaleError, match="Table 4"):
        downstream_analysis(df.assign(acc=df["ssc"]), "acc", versus="text")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"k": 1}))
    with pytest.raises(SlmscaleError, match="missing key 'gamma'"):
        downstream_analysis(df, "ssc", versus=str(bad))
    # runs not evaluated yet are skipped, not errors
    partial = df.assign(ssc=df["ssc"].where(df.index % 2 == 0))
    assert downstream_analysis(partial, "ssc")["n_runs"] == (len(df) + 1) // 2
