"""`slmscale sweep plan|launch|resume|status|results` — thin wrappers over sweep.plan / launch / status / results.

Handlers import Ray and torch lazily, so `slmscale sweep --help`, `plan`, `status` and `results` start fast.
"""
from __future__ import annotations

import json

SWEEP_HELP = """\
Run the N x D grid of training runs as one Ray Tune experiment, survive preemption, and write the
results table that `slmscale fit --results` consumes.

  slmscale sweep plan sweep/grids/tiny.yaml --units UNITS           # every trial, FLOPs, GPU-hours
  slmscale sweep launch sweep/grids/tiny.yaml --units UNITS --storage sweeps/tiny
  slmscale sweep status sweeps/tiny                                 # state, tokens, loss, tokens/s, ETA
  slmscale sweep resume sweeps/tiny                                 # after the driver died
  slmscale sweep results sweeps/tiny -o results.parquet
  slmscale fit --results results.parquet

Storage layout: STORAGE/sweep.json (the expanded grid), STORAGE/runs/<run_id>/ (one training run dir
per trial, with checkpoints), STORAGE/tune/ (Ray Tune state), STORAGE/results.parquet (updated as
trials finish). On a cluster, STORAGE is an object-store prefix (s3://BUCKET/sweeps/NAME, gs://...: trials
train in node-local scratch copies and push every checkpoint) or a filesystem every node mounts at the same
path (see cluster.yaml). Object-store credentials and endpoint come from the environment (AWS_*, including
AWS_ENDPOINT_URL for MinIO/Ceph) or the instance profile.
"""


def _plan(args) -> int:
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.plan import make_plan

    plan = make_plan(load_grid(args.grid), args.units)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(plan.render())
    return 0


def _print_summary(summary: dict) -> int:
    print(f"sweep {summary['storage']}: {summary['finished']} of {summary['trials']} trials finished; "
          f"results table {summary['results']}")
    for err in summary["errored"]:
        print(f"  errored: {err['run_id']}: {err['error'].splitlines()[0] if err['error'] else ''}")
    incomplete = summary.get("incomplete", [])
    for run_id in incomplete:
        print(f"  incomplete: {run_id}: Tune counts it as terminated but it has no results row (run dir removed?)")
    if summary["errored"] or summary["finished"] < summary["trials"]:
        if summary["finished"] + len(incomplete) < summary["trials"]:
            print(f"  continue with: slmscale sweep resume '{summary['storage']}'")
        if incomplete:
            print(f"  `sweep resume` does not rerun the {len(incomplete)} incomplete trial(s); train them again with "
                  f"`slmscale train` (settings in sweep.json) or launch their grid points into a new --storage")
        return 1
    return 0


def _launch(args) -> int:
    from slmscale.sweep.grid import load_grid
    from slmscale.sweep.launch import launch

    spec = load_grid(args.grid)
    print(f"launching grid {spec.name!r} into {args.storage} (see `slmscale sweep plan` for the trials; "
          f"watch with `slmscale sweep status '{args.storage}'`)", flush=True)
    summary = launch(
        spec, args.storage, units=args.units, address=args.address,
        max_concurrent=args.max_concurrent, cluster_config=args.cluster_config, verbose=0 if args.quiet else 1,
    )
    return _print_summary(summary)


def _resume(args) -> int:
    from slmscale.sweep.launch import resume

    return _print_summary(resume(args.storage, address=args.address, verbose=0 if args.quiet else 1,
                                 trust_tune_state=args.trust_tune_state))


def _status(args) -> int:
    from slmscale.sweep.status import render_status, sweep_status

    rows = sweep_status(args.storage)
    print(json.dumps(rows, indent=2, default=str) if args.json else render_status(rows))
    return 0


def _results(args) -> int:
    from slmscale.sweep.results import missing_trials, write_sweep_results

    path = write_sweep_results(args.storage, args.output, allow_partial=not args.complete)
    import pandas as pd

    n = len(pd.read_parquet(path)) if path.suffix == ".parquet" else len(pd.read_csv(path))
    missing = missing_trials(args.storage)
    print(f"wrote {n} row(s) to {path}" + (f"; {len(missing)} trial(s) have no row:" if missing else ""))
    for m in missing[:20]:
        print(f"  missing: {m['run_id']} ({m['reason']})")
    if len(missing) > 20:
        print(f"  ... and {len(missing) - 20} more (see `slmscale sweep status {args.storage}`)")
    if missing:
        print("  " + _advice(missing))
    return 0


def _advice(missing: list[dict]) -> str:
    """What will actually bring the missing trials back."""
    gone = [m["run_id"] for m in missing if m["reason"] == "run dir gone"]
    if not gone:
        return "unfinished trials continue with `slmscale sweep resume STORAGE` (once no driver is running)"
    return (f"{len(gone)} run dir(s) are gone: `sweep resume` retrains an unfinished trial from scratch, but a trial "
            f"Tune already counts as terminated is not rerun; train such a point again with `slmscale train` (its "
            f"settings are in sweep.json) or launch its grid into a new --storage")


