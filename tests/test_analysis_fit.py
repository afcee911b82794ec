"""The batched multi-start fitter: correctness against scipy, parameter recovery, independence of starts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from slmscale.analysis.batched_newton import cpu_threads, forward_jacobian, minimize_batched
from slmscale.analysis.fit import (
    FitConfig,
    FitData,
    coarse_grid,
    epoch_grid,
    fit_scaling_law,
    make_residuals,
    theta_to_params,
)
from slmscale.analysis.params import ScalingParams
from slmscale.analysis.reference_fit import scipy_fit_per_start
from slmscale.analysis.schema import ColumnMap, read_results
from slmscale.analysis.synthetic import synthetic_results
from slmscale.errors import SlmscaleError

TRUE = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37)


@pytest.fixture(scope="module")
def chinchilla(chinchilla_csv) -> pd.DataFrame:
    return read_results(chinchilla_csv, ColumnMap(n="Model Size", flops="Training FLOP"))


def test_epoch_grid_is_hoffmanns_4500_starts():
    grid = epoch_grid()
    assert grid.shape == (4500, 5)
    # (a, b, e, alpha, beta) value sets of Hoffmann et al. / Epoch
    assert sorted(set(grid[:, 0])) == [0, 5, 10, 15, 20, 25]
    assert sorted(set(grid[:, 2])) == [-1, -0.5, 0, 0.5, 1]
    assert sorted(set(grid[:, 3])) == [0, 0.5, 1, 1.5, 2]
    assert len({tuple(r) for r in grid}) == 4500


def test_analytic_jacobian_matches_autodiff(chinchilla):
    data = FitData.from_frame(chinchilla, 5)
    res = make_residuals("chinchilla", data, torch.device("cpu"))
    theta = torch.as_tensor(coarse_grid()[::7], dtype=torch.float64)
    r1, j1 = res.jacobian(theta)
    r2, j2 = forward_jacobian(res, theta)
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(j1, j2)


def test_starts_are_independent(chinchilla):
    """A start's optimum must not depend on which other starts share the batch (no coupled line search)."""
    data = FitData.from_frame(chinchilla, 5)
    res = make_residuals("chinchilla", data, torch.device("cpu"))
    starts = torch.as_tensor(epoch_grid()[::600], dtype=torch.float64)
    w = torch.ones(len(starts), len(data), dtype=torch.float64)
    with cpu_threads(1):  # as fit_scaling_law does on CPU
        together = minimize_batched(res, starts, w, 1e-3)
        alone = minimize_batched(res, starts[3:4], w[3:4], 1e-3)
    torch.testing.assert_close(together.theta[3], alone.theta[0], rtol=0, atol=1e-12)
    assert together.value[3].item() == pytest.approx(alone.value[0].item(), rel=1e-14)


def test_matches_per_start_scipy_on_chinchilla(chinchilla):
    """Must show: the optimum scipy L-BFGS-B finds start by start, on a subset of the Epoch grid."""
    data = FitData.from_frame(chinchilla, 5)
    subset = epoch_grid()[::400]  # 12 starts keep this fast; the full grid is checked below
    ref = scipy_fit_per_start(data, subset, 1e-3, analytic_grad=True)
    res = make_residuals("chinchilla", data, torch.device("cpu"))
    with cpu_threads(1):
        ours = minimize_batched(res, torch.as_tensor(subset), torch.ones(len(subset), len(data), dtype=torch.float64), 1e-3)
    best = int(torch.argmin(torch.where(ours.converged, ours.value, torch.inf)))
    assert ours.value[best].item() <= ref.objective * (1 + 1e-7)
    p_ours, p_ref = theta_to_params(ours.theta[best].numpy(), "chinchilla"), theta_to_params(ref.theta, "chinchilla")
    assert p_ours.E == pytest.approx(p_ref.E, abs=2e-3)
    assert p_ours.alpha == pytest.approx(p_ref.alpha, abs=2e-3)
    assert p_ours.beta == pytest.approx(p_ref.beta, abs=2e-3)


def test_full_epoch_grid_lands_on_epochs_optimum(chinchilla):
    """Must show: all 4,500 starts, 5 highest-loss runs dropped -> E≈1.817, α≈0.347, β≈0.367."""
    fit = fit_scaling_law(chinchilla, FitConfig(exclude_highest_loss=5))
    assert fit.n_starts == 4500 and fit.n_runs == 240
    assert len(fit.excluded_run_ids) == 5
    assert fit.params.E == pytest.approx(1.817, abs=2e-3)
    assert fit.params.alpha == pytest.approx(0.347, abs=2e-3)
    assert fit.params.beta == pytest.approx(0.367, abs=2e-3)
    assert 300 < fit.params.A < 800 and 1000 < fit.params.B < 4000  # weakly identified
    assert fit.n_converged > 0.9 * fit.n_starts


