"""Tune overhead per trial: the same trials run (a) directly, one after another, with models.train.train in
this process, and (b) as a sweep (Ray Tune, one trial at a time on local Ray), measured side by side.

    .venv/bin/python benchmarks/bench_sweep.py [--trials 4] [--tokens 65536] [--model tiny-100K]

Overhead per trial = (Tune experiment wall time - direct wall time) / trials. The goal is at most 10% of a
60 s trial (6 s); the printout gives the overhead both per trial and as a fraction of a 60 s trial.
Ray start-up (`ray.init`) is paid once per sweep and reported separately.

    .venv/bin/python benchmarks/bench_sweep.py --cadence [--model tiny-1M]

What a trial costs beyond its updates: runs of 40, 400 and 2000 updates trained with the first cadences
("previous": validation every 2 % of the run on 262k tokens, a checkpoint every 10 % and at the end), with the
next ones ("v2": ~10 validations within 2.5 % of the training compute but always 262k tokens, checkpoints as
before) and with today's defaults (each validation sized to fit too; checkpoints at most one a minute, within
2.5 % of the wall time, none at the end), on a unit dataset whose validation split fills the default 262k
validation tokens; prints the wall time split into updates, validation, checkpoints and the run's end (test
loss, final model), and the validation + checkpoint share of the session's wall time and of the whole `train()`
call (set-up included). Goal: validation + checkpoints <= 5 % of a trial's wall time with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4, help="number of trials (distinct seeds)")
    ap.add_argument("--tokens", type=int, default=65536, help="training tokens per trial")
    ap.add_argument("--model", default="tiny-100K", help="ladder size")
    ap.add_argument("--cadence", action="store_true", help="measure evaluation/checkpoint overhead instead")
    ap.add_argument("--cadences", default="previous,v2,default", help="--cadence: which cadences to run")
    ap.add_argument("--updates", default="40,400,2000", help="--cadence: run lengths in updates")
    args = ap.parse_args()
    if args.cadence:
        return cadence(args.model, args.cadences.split(","), [int(u) for u in args.updates.split(",")])

    import ray

    from slmscale.models.synthetic_units import write_pattern_units
    from slmscale.models.train import train
    from slmscale.sweep.grid import grid_from_dict
    from slmscale.sweep.launch import launch
    from slmscale.sweep.storage import read_sweep
    from slmscale.sweep.trainable import train_config_for

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        units = write_pattern_units(tmp / "units", n_units=50, n_utterances=400)
        spec = grid_from_dict({
            "name": "bench", "models": [args.model], "tokens": [args.tokens], "seeds": list(range(args.trials)),
            "train": {"context": 64, "tokens_per_update": 512, "eval_tokens": 4096, "test_tokens": 4096, "progress": False},
            "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "max_concurrent": 1,
        }, source="bench")

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        t_init = time.perf_counter() - t0

        # (b) the sweep; it also fixes the exact trial configs that (a) reruns.
        t0 = time.perf_counter()
        summary = launch(spec, tmp / "sweep", units=str(units), verbose=0)
        t_tune = time.perf_counter() - t0
        assert summary["finished"] == args.trials, summary
        ray.shutdown()

        # (a) the same trials directly (the first also pays this process's torch/transformers import).
        storage, sweep = read_sweep(tmp / "sweep")
        t0 = time.perf_counter()
        direct_loss = []
        for trial in sweep["trials"]:
            row = train(train_config_for(trial, sweep["settings"], tmp / "direct" / trial["run_id"]))
            direct_loss.append(row["loss"])
        t_direct = time.perf_counter() - t0

        tune_loss = [storage.run_dir(t["run_id"]).read_row()["loss"] for t in sweep["trials"]]
        per_trial = (t_tune - t_direct) / args.trials
        mean_trial = t_direct / args.trials
        print(f"bench_sweep: {args.trials} trials of {args.model}, {args.tokens} tokens each, one at a time, "
              f"{os.cpu_count()} CPU(s) on this machine")
        print(f"  ray.init (once per sweep)        {t_init:8.2f} s")
        print(f"  direct  (models.train.train)     {t_direct:8.2f} s   ({mean_trial:.2f} s per trial)")
        print(f"  sweep   (Ray Tune, tuner.fit)    {t_tune:8.2f} s   ({t_tune / args.trials:.2f} s per trial)")
        print(f"  Tune overhead per trial          {per_trial:8.2f} s   = {per_trial / mean_trial:.1%} of these trials, "
              f"{per_trial / 60:.1%} of a 60 s trial (goal <= 10%)")
        print(f"  same losses: {all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(tune_loss, direct_loss))}")
    return 0


def cadence(model: str, cadences: list[str], lengths: list[int]) -> int:
    from slmscale.models import checkpoint as ckpt_io
    from slmscale.models.config import make_plan
    from slmscale.models.synthetic_units import write_pattern_units
    from slmscale.models.train import TrainConfig, train

    written = []
    write = ckpt_io.write_checkpoint

    def counted(run_dir, step, *args, **kwargs):
        written.append(step)
        return write(run_dir, step, *args, **kwargs)

    ckpt_io.write_checkpoint = counted  # (the loop calls it through the module)
    print(f"bench_sweep --cadence: {model}, context 64, 512 tokens per update, 1 thread; seconds of one run")
    print(f"{'updates':>7} {'cadence':>8} {'evals':>5} {'ckpts':>5} {'wall':>7} {'updates':>7} {'valid.':>7} "
          f"{'ckpts':>7} {'end':>6} {'train()':>7} {'val+ckpt':>8} {'of train()':>10}")
    with tempfile.TemporaryDirectory(prefix="bench-cadence-") as tmp:
        tmp = Path(tmp)
        # 30 % of ~2.4M tokens held out for validation: the default 262k validation tokens are all used.
        units = write_pattern_units(tmp / "units", n_units=50, n_utterances=48000, seed=0)
        for updates in lengths:
            for name in cadences:
                base = dict(units_dir=str(units), model=model, tokens=512 * updates, context=64, tokens_per_update=512,
                            val_fraction=0.3, test_fraction=0.02, test_tokens=65536, threads=1, progress=False,
                            out_dir=str(tmp / f"{name}-{updates}"), data_cache=str(tmp / "cache"))
                if name in ("previous", "v2"):  # every 10 % and at the end; v2's validation: the 262k-token rule
                    base.update(checkpoint_every=max(1, updates // 10))
                if name == "previous":
                    base.update(eval_every=max(1, updates // 50))
                elif name == "v2":
                    tokens = 512 * updates
                    report = max(1, updates // 50)
                    evaluations = max(1, min(10, int(0.025 * 3 * tokens / 262_144)))
                    base.update(eval_every=report * max(1, updates // (evaluations * report)))
                cfg = TrainConfig(**base)
                plan = make_plan(cfg, 50)
                written.clear()
                t0 = time.perf_counter()
                train(cfg)
                whole = time.perf_counter() - t0
                sec = json.loads((tmp / f"{name}-{updates}" / "final.json").read_text())["seconds"]
                evals = len({*range(plan.eval_every, updates + 1, plan.eval_every), updates})
                spent = sec["validation"] + sec["checkpoints"]
                print(f"{updates:>7} {name:>8} {evals:>5} {len(written):>5} {sec['wall']:>7.2f} {sec['updates']:>7.2f} "
                      f"{sec['validation']:>7.2f} {sec['checkpoints']:>7.2f} {sec['final']:>6.2f} {whole:>7.2f} "
                      f"{spent / sec['wall']:>8.1%} {spent / whole:>10.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