def register(sub, formatter_class) -> None:
    sweep = sub.add_parser("sweep", help="the N x D grid on Ray Tune: plan, launch, resume, status, results",
                           description=SWEEP_HELP, formatter_class=formatter_class)
    cmds = sweep.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    sweep.set_defaults(handler=lambda args: sweep.print_help() or 0)

    p = cmds.add_parser("plan", help="expand a grid spec and print every trial with N, D, FLOPs and GPU-hours",
                        description="Expand GRID.yaml (models x token budgets x unique-token caps x seeds) and print "
                        "every trial with N, D, D/N, epochs, FLOPs (C = 6ND) and GPU-hours at the grid's assumed MFU, "
                        "plus totals. Nothing runs.", formatter_class=formatter_class)
    p.add_argument("grid", metavar="GRID.yaml", help="grid spec (see sweep/grids/tiny.yaml, sweep/grids/paper.yaml)")
    p.add_argument("--units", metavar="DIR", default=None,
                   help="unit dataset whose meta.json gives K for parameter counts; None: the grid's 'units', "
                   "else its 'n_units'")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=_plan)

    p = cmds.add_parser("launch", help="run every trial of a grid as a Ray Tune experiment",
                        description="Run one Tune trial per grid point (train, test loss, evals), with the grid's "
                        "per-trial resources and max_failures retries; each retry resumes from the trial's newest "
                        "checkpoint. Checks the unit dataset, the grid and that every trial fits the cluster before "
                        "anything starts. Exit code 1 if some trial did not finish (then `sweep resume`).",
                        formatter_class=formatter_class)
    p.add_argument("grid", metavar="GRID.yaml", help="grid spec")
    p.add_argument("--storage", required=True, metavar="PATH|URI",
                   help="new folder or object-store prefix for the sweep (run dirs, checkpoints, Tune state, results); "
                   "on a cluster s3://BUCKET/sweeps/NAME (credentials from AWS_* or the instance profile) or a path "
                   "every node mounts, e.g. /shared/sweeps/NAME")
    p.add_argument("--units", metavar="DIR|URI", default=None,
                   help="unit dataset, a folder or s3://... (staged once per node, checksums verified); None: the "
                   "grid's 'units'")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. 'auto' on a head node or HOST:6379; None: $RAY_ADDRESS, "
                   "else a new local Ray")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="M",
                   help="run at most M trials at once; None: the grid's max_concurrent, else as many as fit")
    p.add_argument("--cluster-config", default=None, metavar="YAML",
                   help="cluster-launcher YAML whose worker types the autoscaler may add, for the resource check; "
                   "None: ~/ray_bootstrap_config.yaml when present (on a `ray up` head node)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress tables")
    p.set_defaults(handler=_launch)

    p = cmds.add_parser("resume", help="continue a sweep whose driver died (finished trials never rerun)",
                        description="Restore the Tune experiment in STORAGE/tune (Tuner.restore): unfinished and "
                        "errored trials continue from their newest checkpoints; finished trials are kept. Tune "
                        "stores that state as Python pickles, so it is restored only when every file of STORAGE/tune "
                        "is owned by you (or root) and writable by nobody else; --trust-tune-state overrides that. "
                        "On object storage nothing is unpickled: a new Tune experiment (STORAGE/tune-N) runs the "
                        "trials without a row, each from its run dir's newest checkpoint.",
                        formatter_class=formatter_class)
    p.add_argument("storage", metavar="STORAGE", help="the --storage of `sweep launch` (a path or s3://...)")
    p.add_argument("--address", default=None, help="Ray cluster to join; None: $RAY_ADDRESS, else a new local Ray")
    p.add_argument("--trust-tune-state", action="store_true",
                   help="restore Tune's pickled state even if someone else owns or could have written it (only for "
                   "storage whose every writer you trust)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress tables")
    p.set_defaults(handler=_resume)

    p = cmds.add_parser("status", help="state, tokens done, loss, tokens/s and ETA of every trial",
                        description="Read STORAGE (no Ray needed) and print one line per trial: state "
                        "(FINISHED, RUNNING, PENDING, ERROR, ... as of Tune's last snapshot), tokens done / target, "
                        "newest loss (val, train, or test when finished), tokens/s, ETA and attempts.",
                        formatter_class=formatter_class)
    p.add_argument("storage", metavar="STORAGE", help="the --storage of `sweep launch` (a path or s3://...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_status)

    p = cmds.add_parser("results", help="write the results table of the finished trials",
                        description="Collect one row per finished trial (analysis/schema.py columns: n_params, "
                        "tokens, unique_tokens, epochs, flops, loss = test loss; provenance: tokenizer, "
                        "tokenizer_hash, units_meta_hash, model_config, seed, code_version, flops_exact, "
                        "tokens_per_s, mfu, val_loss; eval metrics) and write it for `slmscale fit --results`.",
                        formatter_class=formatter_class)
    p.add_argument("storage", metavar="STORAGE", help="the --storage of `sweep launch` (a path or s3://...)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help=".parquet or .csv output; None: STORAGE/results.parquet")
    p.add_argument("--complete", action="store_true", help="refuse to write while some trial has not finished")
    p.set_defaults(handler=_results)
