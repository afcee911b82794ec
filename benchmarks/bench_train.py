"""Training throughput, measured side by side in one run.

1. Always (CPU or GPU): tokens/s of a bare PyTorch loop (model + AdamW + the same batches, nothing else) vs
   `models.train.train` in process vs the Ray Train `TorchTrainer` path (one worker), on the same tiny config.
   Goal: Ray Train path >= 0.9x the bare loop. Throughput is the median over updates (the first excluded) of
   each loop's own per-update timer: eval, checkpoints and Ray start-up are excluded (wall time is printed
   too), and the median resists other jobs on a shared machine. The bare loop runs before and after.
2. With CUDA: MFU of 20M / 85M / 155M at context 2050 with bf16 autocast + torch.compile + SDPA/flash
   (goal >= 45% at 85M on one H100; the authors report 32.0 / 36.5 / 42.0% on an A100).

    python benchmarks/bench_train.py [--model tiny-1M] [--steps 60] [--rounds 3] [--threads 1] [--gpu-steps 30]
                                     [--bare-gpu] [--skip-cpu] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ray starts its workers at niceness 15 (RayConfig worker_niceness); on a machine shared with other jobs
# that would measure the OS scheduler, not Ray Train. The bench's local Ray runs workers at normal priority.
os.environ.setdefault("RAY_worker_niceness", "0")


def bare_loop(model_name: str, n_units: int, steps: int, threads: int, device: str, bf16: bool, compile_: bool,
              units_dir: Path, seed: int = 0) -> float:
    """The reference: the same model, optimizer, batches and loss in the simplest loop torch allows."""
    import torch
    import torch.nn.functional as F

    from slmscale.models.config import TrainConfig, make_plan
    from slmscale.models.data import SequenceSampler, load_unit_streams
    from slmscale.models.ladder import build_model

    torch.set_num_threads(threads)
    cfg = TrainConfig(units_dir=str(units_dir), model=model_name, out_dir="-", tokens=1 << 40)
    plan = make_plan(cfg, n_units)
    streams = load_unit_streams(units_dir, cfg.val_fraction, cfg.test_fraction, seed)
    sampler = SequenceSampler(streams.train, plan.context, seed)
    torch.manual_seed(seed)
    model = build_model(model_name, n_units, attn_implementation="sdpa").to(device)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda" or None)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        for micro in range(plan.grad_accum):
            x = torch.from_numpy(sampler.batch(step * plan.seqs_per_update + micro * plan.micro_batch,
                                               plan.micro_batch)).to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                logits = fwd(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()) / plan.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # wait for the device, as the library loop does at each report
        times.append(time.perf_counter() - t0)
    # median over updates (the first excluded): robust to other jobs sharing the machine
    return plan.tokens_per_update / statistics.median(times[1:])


def library_run(units_dir: Path, out: Path, model_name: str, steps: int, threads: int, **kw) -> tuple[float, float]:
    """Median per-update tokens/s of `train()` (from metrics.jsonl, one report per update) and the wall time."""
    from slmscale.models.ladder import get_size
    from slmscale.models.train import TrainConfig, train

    tpu = get_size(model_name).tokens_per_update
    cfg = TrainConfig(units_dir=str(units_dir), model=model_name, out_dir=str(out), tokens=tpu * steps,
                      report_every=1, eval_every=steps, checkpoint_every=steps, threads=threads, progress=False, **kw)
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    per_update = [json.loads(ln)["tokens_per_s"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(per_update[1:]), wall


def cpu_comparison(args) -> dict:
    from slmscale.models.synthetic_units import write_pattern_units
    from slmscale.ray_utils import ensure_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    units = write_pattern_units(tmp / "units", n_units=500, n_utterances=2000, min_len=50, max_len=400, seed=0)
    ensure_ray(num_cpus=max(2, args.threads + 1))
    rounds = []
    for r in range(args.rounds):  # interleaved rounds: load from other jobs hits every contender alike
        bare = bare_loop(args.model, 500, args.steps, args.threads, "cpu", False, False, units)
        lib, lib_wall = library_run(units, tmp / f"inproc{r}", args.model, args.steps, args.threads, device="cpu")
        ray_tps, ray_wall = library_run(units, tmp / f"ray{r}", args.model, args.steps, args.threads, use_ray=True,
                                        gpus_per_worker=0, cpus_per_worker=float(args.threads))
        rounds.append({"bare": bare, "in_process": lib, "ray_train": ray_tps, "in_process_wall_s": lib_wall,
                       "ray_train_wall_s": ray_wall})
        print(f"  round {r + 1}: bare {bare:.0f}, in process {lib:.0f} ({lib / bare:.2f}x), "
              f"Ray Train {ray_tps:.0f} ({ray_tps / bare:.2f}x) tokens/s", flush=True)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    in_ratio = statistics.median(x["in_process"] / x["bare"] for x in rounds)
    ray_ratio = statistics.median(x["ray_train"] / x["bare"] for x in rounds)
    print(f"{args.model} on CPU ({args.threads} thread(s)), {args.steps} updates, median of {args.rounds} rounds:")
    print(f"  bare PyTorch loop        {med['bare']:10.0f} tokens/s   1.00x")
    print(f"  train() in process       {med['in_process']:10.0f} tokens/s   {in_ratio:.2f}x"
          f"   (wall {med['in_process_wall_s']:.1f} s with evals/checkpoints)")
    print(f"  train() Ray TorchTrainer {med['ray_train']:10.0f} tokens/s   {ray_ratio:.2f}x"
          f"   (wall {med['ray_train_wall_s']:.1f} s with Ray start-up)   goal >= 0.90x: {'met' if ray_ratio >= 0.9 else 'NOT met'}")
    return {"device": "cpu", "model": args.model, "steps": args.steps, "threads": args.threads, "rounds": rounds,
            "in_process_vs_bare": in_ratio, "ray_train_vs_bare": ray_ratio}


def gpu_mfu(args) -> list[dict]:
    import torch

    from slmscale.models.ladder import flops_per_token, get_size
    from slmscale.models.synthetic_units import write_pattern_units
    from slmscale.models.throughput import device_peak_flops, mfu

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_gpu_"))
    units = write_pattern_units(tmp / "units", n_units=500, n_utterances=4000, min_len=200, max_len=2000, seed=0)
    peak = device_peak_flops("cuda")
    name = torch.cuda.get_device_name()
    rows = []
    print(f"\nMFU on {name} (dense bf16 peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s), bf16 + compile:")
    for size in ("20M", "85M", "155M"):
        s = get_size(size)
        # a few micro-batches per update: MFU does not depend on tokens/update, only on the micro-batch shape
        tpu = s.micro_batch * s.context * 2
        bare = bare_loop(size, 500, args.gpu_steps, 1, "cuda", True, True, units) if args.bare_gpu else float("nan")
        from slmscale.models.train import TrainConfig, train

        cfg = TrainConfig(units_dir=str(units), model=size, out_dir=str(tmp / size), tokens=tpu * args.gpu_steps,
                          tokens_per_update=tpu, report_every=5, checkpoint_every=args.gpu_steps, progress=False,
                          eval_tokens=s.context * s.micro_batch, test_tokens=s.context * s.micro_batch)
        row = train(cfg)
        fpt = flops_per_token(size, 500)[1]
        rows.append({"model": size, "tokens_per_s": row["tokens_per_s"], "mfu": row["mfu"],
                     "bare_mfu": mfu(fpt, bare, peak), "device": name})
        print(f"  {size:>5}: {row['tokens_per_s']:12.0f} tokens/s   MFU {100 * row['mfu']:5.1f}%"
              + (f"   (bare loop {100 * mfu(fpt, bare, peak):5.1f}%)" if args.bare_gpu else ""))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-1M")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (medians are reported)")
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--bare-gpu", action="store_true", help="also time the bare loop on GPU")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU MFU measurement")
    args = p.parse_args()
    import torch

    results = {} if args.skip_cpu else {"cpu": cpu_comparison(args)}
    if torch.cuda.is_available():
        results["gpu"] = gpu_mfu(args)
    else:
        print("\n(no CUDA device: the MFU benchmark of 20M/85M/155M with bf16 + compile is skipped)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
