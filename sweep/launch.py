"""`sweep launch` / `sweep resume`: the grid as one Ray Tune experiment on the storage path.

The storage layout (sweep.json, driver.json, runs/<run_id>/, tune/, results.parquet) is owned by
sweep/storage.py. One Tune trial per training run of sweep.json (every grid point, plus a trunk per WSD group),
suggested by the `ReadyTrials` searcher (sweep/searcher.py) as soon as it can start, resources per trial,
FailureConfig (max_failures) for automatic retries; retries and `sweep resume` continue from the run dir's
checkpoints.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, code_version
from slmscale.locks import exclusive_lock, locked_folder
from slmscale.ray_utils import check_address
from slmscale.sweep.grid import GridSpec, Trial, grid_from_dict, with_changes
from slmscale.sweep.plan import make_plan
from slmscale.sweep.storage import SweepStorage, read_sweep

__all__ = ["launch", "resume"]


def _record_driver(storage: SweepStorage) -> None:
    """Record this process as the sweep's driver (for `sweep status`); the storage lock held by `launch` and
    `resume` is what keeps a second driver out."""
    import socket

    atomic_write_json(storage.driver_file, {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})


def _units_info(units: str) -> tuple[str, Path, int, str]:
    """(the units as the trials will get them, a local copy to check here, K, meta hash). A URI stays a URI for
    the trials (each node stages it once, models/mirror.py) and is staged on this node for the checks."""
    from slmscale.objstore import check_store, is_uri
    from slmscale.tokenization.schema import meta_hash, read_meta, shard_paths

    if is_uri(units):
        from slmscale.models.mirror import stage_units

        check_store(units, what="--units")
        path = stage_units(units)
        name = units.rstrip("/")
    else:
        path = Path(units).expanduser().resolve()
        name = str(path)
    meta = read_meta(path)
    if not shard_paths(path):
        raise SlmscaleError(f"{name}: no shard-*.parquet files — the unit dataset is empty")
    return name, path, meta.vocab_size, meta_hash(path)


def _tune_config(spec: GridSpec, storage: SweepStorage, sweep: dict[str, Any], done: tuple[str, ...] = ()):
    """One Tune trial per run_id of sweep.json (but those in `done`), each suggested once it is ready (a WSD
    branch: once its trunk's checkpoint exists). The config stays tiny (Tune prints and snapshots it):
    {"run_id", "sweep_file"}; the trainable reads its trial and the launch settings from sweep.json on the storage."""
    from ray import tune

    from slmscale.sweep.searcher import ReadyTrials

    return tune.TuneConfig(
        search_alg=ReadyTrials(str(storage.sweep_file), done=done),
        num_samples=len(sweep["trials"]) - len(done),
        max_concurrent_trials=spec.max_concurrent,
        # A trial process imports torch + transformers (seconds); reusing it for the next trial of the
        # same shape removes that per-trial cost. Fault tolerance is unaffected: a dead actor is replaced.
        reuse_actors=True,
        trial_dirname_creator=lambda trial: trial.config["run_id"],
        trial_name_creator=lambda trial: trial.config["run_id"],
    )


def _trainable(spec: GridSpec, sweep: dict[str, Any]):
    from ray import tune

    from slmscale.sweep.resources import tune_resources
    from slmscale.sweep.trainable import run_trial

    per_model = {m: tune_resources(spec.resources_for(m)) for m in spec.models}
    model_of = {t["run_id"]: t["model"] for t in sweep["trials"]}
    return tune.with_resources(run_trial, lambda config: per_model[model_of[config["run_id"]]])


def _tune_storage(tune_dir) -> dict[str, Any]:
    """RunConfig/Tuner.restore arguments that put Tune's experiment at `tune_dir`: a local path, or on object
    storage Ray's own persistence through our pyarrow filesystem (the endpoint, timeouts and retries of
    slmscale/objstore.py)."""
    from slmscale.objstore import StorePath

    if isinstance(tune_dir, StorePath):
        return {"storage_path": tune_dir.parent.path, "storage_filesystem": tune_dir.fs}
    return {"storage_path": str(tune_dir.parent)}


def _run_config(storage: SweepStorage, spec: GridSpec, verbose: int, tune_dir=None):
    from ray import tune

    from slmscale.sweep.callbacks import WriteResultsOnComplete

    tune_dir = tune_dir or storage.tune_dir
    return tune.RunConfig(
        name=tune_dir.name,
        **_tune_storage(tune_dir),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # Keep every (pointer) checkpoint: they are a few bytes each, and with num_to_keep Tune deletes old ones
        # before its next state snapshot, so a driver killed in between leaves a state that names a deleted
        # checkpoint and `Tuner.restore` cannot resume that trial. The real checkpoints are in the run dir.
        checkpoint_config=tune.CheckpointConfig(),
        callbacks=[WriteResultsOnComplete(str(storage.root))],
        verbose=verbose,
    )


def trial_settings(spec: GridSpec, storage: SweepStorage) -> dict[str, Any]:
    """What every trial reads from sweep.json besides its grid point (trainable.train_config_for)."""
    cooldown = ({"cooldown_fraction": spec.cooldown.fraction, "cooldown_shape": spec.cooldown.shape}
                if spec.schedule == "wsd" else {})
    return {
        "name": spec.name,
        "units": spec.units,
        "run_root": str(storage.runs_dir),
        "eval": [e.to_dict() for e in spec.eval],
        "train": {"progress": False, **cooldown, **spec.train},
        "resources": {m: spec.resources_for(m).model_dump() for m in spec.models},
    }


def _check_train_configs(spec: GridSpec, trials: list[Trial], storage: SweepStorage, n_units: int,
                         local_units: Path) -> None:
    """Build and validate every trial's TrainConfig and exact schedule now, so a budget smaller than one update
    or a bad `train` value fails before launch, naming the trial, instead of as N errored trials later."""
    from slmscale.models.config import make_plan as make_train_plan
    from slmscale.models.data import check_splits
    from slmscale.sweep.trainable import train_config_for

    settings = trial_settings(spec, storage)
    split_fractions = set()
    for trial in trials:
        try:
            cfg = train_config_for(trial.to_dict(), settings, storage.run_dir(trial.run_id),
                                   trunk_dir=storage.run_dir(trial.trunk) if trial.trunk else None)
            make_train_plan(cfg.validate(), n_units)
        except (SlmscaleError, TypeError, ValueError) as exc:
            raise SlmscaleError(f"{spec.source}: trial {trial.run_id}: {exc}") from None
        split_fractions.add((cfg.val_fraction, cfg.test_fraction))
    for val_fraction, test_fraction in sorted(split_fractions):  # every trial needs non-empty val/test splits
        check_splits(local_units, val_fraction, test_fraction)


def _check_storage_on_every_node(root) -> None:
    """Every alive node must see the storage: on a shared filesystem at the same path (trials write their run dirs
    there, and a retried trial on another node must find its checkpoints), on object storage with the node's own
    endpoint and credentials. A probe file written here is looked for by one zero-CPU task pinned to each node.
    (Nodes an autoscaler adds later get the same setup commands.)"""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from slmscale.objstore import StorePath

    probe = root / f".probe-{uuid.uuid4().hex}"
    probe.write_text("slmscale storage probe\n")
    try:
        @ray.remote(num_cpus=0)
        def seen(where: str) -> str | None:
            try:
                from slmscale.objstore import location

                return None if location(where).is_file() else "the probe file is not visible"
            except Exception as exc:  # noqa: BLE001 - reported with the node
                return str(exc).splitlines()[0][:300]

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [seen.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(probe)) for n in nodes]
        blind = [f"{n.get('NodeManagerAddress')} ({why})" for n, why in zip(nodes, ray.get(refs, timeout=120)) if why]
    finally:
        probe.unlink(missing_ok=True)
    if blind and isinstance(root, StorePath):
        raise SlmscaleError(f"--storage {root}: not reachable from node(s) {blind}; expected every node to have the "
                            f"store's endpoint (AWS_ENDPOINT_URL) and credentials (instance profile or AWS_*)")
    if blind:
        raise SlmscaleError(
            f"--storage {root}: not visible on node(s) {blind}; mount the same shared filesystem at the same path on "
            f"every node (or use object storage, s3://...) so trials can write and resume their run dirs"
        )


def _check_cluster(spec: GridSpec, trials: list[Trial], cluster_config: str | None) -> None:
    from slmscale.sweep.resources import autoscaler_nodes, check_fits, live_nodes

    check_fits(spec, trials, live_nodes() + autoscaler_nodes(cluster_config))


def _driver_lock(store: SweepStorage):
    """One driver per storage: a flock on STORAGE/.lock (slmscale/locks.py), or on object storage a renewed lease
    object STORAGE/.lock.json. A refused launch leaves no storage folder behind (locked_folder)."""
    from slmscale.locks import store_lease

    what = f"sweep storage {store.root}"
    if store.on_store:
        return store_lease(store.root / f"{store.lock.name}.json", what=what)
    return locked_folder(store.root, store.lock.name, what=what)


def _finish(grid, storage: SweepStorage) -> dict[str, Any]:
    from slmscale.sweep.results import write_sweep_results
    from slmscale.sweep.status import sweep_status

    errors = [r for r in grid if r.error is not None]
    try:
        write_sweep_results(storage.root)
    except SlmscaleError:
        pass
    rows = sweep_status(storage.root)
    return {
        "storage": str(storage.root),
        "trials": len(rows),
        "finished": sum(r["state"] == "FINISHED" for r in rows),
        "errored": [{"run_id": (r.config or {}).get("run_id"), "error": str(r.error)[:500]} for r in errors],
        # Tune counts these as terminated but they have no row (e.g. the run dir was deleted): resume skips them.
        "incomplete": [r["run_id"] for r in rows if r["state"] == "INCOMPLETE"],
        "results": str(storage.results),
    }


def launch(
    spec: GridSpec,
    storage: str | os.PathLike,
    *,
    units: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    cluster_config: str | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Run every trial of `spec` as a Tune experiment under `storage`; returns a summary dict.

    Everything that can be checked is checked before the first trial starts: the unit dataset, the grid,
    every trial's training schedule, that the storage is new and visible on every node, the cluster address,
    and that every trial fits the cluster's resources."""
    store = SweepStorage.at(storage)
    if store.on_store:  # credentials, endpoint and bucket, in seconds, before anything else
        from slmscale.objstore import check_store

        check_store(str(store.root))
    # One driver per storage, taken before the "already holds a sweep" check: two launches into one --storage
    # a second apart would both pass it, and the loser's sweep.json would break the winner's sweep for good.
    with _driver_lock(store):
        return _launch_locked(spec, store, units=units, address=address, max_concurrent=max_concurrent,
                              cluster_config=cluster_config, verbose=verbose)


