"""Can the law be trusted? Holdout extrapolation, the approaches side by side, diagnostics, intervals on N_opt."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from slmscale.analysis.approaches import approach1, approach2, approach3, compare_approaches
from slmscale.analysis.diagnostics import design_warnings
from slmscale.analysis.holdout import HoldoutSpec, holdout_mask
from slmscale.analysis.optimal import closed_form_optimal
from slmscale.analysis.params import ScalingParams
from slmscale.analysis.synthetic import synthetic_results
from slmscale.cli import main
from slmscale.errors import SlmscaleError

TRUE = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37)
CHINCHILLA_COLUMNS = ["--n-col", "Model Size", "--flops-col", "Training FLOP"]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def scipy_huber_fit(n, d, loss, delta=1e-3):
    """An independent fit: scipy's Huber loss and L-BFGS-B on log L = LSE(a − α log N, b − β log D, e), from a few
    starts, with the gradient written out (Huber' = clip, LSE' = softmax)."""
    log_n, log_d, y = np.log(n), np.log(d), np.log(loss)

    def objective(theta):
        a, b, e, alpha, beta = theta
        u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
        pred = logsumexp(u, axis=0)
        r = y - pred
        share = np.exp(u - pred)
        dr = -np.clip(r, -delta, delta)  # ∂Huber/∂pred
        grad = np.array([(dr * share[0]).sum(), (dr * share[1]).sum(), (dr * share[2]).sum(),
                         -(dr * share[0] * log_n).sum(), -(dr * share[1] * log_d).sum()])
        return huber(delta, r).sum(), grad

    starts = [(a, b, 0.5, 0.3, 0.3) for a in (5, 10) for b in (5, 10)]
    best = min((minimize(objective, s, jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
                for s in starts), key=lambda r: r.fun)
    a, b, e, alpha, beta = best.x
    return ScalingParams(math.exp(e), math.exp(a), math.exp(b), alpha, beta)


def test_chinchilla_holdout_json_agrees_with_an_independent_scipy_fit(chinchilla_csv, capsys):
    rc = main(["fit", "--results", str(chinchilla_csv), *CHINCHILLA_COLUMNS, "--exclude-highest-loss", "5",
               "--holdout-fraction", "0.2", "--grid", "coarse", "--bootstrap", "20", "--json"])
    assert rc == 0
    holdout = last_json(capsys)["holdout"]
    assert {"n", "mape", "max_ape", "bias", "coverage"} <= holdout.keys()
    assert 0.0 <= holdout["coverage"] <= 1.0

    # The same split, written out independently: drop the 5 highest losses, hold out the top 20 % by compute.
    df = pd.read_csv(chinchilla_csv).rename(columns={"Model Size": "n", "Training FLOP": "c"})
    df = df.drop(index=df["loss"].nlargest(5).index)
    df["d"] = df["c"] / (6 * df["n"])
    test = df.nlargest(math.ceil(0.2 * len(df)), "c")
    train = df.drop(index=test.index)
    params = scipy_huber_fit(train["n"].to_numpy(), train["d"].to_numpy(), train["loss"].to_numpy())
    predicted = params.loss(test["n"].to_numpy(), test["d"].to_numpy())
    signed = (predicted - test["loss"].to_numpy()) / test["loss"].to_numpy() * 100
    assert holdout["n"] == len(test) == 48
    assert holdout["mape"] == pytest.approx(np.abs(signed).mean(), abs=0.02)
    assert holdout["max_ape"] == pytest.approx(np.abs(signed).max(), abs=0.05)
    assert holdout["bias"] == pytest.approx(signed.mean(), abs=0.02)
    by_id = {r["run_id"]: r for r in holdout["runs"]}
    assert len(by_id) == 48 and all(r["lo"] < r["predicted"] < r["hi"] for r in by_id.values())
    assert "leave_one_budget_out" in holdout["structure"] and "leave_largest_size_out" in holdout["structure"]


def test_holdout_intervals_cover_a_true_law():
    """On data from a known law with honest noise, extrapolation is accurate and the intervals cover."""
    from slmscale.analysis.fit import FitConfig
    from slmscale.analysis.holdout import holdout_evaluation

    df = synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8, 1e9), ratios=(2, 5, 10, 20, 50, 100), noise=0.01, seed=1)
    result = holdout_evaluation(df, FitConfig(grid="coarse"), HoldoutSpec(above=float(np.quantile(df["flops"], 0.8))),
                                n_boot=30, seed=0)
    summary = result.summary()
    assert summary["n"] == int((df["flops"] > np.quantile(df["flops"], 0.8)).sum())
    assert summary["mape"] < 2.5 and summary["coverage"] >= 0.8


def test_holdout_spec_errors():
    flops = np.array([1e18, 2e18, 4e18, 8e18])
    assert holdout_mask(flops, HoldoutSpec(fraction=0.5)).tolist() == [False, False, True, True]
    assert holdout_mask(flops, HoldoutSpec(above=3e18)).tolist() == [False, False, True, True]
    with pytest.raises(SlmscaleError, match="--holdout-fraction: expected a fraction in"):
        holdout_mask(flops, HoldoutSpec(fraction=1.5))
    with pytest.raises(SlmscaleError, match="holds out no run"):
        holdout_mask(flops, HoldoutSpec(above=1e19))
    with pytest.raises(SlmscaleError, match="exactly one"):
        HoldoutSpec(fraction=0.2, above=1e18).validate()


def isoflop_table(params: ScalingParams, noise: float = 0.003, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP runs from a known law: a fixed ladder of model sizes, at each budget those within a decade of
    the true optimum (as an isoFLOP design brackets its expected minimum)."""
    rng = np.random.default_rng(seed)
    ladder = np.logspace(6, 12, 37)
    rows = []
    for c in np.logspace(18, 22, 6):
        n_opt = float(closed_form_optimal(c, params)[0])
        for n in ladder[(ladder > n_opt / 10) & (ladder < n_opt * 10)]:
            d = c / (6 * n)
            rows.append({"n_params": n, "tokens": d, "flops": c,
                         "loss": float(params.loss(n, d)) * math.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_approach2_recovers_the_allocation_exponents_of_a_known_law():
    law = approach2(isoflop_table(TRUE), n_boot=40)
    a_true = TRUE.beta / (TRUE.alpha + TRUE.beta)
    assert law.a == pytest.approx(a_true, rel=0.02)
    row = law.row(1e23, 0.95)
    assert row["b"] == pytest.approx(1 - a_true, rel=0.02)
    assert row["a_ci"][0] <= a_true <= row["a_ci"][1]
    n_true = float(closed_form_optimal(1e23, TRUE)[0])
    assert row["N_opt_ci"][0] <= n_true <= row["N_opt_ci"][1]
    assert row["D_opt"] * row["N_opt"] * 6 == pytest.approx(1e23)


def test_approach2_is_robust_to_one_diverged_run():
    df = isoflop_table(TRUE)
    budget = df["flops"].unique()[2]
    one = df.index[df["flops"] == budget][1]
    df.loc[one, "loss"] *= 1.5  # a diverged run far off its isoFLOP curve
    assert approach2(df, n_boot=2).a == pytest.approx(TRUE.beta / (TRUE.alpha + TRUE.beta), rel=0.02)


def test_approaches_compared_and_disagreement_flagged():
    df = isoflop_table(TRUE)
    wrong = ScalingParams(1.8, 480.0, 2100.0, 0.2, 0.6)  # a = 0.75: far from the data's 0.514
    laws = [approach1(df, n_boot=40), approach2(df, n_boot=40)]
    fake_boot = type("Boot", (), {"params": [ScalingParams(1.8, 480.0, 2100.0, 0.2 + e, 0.6) for e in (-0.01, 0, 0.01)]})()
    laws.append(approach3(wrong, fake_boot))
    rows = compare_approaches(laws, 1e23)
    assert [r["approach"][0] for r in rows] == ["1", "2", "3"]
    assert rows[1]["disagrees"] and "3 (a" in " ".join(rows[1]["disagrees"])
    assert any("2 (a" in d for d in rows[2]["disagrees"])


def test_design_warnings_name_what_cannot_be_pinned():
    single_budget = isoflop_table(TRUE)
    single_budget = single_budget[single_budget["flops"] == single_budget["flops"].max()]
    text = " ".join(design_warnings(single_budget))
    assert "only 1 compute budget" in text and "collinear" in text and "single isoFLOP" in text
    fixed_ratio = synthetic_results(TRUE, sizes=(1e7, 1e8, 1e9), ratios=(20,))
    text = " ".join(design_warnings(fixed_ratio))
    assert "only 3 distinct model size" in text and "fixed tokens-per-parameter" in text and "trained once" in text
    good = synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8, 1e9), ratios=(2, 5, 10, 20, 50))
    assert not any("collinear" in w or "only" in w for w in design_warnings(good))
    wide = design_warnings(good, {"alpha": [0.1, 0.6], "beta": [0.36, 0.38]}, TRUE)
    assert any(w.startswith("alpha = 0.35 has a wide") for w in wide) and not any(w.startswith("beta") for w in wide)


