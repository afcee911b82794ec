"""Bootstrap CIs: seeded reproducibility, coverage of the truth on synthetic data."""
from __future__ import annotations

import numpy as np
import pytest

from slmscale.analysis.bootstrap import bootstrap_fit
from slmscale.analysis.fit import FitConfig, fit_scaling_law
from slmscale.analysis.optimal import closed_form_optimal
from slmscale.analysis.params import ScalingParams
from slmscale.analysis.synthetic import synthetic_results

TRUE = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37)


@pytest.fixture(scope="module")
def fitted():
    df = synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8, 1e9), ratios=(2, 5, 10, 20, 50, 100), noise=0.01, seed=3)
    return df, fit_scaling_law(df, FitConfig(grid="coarse"))


def test_bootstrap_is_seeded_and_reproducible(fitted):
    df, fit = fitted
    a = bootstrap_fit(df, fit, n_boot=12, seed=7)
    b = bootstrap_fit(df, fit, n_boot=12, seed=7)
    c = bootstrap_fit(df, fit, n_boot=12, seed=8)
    assert a.ci() == b.ci()
    assert a.ci() != c.ci()


def test_intervals_contain_the_truth(fitted):
    df, fit = fitted
    boot = bootstrap_fit(df, fit, n_boot=40, seed=0, level=0.95)
    ci = boot.ci()
    for key in ("E", "alpha", "beta"):
        lo, hi = ci[key]
        assert lo <= getattr(TRUE, key) <= hi, (key, ci[key])
        assert lo < getattr(fit.params, key) < hi
    n_true, d_true = (float(x) for x in closed_form_optimal(1e21, TRUE))
    oci = boot.optimal_ci(1e21)
    assert oci["N_opt"][0] <= n_true <= oci["N_opt"][1]
    assert oci["D_opt"][0] <= d_true <= oci["D_opt"][1]
    assert np.ptp(boot.samples("alpha")) > 0  # replicates really differ