def _launch_locked(spec: GridSpec, store: SweepStorage, *, units: str | None, address: str | None,
                   max_concurrent: int | None, cluster_config: str | None, verbose: int) -> dict[str, Any]:
    from slmscale.ray_utils import ensure_ray

    root = store.root
    if store.exists():
        raise SlmscaleError(f"{root} already holds a sweep ({store.sweep_file.name}); continue it with "
                            f"`slmscale sweep resume {root}` or choose a new --storage")
    units = units or spec.units
    if not units:
        raise SlmscaleError(f"{spec.source}: field 'units' is not set; pass --units DIR")
    units, local_units, n_units, units_hash = _units_info(units)
    from slmscale.objstore import is_uri

    for i, entry in enumerate(spec.eval):
        for key in ("benchmark", "units"):
            value = getattr(entry, key)
            if value and not value.startswith("embedded:") and not is_uri(value) and not Path(value).expanduser().exists():
                raise SlmscaleError(f"{spec.source}: field 'eval[{i}].{key}': {value} does not exist")
    spec = with_changes(spec, units=units, max_concurrent=max_concurrent or spec.max_concurrent)
    plan = make_plan(spec, str(local_units))
    # Refuse a grid whose train overrides TrainConfig cannot take, before any Ray work.
    from slmscale.models.config import TrainConfig

    unknown = sorted(set(spec.train) - TrainConfig.field_names())
    if unknown:
        raise SlmscaleError(f"{spec.source}: field 'train' has unknown TrainConfig field(s) {unknown}")
    _check_train_configs(spec, plan.trials, store, n_units, local_units)

    check_address(address)  # before the storage checks and Ray: a wrong --address is an error in seconds
    ensure_ray(address)
    _check_cluster(spec, plan.trials, cluster_config)

    _check_storage_on_every_node(root)  # (a refused launch leaves no storage folder behind: see locked_folder)
    sweep = {
        "schema_version": 1,
        "grid": spec.to_dict(),
        "grid_source": spec.source,
        "units": units,
        "units_meta_hash": units_hash,
        "n_units": n_units,
        "trials": [t.to_dict() for t in plan.trials],
        "settings": trial_settings(spec, store),
        "schedule": spec.schedule,
        "points": len(plan.points),
        "total_flops": plan.total_flops,  # what the sweep spends (WSD trunks once)
        "points_flops": plan.points_flops,  # sum of 6 N D over the points
        "created": time.time(),
        "code_version": code_version(),
    }
    atomic_write_json(store.sweep_file, sweep)
    _record_driver(store)
    return _fit(spec, store, sweep, verbose)


