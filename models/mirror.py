"""Run directories and unit datasets on object storage: node-local scratch copies, kept in step with the store.

A run whose `out_dir` is a URI (`s3://bucket/sweeps/x/runs/<id>`) trains in a node-local scratch run dir
(`scratch_root()/runs/<hash>/<id>/`, the layout of models/rundir.py) and `RunMirror` keeps the store's copy
current, always in the order that makes the store's copy valid at every moment:

  pull (before training, on every node that trains)  config.json, run.json, and the newest complete checkpoint
        with the metrics.jsonl that goes with it, unless this node's scratch copy is at least as new (its
        trainer_state.json, written last, lists the SHA-256 of every file: a damaged one is skipped for the next)
  push_checkpoint (rank 0, at every checkpoint, in a background thread: models/loop.py)  the checkpoint's files,
        then its trainer_state.json (the "complete" marker), then metrics.jsonl / config.json / run.json as they
        were at the checkpoint; checkpoints the local run pruned are deleted from the store too
  push_final (rank 0, at the end)  model/ (Hugging Face layout), then final.json (the "finished" marker)

A preempted node takes its scratch disk with it; what the store holds is what a resumed attempt starts from,
so the work lost is what was trained since the newest pushed checkpoint (as with a shared filesystem).

Unit datasets given as a URI are staged once per node (`stage_units`): downloaded into the scratch area,
every shard checked against the SHA-256 its record lists, and then used read-only by every trial on the
node. Staging rather than reading in place: a run reads its shards once to pack them into its data cache and
then never again, many trials on a node share one dataset, and a checksum check on the staged copy turns a
damaged transfer into a clear error before any training starts.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, read_json
from slmscale.locks import exclusive_lock
from slmscale.models.rundir import RunDir
from slmscale.objstore import StorePath, download, is_uri, location, upload

__all__ = ["scratch_root", "scratch_run_dir", "RunMirror", "stage_units", "local_run_dir"]

_TRAINER_STATE = "trainer_state.json"


def scratch_root() -> Path:
    """Node-local working space for object-store runs and staged datasets: $SLMSCALE_SCRATCH, else
    $SLMSCALE_CACHE/scratch, else ~/.cache/slmscale/scratch."""
    if os.environ.get("SLMSCALE_SCRATCH"):
        return Path(os.environ["SLMSCALE_SCRATCH"]).expanduser()
    base = os.environ.get("SLMSCALE_CACHE") or Path.home() / ".cache" / "slmscale"
    return Path(base).expanduser() / "scratch"


def _key(uri: str) -> str:
    return hashlib.sha256(str(uri).rstrip("/").encode()).hexdigest()[:16]


def scratch_run_dir(uri: str | StorePath, kind: str = "runs") -> Path:
    """The node-local scratch copy of the run dir at `uri`; it keeps the run dir's name (the run id)."""
    store = location(uri)
    return scratch_root() / kind / _key(str(store)) / store.name


