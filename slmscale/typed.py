"""`TypedConfig`: the base of slmscale's typed configs (pydantic models, one schema each).

A bad value raises one `SlmscaleError` line naming the field (`explain_validation_error`), never pydantic's
multi-line report: the CLI prints it as it is.
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from slmscale.errors import SlmscaleError, explain_validation_error

__all__ = ["TypedConfig", "parse_count"]

_COUNT_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


class TypedConfig(BaseModel):
    """Subclasses set `config_name` (how their errors start) and `config_flags` (field -> command-line flag,
    named in errors); `explain` may be overridden to say more (see models.config.TrainConfig)."""

    config_name: ClassVar[str] = "config"
    config_flags: ClassVar[Mapping[str, str]] = {}

    def __init__(self, /, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise SlmscaleError(type(self).explain(exc, type(self).config_name)) from None

    @classmethod
    def explain(cls, exc: ValidationError, where: str) -> str:
        """`exc` as one line starting with `where`."""
        return explain_validation_error(exc, where, flags=cls.config_flags)


def parse_count(text: str) -> int | float:
    """A count as people write it: 2000000, 2_000_000, 2e6, 2M, 500k, 1.5B, 3T (k/M/B/G/T, any case).

    A suffixed count is computed exactly (1.5B is the integer 1500000000). Raises ValueError on anything else;
    callers say what they expected (tokens, FLOPs, ...) and check its range."""
    t = str(text).strip().replace("_", "").replace(",", "")
    scale = _COUNT_SUFFIX.get(t[-1:].lower())
    try:
        if scale is None:
            return float(t)
        exact = Decimal(t[:-1]) * scale
        if not exact.is_finite():
            raise InvalidOperation
    except (ValueError, InvalidOperation):
        raise ValueError(f"not a count: {text!r}") from None
    return int(exact) if exact == exact.to_integral_value() else float(exact)
