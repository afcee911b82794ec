"""The training run directory: the one owner of its layout (models -> sweep, evaluation).

    RUN_DIR/
      .lock              held by the run's one writer (see slmscale/locks.py)
      config.json        the TrainConfig (resuming with a different config is refused)
      run.json           provenance: model + HF config, n_params, seed, tokenizer (id, hash), units, code version
      metrics.jsonl      one JSON object per report
      checkpoints/step-NNNNNNN/   see models/checkpoint.py
      model/             final weights (LlamaForCausalLM.save_pretrained, safetensors)
      data/<key>/        packed train/val/test streams (unless TrainConfig.data_cache moves them)
      final.json         test/val loss and throughput of the finished run
      results.parquet    the run's row of the results table
      eval/<name>.json   one benchmark result each (models/evaluation)

Every other module names these files through `RunDir`, never as string literals, so the layout has one home.
Files that a sweep adds to a run directory (row.json, attempt.json, ...) are described in sweep/storage.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmscale.io import read_json

__all__ = ["RunDir"]

_STEP_PREFIX = "step-"


@dataclass(frozen=True)
class RunDir:
    """Paths of one training run directory. Cheap to build; touches the file system only when asked."""

    path: Path  # or a slmscale.objstore.StorePath: a run dir on object storage (read it; train into a scratch copy)

    def __init__(self, path) -> None:
        from slmscale.objstore import location

        object.__setattr__(self, "path", location(path))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def on_store(self) -> bool:
        """The run dir is on object storage (a `StorePath`), not a local/shared path."""
        from slmscale.objstore import StorePath

        return isinstance(self.path, StorePath)

    @property
    def lock(self) -> Path:
        """Lock file of the one writer (slmscale.locks.exclusive_lock): `train` and a sweep trial hold it."""
        return self.path / ".lock"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def run_info(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.path / "final.json"

    @property
    def results(self) -> Path:
        return self.path / "results.parquet"

    @property
    def model(self) -> Path:
        """The finished run's weights, loadable with `LlamaForCausalLM.from_pretrained`."""
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def data(self) -> Path:
        """Default home of the packed train/val/test streams."""
        return self.path / "data"

    @property
    def evals(self) -> Path:
        """Evaluation results, one JSON file per benchmark (see `eval_result`)."""
        return self.path / "eval"

    def eval_result(self, name: str) -> Path:
        return self.evals / f"{name}.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{_STEP_PREFIX}{step:07d}"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the `checkpoints/step-N` folders present, ascending (complete or not: see models/checkpoint.py)."""
        if not self.checkpoints.is_dir():
            return []
        names = (p.name[len(_STEP_PREFIX):] for p in self.checkpoints.glob(f"{_STEP_PREFIX}*") if p.is_dir())
        return sorted(int(n) for n in names if n.isdigit())

    def has_model(self) -> bool:
        """The final model is written (its Hugging Face config.json is saved with the weights)."""
        return (self.model / "config.json").is_file()

    def is_finished(self) -> bool:
        """final.json and the final model are both written (final.json last, so its presence is the marker)."""
        return self.final.is_file() and self.has_model()

    def read_run_info(self) -> dict[str, Any]:
        return read_json(self.run_info, what="run provenance (run.json)")

    def read_final(self) -> dict[str, Any]:
        return read_json(self.final, what="final metrics (final.json)")