def test_optimal_from_results_carries_intervals(tmp_path, capsys):
    df = synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8, 1e9), ratios=(2, 5, 10, 20, 50, 100), noise=0.01, seed=3)
    table = tmp_path / "results.csv"
    df.to_csv(table, index=False)
    assert main(["optimal", "--results", str(table), "--compute", "1e21", "--grid", "coarse", "--bootstrap", "20", "--json"]) == 0
    out = last_json(capsys)
    n_true, d_true = (float(x) for x in closed_form_optimal(1e21, TRUE))
    for key, value in (("N_opt", out["N_opt"]), ("D_opt", out["D_opt"]), ("loss", out["loss"])):
        lo, hi = out["ci"][key]
        assert lo < value < hi, key
    assert out["ci"]["N_opt"][0] < n_true < out["ci"]["N_opt"][1]
    assert out["ci"]["D_opt"][0] < d_true < out["ci"]["D_opt"][1]
    assert main(["optimal", "--preset", "speech", "--compute", "1e21", "--json"]) == 0
    assert "ci" not in last_json(capsys)  # presets keep their point values


def test_fit_prints_the_approach_table_on_chinchilla(chinchilla_csv, capsys):
    assert main(["fit", "--results", str(chinchilla_csv), *CHINCHILLA_COLUMNS, "--exclude-highest-loss", "5",
                 "--grid", "coarse", "--bootstrap", "20", "--approaches", "--at-compute", "5.76e23", "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    table = json.loads(printed[-1])["approaches"]
    assert [r["approach"][0] for r in table["rows"]] == ["1", "2", "3"]
    a = {r["approach"][0]: r["a"] for r in table["rows"]}
    assert 0.45 < a["1"] < 0.56 and 0.45 < a["2"] < 0.56 and 0.45 < a["3"] < 0.56  # Hoffmann et al.: 0.50, 0.49, 0.46
    assert any(line.strip().startswith("2: isoFLOP parabolas") for line in printed)
