"""Scoring throughput of `slmscale eval`: pairs/s batched (length-sorted, padded, masked) vs one-by-one.

Both are measured side by side in one run on the same model and the same pairs, and must give the same NLLs.
The pairs are random unit sequences with sBLIMP-like lengths (25 Hz units, deduplicated: ~30-120 units).

    .venv/bin/python benchmarks/bench_eval.py [--model tiny-3M] [--pairs 256] [--batch-size 32] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402

from slmscale.models.evaluation.scoring import ScoreConfig, pick_device, sequence_nll  # noqa: E402
from slmscale.models.ladder import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-3M", help="ladder size (models/ladder.py)")
    ap.add_argument("--units", type=int, default=500, help="K unit ids (paper: 500)")
    ap.add_argument("--pairs", type=int, default=256, help="two-choice questions to score")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=30)
    ap.add_argument("--max-len", type=int, default=120)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = ap.parse_args()

    device = pick_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.units, context=max(args.max_len, 128)).to(device).eval()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, args.units, size=int(rng.integers(args.min_len, args.max_len + 1))).tolist()
            for _ in range(2 * args.pairs)]
    kw = dict(eos_id=args.units, pad_id=args.units + 1)

    # warm-up (allocator, kernels) on a few sequences of each kind
    sequence_nll(model, seqs[:8], config=ScoreConfig(batch_size=args.batch_size, progress=False), **kw)
    timings, results = {}, {}
    for name, bs in (("one-by-one", 1), (f"batched (bs={args.batch_size})", args.batch_size)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results[name] = sequence_nll(model, seqs, config=ScoreConfig(batch_size=bs, progress=False), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - t0

    names = list(timings)
    max_diff = float(np.abs(results[names[0]] - results[names[1]]).max())
    n_units = sum(len(s) for s in seqs)
    print(f"device={device} model={args.model} pairs={args.pairs} units/seq={args.min_len}-{args.max_len} "
          f"torch_threads={torch.get_num_threads()}")
    for name in names:
        print(f"  {name:<22} {args.pairs / timings[name]:10.1f} pairs/s  {n_units / timings[name]:12.0f} units/s  "
              f"({timings[name]:.2f} s)")
    print(f"  speed-up batched / one-by-one: {timings[names[0]] / timings[names[1]]:.2f}x   "
          f"max |NLL difference| = {max_diff:.2e}")
    if max_diff > 1e-3:
        raise SystemExit(f"batched and one-by-one NLLs differ by {max_diff}")


if __name__ == "__main__":
    main()
