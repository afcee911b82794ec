"""`slmscale demo` — the whole study on an embedded default (filled in by the end-to-end issue)."""


def register(sub, formatter_class) -> None:
    return None
