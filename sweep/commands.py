"""Subcommands of this stage (filled in by the stage's issue). See sweep/cli.py for the contract:
`register(subparsers, formatter_class)` adds parsers whose `handler` is set with `set_defaults(handler=fn)`;
`fn(args) -> int | None` imports heavy modules lazily and raises analysis.io.SlmscaleError on bad input."""


def register(sub, formatter_class) -> None:
    return None
