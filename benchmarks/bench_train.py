"""Training throughput, measured side by side in one run.

1. Always (CPU or GPU): tokens/s of a bare PyTorch loop (model + AdamW + the same batches, nothing else) vs
   `models.train.train` in process vs the Ray Train `TorchTrainer` path (one worker), on the same tiny config.
   Goal: Ray Train path >= 0.9x the bare loop. Steady-state throughput is each loop's own timer over the
   updates after the first (eval, checkpoints and Ray start-up excluded); wall time is printed too.
2. With CUDA: MFU of 20M / 85M / 155M at context 2050 with bf16 autocast + torch.compile + SDPA/flash
   (goal >= 45% at 85M on one H100; the authors report 32.0 / 36.5 / 42.0% on an A100).

    python benchmarks/bench_train.py [--model tiny-1M] [--steps 40] [--threads 1] [--gpu-steps 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def bare_loop(model_name: str, n_units: int, steps: int, threads: int, device: str, bf16: bool, compile_: bool,
              units_dir: Path, seed: int = 0) -> float:
    """The reference: the same model, optimizer, batches and loss in the simplest loop torch allows."""
    import torch
    import torch.nn.functional as F

    from models.config import TrainConfig, make_plan
    from models.data import SequenceSampler, load_unit_streams
    from models.ladder import build_model

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
    return plan.tokens_per_update * (steps - 1) / sum(times[1:])


def library_run(units_dir: Path, out: Path, model_name: str, steps: int, threads: int, **kw) -> tuple[float, float]:
    from models.ladder import get_size
    from models.train import TrainConfig, train

    tpu = get_size(model_name).tokens_per_update
    cfg = TrainConfig(units_dir=str(units_dir), model=model_name, out_dir=str(out), tokens=tpu * steps,
                      report_every=max(1, steps // 4), checkpoint_every=steps, threads=threads, progress=False, **kw)
    t0 = time.perf_counter()
    row = train(cfg)
    return row["tokens_per_s"], time.perf_counter() - t0


def cpu_comparison(args) -> dict:
    from models.synthetic_units import write_pattern_units
    from tokenization.ray_utils import ensure_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    units = write_pattern_units(tmp / "units", n_units=500, n_utterances=2000, min_len=50, max_len=400, seed=0)
    device = "cpu"
    bare = bare_loop(args.model, 500, args.steps, args.threads, device, False, False, units)
    lib, lib_wall = library_run(units, tmp / "inproc", args.model, args.steps, args.threads, device=device)
    ensure_ray(num_cpus=max(2, args.threads + 1))
    ray_tps, ray_wall = library_run(units, tmp / "ray", args.model, args.steps, args.threads, use_ray=True,
                                    gpus_per_worker=0, cpus_per_worker=float(args.threads))
    result = {"device": "cpu", "model": args.model, "steps": args.steps, "threads": args.threads,
              "bare_tokens_per_s": bare, "train_in_process_tokens_per_s": lib, "ray_train_tokens_per_s": ray_tps,
              "in_process_vs_bare": lib / bare, "ray_train_vs_bare": ray_tps / bare,
              "in_process_wall_s": lib_wall, "ray_train_wall_s": ray_wall}
    print(f"{args.model} on CPU ({args.threads} thread(s)), {args.steps} updates:")
    print(f"  bare PyTorch loop        {bare:10.0f} tokens/s   1.00x")
    print(f"  train() in process       {lib:10.0f} tokens/s   {lib / bare:.2f}x   (wall {lib_wall:.1f} s with evals/checkpoints)")
    print(f"  train() Ray TorchTrainer {ray_tps:10.0f} tokens/s   {ray_tps / bare:.2f}x   (wall {ray_wall:.1f} s with Ray start-up)"
          f"   goal >= 0.90x: {'met' if ray_tps / bare >= 0.9 else 'NOT met'}")
    return result


def gpu_mfu(args) -> list[dict]:
    import torch

    from models.ladder import flops_per_token, get_size
    from models.synthetic_units import write_pattern_units
    from models.throughput import device_peak_flops, mfu

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
        from models.train import TrainConfig, train

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
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--bare-gpu", action="store_true", help="also time the bare loop on GPU")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args()
    import torch

    results = {"cpu": cpu_comparison(args)}
    if torch.cuda.is_available():
        results["gpu"] = gpu_mfu(args)
    else:
        print("\n(no CUDA device: the MFU benchmark of 20M/85M/155M with bf16 + compile is skipped)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
