"""`ReadyTrials`: the sweep's Ray Tune Searcher. It suggests every trial of sweep.json once, in order, as soon as
the trial can start; Tune places and runs them (resources, max_concurrent, retries).

A trial without a trunk (a cosine point, a WSD trunk) can start at once. A WSD branch can start once its trunk has
written the complete checkpoint of the branch's first update (`models.checkpoint.complete_steps`), or when it has
checkpoints of its own or has finished (a resumed sweep). Until then `suggest` passes it over, and returns None
when nothing else is ready: Tune asks again on its next step, while the trunks train. A trunk that fails for good
releases its branches, which then fail with the reason ("the trunk has no checkpoint of step S") instead of
waiting forever; `sweep resume` retries the trunk.

Its state (the run_ids suggested, and which Tune trial runs which) is saved with Tune's experiment state as JSON,
so `Tuner.restore` never suggests a trial twice.
"""
from __future__ import annotations

import json
from typing import Any

from ray.tune.search import Searcher

from slmscale.models.checkpoint import complete_steps
from slmscale.sweep.storage import SweepStorage

__all__ = ["ReadyTrials"]


class ReadyTrials(Searcher):
    """Suggests `{"run_id", "sweep_file"}` for each trial of STORAGE/sweep.json once it is ready to start."""

    def __init__(self, sweep_file: str, done: tuple[str, ...] = ()):
        super().__init__()
        self.sweep_file = str(sweep_file)
        self.suggested: list[str] = list(done)  # run_ids, in the order Tune got them (`done`: finished before)
        self.run_id_of: dict[str, str] = {}  # Tune trial_id -> run_id
        self.failed_trunks: set[str] = set()
        self._trials: list[dict[str, Any]] | None = None  # sweep.json's, read once

    def ready(self, storage: SweepStorage, trial: dict[str, Any], trunk_steps: dict[str, list[int]]) -> bool:
        """Whether `trial` can start now; `trunk_steps` caches each trunk's complete checkpoints for one call."""
        trunk = trial.get("trunk")
        if not trunk or trunk in self.failed_trunks:
            return True
        own = storage.run_dir(trial["run_id"])
        if own.is_done() or complete_steps(own.path):  # a resumed branch continues from its own checkpoints
            return True
        if trunk not in trunk_steps:
            trunk_steps[trunk] = complete_steps(storage.run_dir(trunk).path)
        return int(trial["branch_step"]) in trunk_steps[trunk]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        storage = SweepStorage.of_sweep_file(self.sweep_file)
        if self._trials is None:
            self._trials = storage.read_sweep()["trials"]
        done = set(self.suggested)
        pending = [t for t in self._trials if t["run_id"] not in done]
        if not pending:
            return Searcher.FINISHED
        trunk_steps: dict[str, list[int]] = {}
        for trial in pending:
            if self.ready(storage, trial, trunk_steps):
                self.suggested.append(trial["run_id"])
                self.run_id_of[trial_id] = trial["run_id"]
                return {"run_id": trial["run_id"], "sweep_file": self.sweep_file}
        return None  # every pending branch waits for its trunk's checkpoint; Tune asks again

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error and trial_id in self.run_id_of:
            self.failed_trunks.add(self.run_id_of[trial_id])

    def get_state(self) -> dict[str, Any]:
        return {"sweep_file": self.sweep_file, "suggested": list(self.suggested), "run_id_of": dict(self.run_id_of),
                "failed_trunks": sorted(self.failed_trunks)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.suggested = list(state["suggested"])
        self.run_id_of = dict(state["run_id_of"])
        # A trunk that had failed gets another chance: `sweep resume` retries errored trials.
        self.failed_trunks = set()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))
