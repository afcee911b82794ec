"""Tune callbacks of the sweep driver (module-level so Tune can pickle them into its experiment state)."""
from __future__ import annotations

from pathlib import Path

from ray import tune

from slmscale.errors import SlmscaleError


class WriteResultsOnComplete(tune.Callback):
    """Rewrite STORAGE/results.parquet each time a trial finishes, so results exist before the sweep ends."""

    def __init__(self, storage: str | Path):
        self.storage = str(storage)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from slmscale.sweep.results import write_sweep_results

        try:
            write_sweep_results(self.storage)
        except SlmscaleError:
            pass  # nothing finished yet (or a row is unreadable): `sweep results` reports why
