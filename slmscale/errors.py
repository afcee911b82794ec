"""The one error type of slmscale: bad user input, printed by the CLI as one line without a traceback."""
from __future__ import annotations

__all__ = ["SlmscaleError"]


class SlmscaleError(Exception):
    """An error caused by user input (a file, a field, a flag). The CLI prints it without a traceback.

    The message names the file or field and what was expected: `"<file/field>: <what was wrong>, expected <what>"`.
    """
