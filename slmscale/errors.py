"""The one error type of slmscale (bad user input, printed by the CLI as one line without a traceback), and the
one wording of a typed config's validation errors."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["SlmscaleError", "explain_validation_error", "field_path"]


class SlmscaleError(Exception):
    """An error caused by user input (a file, a field, a flag). The CLI prints it without a traceback.

    The message names the file or field and what was expected: `"<file/field>: <what was wrong>, expected <what>"`.
    """


def field_path(loc: Sequence[str | int]) -> str:
    """A pydantic error location as written in a config file: ('eval', 1, 'units') -> "eval[1].units"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain_validation_error(
    exc: Any,
    where: str,
    *,
    flags: Mapping[str, str] | None = None,
    expected: Callable[[str], str | None] | None = None,
    known: Callable[[tuple], Iterable[str]] | None = None,
) -> str:
    """A pydantic `ValidationError` of a typed config as one line: `<where>: <problem>; <problem>`.

    Each problem names the field as written in the config (`tokens[2]`, `eval[1].units`), and its command-line flag
    when `flags` maps the top-level field to one: `field 'lr' (--lr): expected a finite number > 0, got -1.0`,
    `missing field 'model'`, `field 'modles': unknown field, expected some of [...]`. `expected(field)` may say
    in words what a top-level field accepts (else pydantic's message is used); `known(loc)` lists the fields
    allowed where an unknown one was found. A validator's own ValueError message is used as it is (it says what
    was expected and what was given). Unknown fields come first: a typo usually explains a missing field.
    """
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    return f"{where}: " + "; ".join(_problem(e, flags or {}, expected, known) for e in errors)


def _problem(error: Mapping[str, Any], flags: Mapping[str, str], expected, known) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    name = ""
    if loc:
        flag = flags.get(str(loc[0]))
        name = f"field '{field_path(loc)}'" + (f" ({flag})" if flag else "")
    if kind == "missing":
        return f"missing {name}"
    if kind == "extra_forbidden":
        allowed = sorted(known(loc)) if known else None
        return f"{name}: unknown field" + (f", expected some of {allowed}" if allowed else "")
    if kind == "value_error":  # a validator's own message
        what = str(error["ctx"]["error"]) if "ctx" in error else error["msg"].removeprefix("Value error, ")
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        what = f"expected a mapping, got {error['input']!r}"
    else:
        words = expected(str(loc[0])) if expected and loc else None
        what = f"expected {words}" if words else error["msg"][:1].lower() + error["msg"][1:]
        what += f", got {error['input']!r}"
    return f"{name}: {what}" if loc else what  # without a location: a whole-config rule, naming its fields itself