def test_recovers_known_parameters_from_noisy_synthetic_runs():
    df = synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8, 1e9, 3e9), noise=0.005, seed=1)
    fit = fit_scaling_law(df, FitConfig(grid="coarse"))
    assert fit.params.E == pytest.approx(TRUE.E, rel=0.03)
    assert fit.params.alpha == pytest.approx(TRUE.alpha, abs=0.02)
    assert fit.params.beta == pytest.approx(TRUE.beta, abs=0.02)
    # predictions at unseen (N, D) are accurate even where A, B trade off
    assert fit.params.loss(5e9, 2e11) == pytest.approx(TRUE.loss(5e9, 2e11), rel=0.01)


def test_points_at_several_lrs_are_fitted_at_their_best_lr():
    """A table from a grid with `lrs`: every point at its tuned LR plus two worse LRs (+3 %, +8 % loss, in shuffled
    order); the fit sees each point's best row only, gives the fit of the tuned table, and names the rest."""
    tuned = synthetic_results(TRUE, sizes=(1e7, 3e7, 1e8, 3e8, 1e9, 3e9), noise=0.005, seed=1)
    tuned = tuned.assign(lr=2e-3, seed=0, run_id=tuned["run_id"] + "-lr0.002")
    worse = [tuned.assign(lr=lr, loss=tuned["loss"] * f, run_id=tuned["run_id"].str.replace("0.002", str(lr)))
             for lr, f in ((1e-3, 1.08), (4e-3, 1.03))]
    table = pd.concat([worse[0], tuned, worse[1]]).sample(frac=1.0, random_state=0).reset_index(drop=True)
    data = FitData.from_frame(table)
    assert sorted(data.run_ids) == sorted(tuned["run_id"]) and len(data.other_lr_run_ids) == 2 * len(tuned)
    fit, reference = fit_scaling_law(table, FitConfig(grid="coarse")), fit_scaling_law(tuned, FitConfig(grid="coarse"))
    assert fit.params.alpha == pytest.approx(reference.params.alpha, abs=1e-6)
    assert fit.params.beta == pytest.approx(reference.params.beta, abs=1e-6)
    assert sorted(fit.to_dict()["other_lr_run_ids"]) == sorted(data.other_lr_run_ids)
    assert FitData.from_frame(tuned).other_lr_run_ids == []  # one LR per point: nothing is left out


def test_data_constrained_fit_recovers_r_d_star():
    true = ScalingParams(1.8, 480.0, 2100.0, 0.35, 0.37, R_N_star=5.0, R_D_star=15.0)
    df = synthetic_results(true, sizes=(1e7, 1e8, 1e9), ratios=(5, 20, 100), epochs=(1, 2, 4, 8, 16, 32, 64),
                           noise=0.003, seed=2)
    fit = fit_scaling_law(df, FitConfig(form="data-constrained", grid="coarse"))
    assert fit.params.data_constrained
    assert fit.params.R_D_star == pytest.approx(15.0, rel=0.15)
    assert fit.params.beta == pytest.approx(true.beta, abs=0.03)
    # A Chinchilla-form fit of the same runs is clearly worse: repeated tokens are not worth fresh ones.
    plain = fit_scaling_law(df, FitConfig(grid="coarse"))
    assert fit.objective < 0.5 * plain.objective


def test_exclude_highest_loss_drops_exactly_k(chinchilla):
    data = FitData.from_frame(chinchilla, 5)
    top5 = np.sort(chinchilla["loss"].to_numpy())[-5:]
    assert len(data) == len(chinchilla) - 5 and data.loss.max() < top5.min()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda df: df.drop(columns=["loss"]), "missing column 'loss'"),
        (lambda df: df.assign(loss=df["loss"].where(df.index != 3, np.nan)), "column 'loss'"),
        (lambda df: df.assign(n_params=df["n_params"].where(df.index != 0, -1.0)), "column 'n_params'"),
        (lambda df: df.assign(tokens=df["tokens"].where(df.index != 2, 0.0)), "column 'tokens'"),
        (lambda df: df.head(4), "expected at least 5 runs"),
    ],
)
def test_bad_tables_raise_clear_errors(mutate, expected):
    df = mutate(synthetic_results(TRUE, sizes=(1e7, 1e8), ratios=(2, 20, 100)))
    with pytest.raises(SlmscaleError, match=expected):
        fit_scaling_law(df, FitConfig(grid="coarse"))


def test_data_constrained_needs_repeated_data():
    df = synthetic_results(TRUE, sizes=(1e7, 1e8, 1e9), ratios=(2, 20, 100))
    with pytest.raises(SlmscaleError, match="epochs > 1"):
        fit_scaling_law(df, FitConfig(form="data-constrained", grid="coarse"))


def test_config_validate_names_the_field():
    with pytest.raises(SlmscaleError, match="--delta"):
        FitConfig(delta=0).validate()
    with pytest.raises(SlmscaleError, match="--form"):
        FitConfig(form="kaplan").validate()
