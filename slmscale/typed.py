"""`TypedConfig`: the base of slmscale's typed configs (pydantic models, one schema each).

A bad value raises one `SlmscaleError` line naming the field (`explain_validation_error`), never pydantic's
multi-line report: the CLI prints it as it is.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from slmscale.errors import SlmscaleError, explain_validation_error

__all__ = ["TypedConfig"]


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