class RunMirror:
    """The store's run dir `remote` and its node-local copy `local` (see the module docstring)."""

    def __init__(self, remote: str | StorePath, local: str | os.PathLike):
        self.remote = RunDir(location(remote))
        self.local = RunDir(Path(local))

    # --- store -> node ------------------------------------------------------------------------------
    def pull(self, expected: dict[str, Any] | None = None, *, model: bool = False) -> int | None:
        """Bring the store's run state to the node; returns the step of the checkpoint now local (None: none).
        A finished run brings its final model instead (with `model`, any model/ there: a run to read, not resume).

        With `expected` (the model identity) the downloaded checkpoint is checked like a local one, and a
        broken one is skipped for the next older one on the store."""
        from slmscale.models.checkpoint import complete_steps

        local = self.local.path
        local.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(local.parent / f".{local.name}.pull.lock", what=f"scratch copy {local}", wait=3600):
            for name in ("config", "run_info"):
                src = getattr(self.remote, name)
                if src.is_file() and not getattr(self.local, name).is_file():
                    download(src, getattr(self.local, name))
            if self.remote.is_finished() or (model and self.remote.has_model()):
                for name in ("final", "results", "metrics"):
                    if getattr(self.remote, name).is_file():
                        download(getattr(self.remote, name), getattr(self.local, name))
                download(self.remote.model, self.local.model)
                return None
            have = complete_steps(local)
            for step in reversed(complete_steps(self.remote.path)):
                if have and step <= have[-1]:
                    return have[-1]  # this node's copy is as new (a retry on the same node): its metrics too
                try:
                    self.pull_checkpoint(step, expected)
                except SlmscaleError as exc:
                    print(f"{exc}; trying the one before", flush=True)
                    continue
                # The store's metrics go with its checkpoint: a stale scratch copy left here by an older attempt
                # (which another node has since overtaken) must not replace the reports of the updates in between.
                if self.remote.metrics.is_file():
                    download(self.remote.metrics, self.local.metrics)
                return step
            if not have and self.remote.metrics.is_file() and not self.local.metrics.is_file():
                download(self.remote.metrics, self.local.metrics)
            return have[-1] if have else None

    def pull_checkpoint(self, step: int, expected: dict[str, Any] | None = None) -> Path:
        """Download the store's checkpoint `step` (checked like a local one when `expected` is given) into the
        local run dir; a broken one raises SlmscaleError and leaves nothing behind."""
        from slmscale.models.checkpoint import checkpoint_problem

        target = self.local.checkpoint(step)
        staging = target.parent / f".{target.name}.pull"
        shutil.rmtree(staging, ignore_errors=True)
        download(self.remote.checkpoint(step), staging)
        problem = checkpoint_problem(staging, expected) if expected else None
        if problem is not None:
            shutil.rmtree(staging, ignore_errors=True)
            raise SlmscaleError(f"checkpoint {self.remote.checkpoint(step)} on the store is broken ({problem})")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    # --- node -> store ------------------------------------------------------------------------------
    def _push_file(self, local: Path, remote: StorePath) -> None:
        """One local file to the store, if it exists."""
        if local.is_file():
            upload(local, remote)

    _RECORDS = ("config", "run_info", "metrics")

    def snapshot_records(self) -> dict[str, bytes]:
        """The run records' bytes now (metrics.jsonl keeps growing while a checkpoint uploads in the background)."""
        return {name: getattr(self.local, name).read_bytes() for name in self._RECORDS
                if getattr(self.local, name).is_file()}

    def push_records(self, records: dict[str, bytes] | None = None) -> None:
        for name, data in (self.snapshot_records() if records is None else records).items():
            getattr(self.remote, name).write_bytes(data)

    def push_checkpoint(self, step: int, keep: set[int] | None = None,
                        records: dict[str, bytes] | None = None) -> StorePath:
        """Upload checkpoint `step` (trainer_state.json last), the run records (`records`: a snapshot taken when
        the checkpoint was written; default: now), and delete the store's checkpoints the local run pruned (all
        but `keep`, when given). Returns the store's checkpoint."""
        src, dst = self.local.checkpoint(step), self.remote.checkpoint(step)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        for f in files:
            if f.name != _TRAINER_STATE:
                upload(f, dst / f.relative_to(src).as_posix())
        upload(src / _TRAINER_STATE, dst / _TRAINER_STATE)  # the marker: complete from here on
        self.push_records(records)
        if keep is not None:
            for old in self.remote.checkpoint_steps():
                if old not in keep and old != step:
                    self.remote.checkpoint(old).rmtree()
        return dst

    def push_final(self) -> None:
        """model/ and the run records, then final.json (the marker: the run is finished on the store)."""
        upload(self.local.model, self.remote.model)
        self.push_records()
        self._push_file(self.local.results, self.remote.results)
        upload(self.local.final, self.remote.final)

    def push_evals(self) -> None:
        """eval/ and the results row its metric columns were merged into."""
        if self.local.evals.is_dir():
            upload(self.local.evals, self.remote.evals)
        self._push_file(self.local.results, self.remote.results)


def local_run_dir(run_dir: str | os.PathLike | StorePath) -> Path:
    """A local run dir to read a (finished or checkpointed) run from: the path itself, or for a URI the
    node's scratch copy, brought up to date with the store (model/, or the newest checkpoint)."""
    if not is_uri(run_dir):
        return Path(run_dir)
    store = location(run_dir)
    if not (RunDir(store).config.is_file() or RunDir(store).has_model()):
        raise SlmscaleError(f"{store}: no config.json or model/ — not a training run directory on the store")
    local = scratch_run_dir(store, kind="read")
    RunMirror(store, local).pull(model=True)
    return local


def _staged_ok(local: Path, meta_sha: str) -> bool:
    marker = local / ".staged.json"
    return marker.is_file() and read_json(marker, what="staging record").get("meta_sha256") == meta_sha


def stage_units(uri: str | StorePath) -> Path:
    """The node-local copy of the unit dataset at `uri`, downloaded once per node and dataset version (keyed
    by meta.json's SHA-256), every shard checked against its recorded SHA-256 before it is used."""
    from slmscale.io import sha256_bytes
    from slmscale.tokenization.schema import read_meta, shard_problem

    store = location(uri)
    meta_obj = store / "meta.json"
    if not meta_obj.is_file():
        raise SlmscaleError(f"--units {store}: no meta.json — not a unit dataset written by `slmscale tokenize`")
    meta_sha = sha256_bytes(meta_obj.read_bytes())
    local = scratch_root() / "units" / f"{_key(str(store))}-{meta_sha[:12]}"
    if _staged_ok(local, meta_sha):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(local.parent / f".{local.name}.lock", what=f"staging {store}", wait=3600):
        if _staged_ok(local, meta_sha):  # another process on this node staged it meanwhile
            return local
        t0 = time.perf_counter()
        staging = local.parent / f".{local.name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        download(store, staging)
        meta = read_meta(staging)
        for shard in sorted(staging.glob("shard-*.parquet")):
            from slmscale.tokenization.schema import read_shard_record

            problem = shard_problem(shard, meta.shards.get(shard.name) or read_shard_record(shard), full=True)
            if problem:
                shutil.rmtree(staging, ignore_errors=True)
                raise SlmscaleError(f"{store}/{shard.name}: corrupt unit shard after download: {problem}; expected "
                                    f"the shard as `slmscale tokenize encode` wrote it")
        atomic_write_json(staging / ".staged.json", {"source": str(store), "meta_sha256": meta_sha,
                                                     "seconds": time.perf_counter() - t0, "time": time.time()})
        shutil.rmtree(local, ignore_errors=True)
        staging.rename(local)
    return local