def _quiet_tune() -> None:
    # Tune warns when it snapshots its state often; the snapshots are small here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _fit(spec: GridSpec, storage: SweepStorage, sweep: dict[str, Any], verbose: int, *, tune_dir=None,
         done: tuple[str, ...] = ()) -> dict[str, Any]:
    from ray import tune

    _quiet_tune()
    tuner = tune.Tuner(
        _trainable(spec, sweep),
        tune_config=_tune_config(spec, storage, sweep, done),
        run_config=_run_config(storage, spec, verbose, tune_dir),
    )
    return _finish(tuner.fit(), storage)


def check_tune_state_trusted(tune_dir: Path) -> None:
    """Refuse Tune state that someone other than this user (or root) owns or could have written: every file and
    folder under `tune_dir`, and the folders above it up to the sweep storage, must be owned by this user or
    root and not writable by group or others (what ssh asks of ~/.ssh). A missing folder passes (nothing to
    unpickle)."""
    import stat

    if not tune_dir.exists():
        return
    me = os.getuid()
    paths = [tune_dir.parent, tune_dir, *sorted(tune_dir.rglob("*"))]
    for p in paths:
        st = p.lstat()
        problem = None
        if st.st_uid not in (me, 0):
            problem = f"is owned by uid {st.st_uid}, not by you (uid {me})"
        elif stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing; its target is checked where it lies inside tune_dir
        elif st.st_mode & 0o022:
            who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit)
            problem = f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
        if problem:
            raise SlmscaleError(
                f"{p}: {problem}. `sweep resume` restores Ray Tune's state, which Tune stores as Python pickles: a "
                f"file someone else wrote there would run as code in this process. Expected Tune state only you "
                f"could have written: fix the ownership/permissions (e.g. `chmod -R go-w {tune_dir}`) if you trust "
                f"it, or pass --trust-tune-state to resume anyway"
            )


