"""The sweep's storage: the one owner of its on-disk layout.

    STORAGE/
      sweep.json         the expanded grid, unit dataset + its meta hash, trials, settings, code version
                         (written first; `sweep resume`, `status` and `results` refuse a folder without it)
      .lock              held by the one live driver (slmscale/locks.py): a second launch/resume is refused
      driver.json        host and pid of the last driver (for `sweep status`)
      runs/<run_id>/     one training run dir per trial: the layout of models.rundir.RunDir, plus
          attempt.json       host, pid, Ray node id, attempt number, start time, resumed_from_step of the newest attempt
          sweep_evals.json   metrics of each finished evaluation, keyed by the grid's eval entry, so a
                             restarted trial skips the evaluations already done
          eval/<name>.json   the full result of each evaluation (written by models.evaluation)
          row.json           the trial's results row, training + evaluation metrics: present = FINISHED
      tune/              Ray Tune's experiment state (Tuner.restore reads it)
      results.parquet    the results table, rewritten each time a trial finishes

Every module of the sweep (and `slmscale demo`) names these paths through `SweepStorage` and `TrialDir`,
never as string literals. The run dirs are always the `runs/` folder next to sweep.json, wherever the storage
is mounted (sweep.json's settings.run_root records the launch-time path, for the record only: trusting it
after a move or copy would read, or train into, the old place).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError
from slmscale.io import read_json
from slmscale.models.rundir import RunDir
from slmscale.objstore import StorePath, is_uri, location

__all__ = ["SweepStorage", "TrialDir", "resolve_storage", "read_sweep"]

SWEEP_FILE = "sweep.json"
DRIVER_FILE = "driver.json"
LOCK_FILE = ".lock"
TUNE_DIR = "tune"
RUNS_DIR = "runs"
RESULTS_FILE = "results.parquet"


def resolve_storage(storage) -> Path | StorePath:
    """An absolute local/shared-filesystem path (spaces are fine), or a `StorePath` for an object-store URI
    (s3://bucket/prefix, gs://..., whatever pyarrow's filesystem layer resolves)."""
    if isinstance(storage, StorePath):
        return storage
    text = os.fspath(storage)
    if not text.strip():
        raise SlmscaleError("--storage: empty path")
    where = location(text.rstrip("/") if is_uri(text) else text)
    return where if isinstance(where, StorePath) else where.resolve()


class TrialDir(RunDir):
    """A trial's run directory: the training run dir of models.rundir plus the files the sweep adds to it."""

    @property
    def row(self) -> Path:
        """The trial's results row; its presence means the trial FINISHED."""
        return self.path / "row.json"

    @property
    def attempt(self) -> Path:
        return self.path / "attempt.json"

    @property
    def eval_index(self) -> Path:
        return self.path / "sweep_evals.json"

    def is_done(self) -> bool:
        return self.row.is_file()

    def read_row(self) -> dict[str, Any]:
        if self.row.is_file():
            try:
                return read_json(self.row, what="trial row")
            except SlmscaleError as exc:
                raise SlmscaleError(f"{exc}; delete it and `sweep resume` to redo the trial's evaluation") from None
        raise SlmscaleError(f"{self.row}: not found; the trial has not finished")

    def read_attempt(self) -> dict[str, Any]:
        """The newest attempt's record, {} before the first attempt."""
        return read_json(self.attempt, what="trial attempt") if self.attempt.is_file() else {}

    def read_eval_index(self) -> dict[str, Any]:
        return read_json(self.eval_index, what="evaluation index") if self.eval_index.is_file() else {}


@dataclass(frozen=True)
class SweepStorage:
    """Paths of one sweep's storage folder. Cheap to build; touches the file system only when asked.

    `SweepStorage(path)` takes the path as given; `SweepStorage.at(storage)` resolves user input (--storage)."""

    root: Path  # or a StorePath: the storage is on object storage

    def __init__(self, root) -> None:
        object.__setattr__(self, "root", location(root))

    @property
    def on_store(self) -> bool:
        """The storage is on object storage (s3://, gs://, ...), not a local/shared path."""
        return isinstance(self.root, StorePath)

    def __fspath__(self) -> str:
        return str(self.root)

    @classmethod
    def at(cls, storage: str | os.PathLike) -> SweepStorage:
        return cls(resolve_storage(storage))

    @classmethod
    def of_sweep_file(cls, sweep_file) -> SweepStorage:
        return cls(location(sweep_file).parent)

    @property
    def sweep_file(self) -> Path:
        return self.root / SWEEP_FILE

    @property
    def lock(self) -> Path:
        """Held by the sweep's one driver (`launch`, `resume`; see slmscale/locks.py)."""
        return self.root / LOCK_FILE

    @property
    def driver_file(self) -> Path:
        return self.root / DRIVER_FILE

    @property
    def tune_dir(self) -> Path:
        """Ray Tune's experiment folder of the newest driver; its name is the Tune run's name. On object storage
        each `sweep resume` starts a new experiment (`tune-2`, `tune-3`, ...: see sweep/launch.py)."""
        n = self._newest_experiment() if self.on_store else 1
        return self.root / (TUNE_DIR if n == 1 else f"{TUNE_DIR}-{n}")

    def _newest_experiment(self) -> int:
        """1 for `tune`, N for the newest `tune-N` (object storage)."""
        suffixes = (p.name.removeprefix(f"{TUNE_DIR}-") for p in self.root.glob(f"{TUNE_DIR}-*"))
        return max((int(x) for x in suffixes if x.isdigit()), default=1)

    def next_tune_dir(self) -> Path:
        """The experiment folder a new driver of an object-store sweep uses (`tune`, then `tune-2`, ...)."""
        current = self.tune_dir
        return current if not current.exists() else self.root / f"{TUNE_DIR}-{self._newest_experiment() + 1}"

    @property
    def runs_dir(self) -> Path:
        """The run dirs' folder. sweep.json records its launch-time path as settings.run_root, for the record
        only: a storage that was moved, copied or is mounted elsewhere keeps its run dirs here."""
        return self.root / RUNS_DIR

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    def exists(self) -> bool:
        return self.sweep_file.exists()

    def read_sweep(self) -> dict[str, Any]:
        """sweep.json, refusing a directory that slmscale did not create."""
        if self.on_store:
            if not self.sweep_file.is_file():
                raise SlmscaleError(f"{self.root}: no {SWEEP_FILE} — not a sweep storage written by "
                                    f"`slmscale sweep launch` (or the bucket/prefix is wrong)")
            return read_json(self.sweep_file, what="sweep file")
        if not self.root.is_dir():
            raise SlmscaleError(f"sweep storage not found: {self.root}")
        if not self.sweep_file.is_file():
            raise SlmscaleError(f"{self.root}: no {SWEEP_FILE} — not a sweep directory written by `slmscale sweep launch`")
        return read_json(self.sweep_file, what="sweep file")

    def run_dir(self, run_id: str) -> TrialDir:
        """The run dir of trial `run_id`: always in `runs/` next to sweep.json, wherever the storage is mounted."""
        return TrialDir(self.runs_dir / run_id)


def read_sweep(storage) -> tuple[SweepStorage, dict[str, Any]]:
    """(the storage, its sweep.json) for user input naming a sweep folder or object-store prefix."""
    if isinstance(storage, SweepStorage):
        return storage, storage.read_sweep()
    store = SweepStorage.at(storage)
    return store, store.read_sweep()
