"""Scaling-law parameters L(N, D) = E + A / N'^alpha + B / D'^beta, the published presets, and JSON I/O.

N' = N and D' = D for the Chinchilla form. The data-constrained form (Muennighoff et al. 2023) adds
R_N* and R_D*: repeated tokens and excess parameters are worth exponentially less,
    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),   R_D = D / U_D - 1   (U_D unique tokens)
and likewise N' with U_N = min(N, N_opt(U_D)) and R_N*.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from slmscale.errors import SlmscaleError
from slmscale.io import read_json

__all__ = ["ScalingParams", "PRESETS", "preset", "load_params", "params_from_dict"]

REQUIRED_KEYS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class ScalingParams:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    R_N_star: float | None = None
    R_D_star: float | None = None
    source: str = ""

    @property
    def data_constrained(self) -> bool:
        return self.R_D_star is not None

    def validate(self, where: str = "params") -> ScalingParams:
        for key in REQUIRED_KEYS + ("R_N_star", "R_D_star"):
            value = getattr(self, key)
            if value is None and key in ("R_N_star", "R_D_star"):
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SlmscaleError(f"{where}: '{key}' must be a finite positive number, got {value!r}")
        if (self.R_N_star is None) != (self.R_D_star is None):
            raise SlmscaleError(f"{where}: give both 'R_N_star' and 'R_D_star' (data-constrained form) or neither")
        return self

    @property
    def has_optimum(self) -> bool:
        """A compute-optimal allocation exists only when loss falls with both N and D (alpha, beta > 0).
        A fit to runs where larger models did not help (e.g. all far under-trained) can give alpha <= 0."""
        return self.alpha > 0 and self.beta > 0

    def why_no_optimum(self) -> str:
        return (f"alpha = {self.alpha:.4g}, beta = {self.beta:.4g}: the fitted loss does not fall with "
                f"{'model size N' if self.alpha <= 0 else 'tokens D'}, so no compute-optimal allocation exists "
                f"(train the runs longer, or add larger models / budgets)")

    def loss(self, n, d, unique_tokens=None):
        """Predicted loss for N parameters trained on D tokens (numpy arrays or floats).

        `unique_tokens` (U_D) matters only for the data-constrained form; by default every token is unique.
        """
        import numpy as np

        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        if self.data_constrained and unique_tokens is not None:
            n, d = self.effective_n_d(n, d, np.asarray(unique_tokens, dtype=float))
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal_n_for_tokens(self, d):
        """N_opt(D): the compute-optimal model size for a D-token budget (inverts the allocation rule)."""
        import numpy as np

        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return g ** (1.0 + self.beta / self.alpha) * np.asarray(d, dtype=float) ** (self.beta / self.alpha)

    def effective_n_d(self, n, d, unique_tokens):
        """(N', D') of the data-constrained form; U_N = min(N, N_opt(U_D)) as in Muennighoff et al."""
        import numpy as np

        u_d = np.minimum(unique_tokens, d)
        r_d = d / u_d - 1.0
        d_eff = u_d + u_d * self.R_D_star * (1.0 - np.exp(-r_d / self.R_D_star))
        u_n = np.minimum(n, self.optimal_n_for_tokens(u_d))
        r_n = n / u_n - 1.0
        n_eff = u_n + u_n * self.R_N_star * (1.0 - np.exp(-r_n / self.R_N_star))
        return n_eff, d_eff

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.data_constrained:
            out.pop("R_N_star")
            out.pop("R_D_star")
        return out


# Published fits. `source` says where each number comes from (see /docs/analysis.md).
PRESETS: dict[str, ScalingParams] = {
    "speech": ScalingParams(
        1.73, 13.9, 39.8, 0.25, 0.24, R_N_star=31.0, R_D_star=25.0,
        source="Cuervo & Marxer 2024, Table 5: data-constrained fit, speech LMs on HuBERT units",
    ),
    "text": ScalingParams(
        1.87, 521.0, 1488.0, 0.35, 0.35, R_N_star=5.31, R_D_star=15.4,
        source="Muennighoff et al. 2023 (as quoted in Cuervo & Marxer 2024, Table 5): data-constrained fit, text LMs",
    ),
    "hoffmann": ScalingParams(
        1.69, 406.4, 410.7, 0.34, 0.28,
        source="Hoffmann et al. 2022 (Chinchilla), approach 3",
    ),
    "epoch": ScalingParams(
        1.82, 482.0, 2085.4, 0.348, 0.366,
        source="Besiroglu et al. 2024 (Epoch AI), refit of Hoffmann et al. Figure 4 data",
    ),
}


def preset(name: str) -> ScalingParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise SlmscaleError(f"--preset: unknown preset '{name}', expected one of {sorted(PRESETS)}") from None


def params_from_dict(obj: object, where: str = "params") -> ScalingParams:
    """Build parameters from a dict such as `slmscale fit --json` prints (extra keys like `ci` are ignored)."""
    if not isinstance(obj, dict):
        raise SlmscaleError(f"{where}: expected a JSON object with keys {list(REQUIRED_KEYS)}, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise SlmscaleError(f"{where}: missing key(s) {missing}; expected {list(REQUIRED_KEYS)} (+ optional R_N_star, R_D_star)")

    def number(key):
        value = obj.get(key)
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SlmscaleError(f"{where}: key '{key}' must be a number, got {value!r}") from None

    params = ScalingParams(
        *(number(k) for k in REQUIRED_KEYS),
        R_N_star=number("R_N_star"),
        R_D_star=number("R_D_star"),
        source=str(obj.get("source", where)),
    )
    return params.validate(where)


def load_params(path: str | Path) -> ScalingParams:
    return params_from_dict(read_json(path, what="params file"), where=str(path))
