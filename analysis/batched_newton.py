"""Many independent small robust regressions at once: batched Levenberg–Marquardt with Huber IRLS weights.

Scaling-law fits restart a 5–7 parameter problem from thousands of initial points. Summing all starts
into one `torch.optim.LBFGS` would couple them (one shared line search and curvature memory), so this
module keeps every start independent: each has its own Jacobian, its own curvature matrix, its own
damping λ and its own step acceptance; the starts merely share tensor operations.

Objective per start s:  f_s(θ) = Σ_i w_si ρ_δ(r_i(θ)),  ρ_δ the Huber loss, r the residuals.
Curvature: the Gauss–Newton matrix with iteratively-reweighted-least-squares weights,
    H = Σ_i w_i (ψ(r_i)/r_i) J_i J_iᵀ,   ψ = ρ_δ',  J_i = ∂r_i/∂θ,
which majorises the Huber loss (ψ(r)/r = 1 inside ±δ, δ/|r| outside) and is always positive semi-definite.
An exact Newton Hessian would be indefinite in Huber's linear region (almost every residual at δ = 1e-3)
and force heavy damping; the IRLS matrix converges in far fewer iterations. Per iteration every start
solves (H + λ·s·I) Δ = −g (a batched p×p Cholesky, `torch.linalg.cholesky_ex`) and keeps the step only if
its objective drops; λ shrinks after a success and grows after a failure (Levenberg–Marquardt).
Jacobians come from forward-mode autodiff (`forward_jacobian`: `torch.autograd.forward_ad` dual numbers),
one pass per parameter, or from the residual function's own analytic `jacobian(theta)` when it has one,
so any differentiable residual function works.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["BatchedResult", "minimize_batched", "huber", "huber_psi", "cpu_threads"]


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Temporarily set torch's intra-op CPU threads (None: leave as is).

    The fitter's tensors are small (starts × runs, a few MB), so extra threads buy little, while on a
    shared, oversubscribed CPU OpenMP's spinning threads slowed a fit 10–40× in our measurements.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """0.5 r² for |r| ≤ δ, δ(|r| − δ/2) beyond: the (unnormalised) Huber loss of Hoffmann et al."""
    clipped = r.clamp(-delta, delta)  # branch-free: ψ(r)·(r − ψ(r)/2) equals both pieces
    return clipped * (r - 0.5 * clipped)


def huber_psi(r: torch.Tensor, delta: float) -> torch.Tensor:
    return r.clamp(-delta, delta)


@dataclass
class BatchedResult:
    theta: torch.Tensor  # (S, p) final parameters
    value: torch.Tensor  # (S,) final objective
    converged: torch.Tensor  # (S,) bool: stopped on a tolerance, not on max_iter / non-finite values
    iterations: int


def forward_jacobian(residuals: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor):
    """Residuals (S, n) and their Jacobian (S, n, p): one forward-mode autodiff pass per parameter."""
    import torch.autograd.forward_ad as fwad

    columns, r = [], None
    for j in range(theta.shape[1]):
        tangent = torch.zeros_like(theta)
        tangent[:, j] = 1.0
        with fwad.dual_level():
            out = fwad.unpack_dual(residuals(fwad.make_dual(theta, tangent)))
        r = out.primal
        columns.append(out.tangent)
    return r, torch.stack(columns, dim=2)


def minimize_batched(
    residuals: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    weights: torch.Tensor,
    delta: float,
    *,
    max_iter: int = 300,
    ftol: float = 1e-8,
    xtol: float = 1e-9,
    patience: int = 2,
    lambda0: float = 1e-4,
    lambda_max: float = 1e10,
    desc: str | None = None,
) -> BatchedResult:
    """Minimise Σ_i weights[s, i]·Huber_δ(residuals(θ)[s, i]) independently for every start s.

    residuals: maps a batch of parameter vectors (S, p) to residuals (S, n), row s depending only on
    theta[s]; if it has a `jacobian(theta) -> (residuals, (S, n, p) Jacobian)` method, that is used. theta0: (S, p) starting points; weights: (S, n) per-run weights (bootstrap replicates and
    excluded runs are weight changes, not different problems). A start stops when `patience` consecutive
    accepted steps each improve its objective by at most ftol·|f| or move it by at most xtol·(1+|θ|), or
    when no damped step lowers it even at λ = lambda_max (a numerical minimum). The default ftol (relative)
    is still ~200× stricter than scipy L-BFGS-B's default stop on a Huber objective of ~1e-3 (factr = 1e7,
    an effectively absolute 2.2e-9 there). `desc` shows a progress
    bar of finished starts.
    """
    from tqdm.auto import tqdm

    if theta0.ndim != 2 or weights.ndim != 2 or theta0.shape[0] != weights.shape[0]:
        raise ValueError(f"theta0 (S, p) and weights (S, n) must agree in S; got {tuple(theta0.shape)}, {tuple(weights.shape)}")

    # A residual function may carry an analytic `jacobian(theta) -> (r, J)`; otherwise use forward-mode AD.
    jacobian = getattr(residuals, "jacobian", None) or (lambda th: forward_jacobian(residuals, th))

    def value_of(theta, w):
        return (w * huber(residuals(theta), delta)).sum(1)

    theta = theta0.clone()
    n_starts, p = theta.shape
    eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
    lam = torch.full((n_starts,), lambda0, dtype=theta.dtype, device=theta.device)
    with torch.no_grad():
        f_now = value_of(theta, weights)
    active = torch.isfinite(f_now)
    converged = torch.zeros(n_starts, dtype=torch.bool, device=theta.device)
    calm = torch.zeros(n_starts, dtype=torch.long, device=theta.device)  # consecutive tiny steps
    # Gradient and curvature at each start's current point, recomputed only after it moves: a rejected
    # step changes λ, not the local model.
    grad = torch.zeros_like(theta)
    curv = torch.zeros(n_starts, p, p, dtype=theta.dtype, device=theta.device)
    stale = active.clone()

    # disable=None lets tqdm hide itself off a terminal (and honour TQDM_DISABLE).
    bar = tqdm(total=n_starts, desc=desc, unit="start", disable=True if desc is None else None, leave=False)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count after the loop is the result)
        idx = active.nonzero().squeeze(1)
        bar.update(n_starts - idx.numel() - bar.n)
        if idx.numel() == 0:
            break
        with torch.no_grad():
            upd = (active & stale).nonzero().squeeze(1)
            if upd.numel():
                r, jac = jacobian(theta[upd])
                w = weights[upd]
                # IRLS weight ψ(r)/r of the Huber loss: 1 inside ±δ, δ/|r| outside.
                irls = delta / r.abs().clamp_min(delta)
                grad[upd] = torch.einsum("sn,snp->sp", w * huber_psi(r, delta), jac)
                weighted = jac * (w * irls).unsqueeze(2)
                curv[upd] = torch.bmm(weighted.transpose(1, 2), jac)
            th, f0, lm = theta[idx], f_now[idx], lam[idx]
            c = curv[idx]
            # Marquardt-style scale: damping proportional to this start's curvature magnitude.
            scale = c.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)
            chol, info = torch.linalg.cholesky_ex(c + (lm * scale)[:, None, None] * eye)
            step = -torch.cholesky_solve(grad[idx].unsqueeze(2), chol).squeeze(2)
            f_new = value_of(th + step, weights[idx])
        acc = (info == 0) & torch.isfinite(f_new) & (f_new < f0)

        # Accepted starts move and relax their damping; the others stiffen it.
        small = acc & (
            ((f0 - f_new) <= ftol * f0.abs().clamp_min(1e-300))
            | (step.abs() <= xtol * (1.0 + th.abs())).all(1)
        )
        new_lam = torch.where(acc, (lm / 5.0).clamp_min(1e-12), lm * 8.0)
        new_calm = torch.where(small, calm[idx] + 1, torch.where(acc, torch.zeros_like(calm[idx]), calm[idx]))
        done = (new_calm >= patience) | (~acc & (new_lam > lambda_max))

        theta[idx] = torch.where(acc[:, None], th + step, th)
        f_now[idx] = torch.where(acc, f_new, f0)
        lam[idx], calm[idx], stale[idx] = new_lam, new_calm, acc
        converged[idx] = done
        active[idx] = ~done
    bar.close()
    return BatchedResult(theta=theta, value=f_now, converged=converged, iterations=iterations)