def resume(storage: str | os.PathLike, *, address: str | None = None, verbose: int = 1,
           trust_tune_state: bool = False) -> dict[str, Any]:
    """Continue a sweep after its driver died: unfinished and errored trials resume from their checkpoints,
    finished trials are kept as they are (Tuner.restore with resume_unfinished and resume_errored).

    Tune's state is restored only when `check_tune_state_trusted` passes, or with `trust_tune_state`."""
    from slmscale.ray_utils import ensure_ray

    store = SweepStorage.at(storage)
    if store.on_store:
        from slmscale.objstore import check_store

        check_store(str(store.root))
    store, sweep = read_sweep(store)
    if store.on_store:
        with _driver_lock(store):
            check_address(address)
            _record_driver(store)
            ensure_ray(address)
            return _resume_from_run_dirs(grid_from_dict(sweep["grid"], source=str(store.sweep_file)), store, sweep,
                                         verbose)
    with exclusive_lock(store.lock, what=f"sweep storage {store.root}"):
        spec = grid_from_dict(sweep["grid"], source=str(store.sweep_file))
        tune_dir = store.tune_dir
        check_address(address)
        # Tuner.restore unpickles Tune's experiment state (tuner.pkl, trial state): code that anyone who can write
        # that folder put there would run here. Refuse unless only this user (or root) could have written it.
        if not trust_tune_state:
            check_tune_state_trusted(tune_dir)
        _record_driver(store)
        ensure_ray(address)
        return _resume_locked(spec, store, sweep, verbose)


def _resume_from_run_dirs(spec: GridSpec, store: SweepStorage, sweep: dict[str, Any], verbose: int) -> dict[str, Any]:
    """Resume an object-store sweep without unpickling anything from the store: a new Tune experiment
    (`tune-N`) over the trials that have no row.json yet, each continuing from its run dir's newest checkpoint.
    Tuner.restore would unpickle Tune's state, which anyone who can write the bucket could have replaced."""
    done = tuple(t["run_id"] for t in sweep["trials"] if store.run_dir(t["run_id"]).is_done())
    if len(done) == len(sweep["trials"]):
        return _finish([], store)
    return _fit(spec, store, sweep, verbose, tune_dir=store.next_tune_dir(), done=done)


def _resume_locked(spec: GridSpec, store: SweepStorage, sweep: dict[str, Any], verbose: int) -> dict[str, Any]:
    from ray import tune

    tune_dir = store.tune_dir
    if not tune.Tuner.can_restore(str(tune_dir)):
        # The driver died before Tune wrote its first state: nothing ran, so start the experiment now.
        return _fit(spec, store, sweep, verbose)
    _quiet_tune()
    tuner = tune.Tuner.restore(
        str(tune_dir),
        trainable=_trainable(spec, sweep),
        resume_unfinished=True,
        resume_errored=True,
        restart_errored=False,
    )
    return _finish(tuner.fit(), store)
