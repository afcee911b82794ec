"""What object-store checkpointing costs a trial, beside the shared-directory figure, measured side by side.

    .venv/bin/python benchmarks/bench_storage.py                 # moto S3 server on loopback, tiny-3M, 6 checkpoints
    AWS_ENDPOINT_URL=... .venv/bin/python benchmarks/bench_storage.py --bucket NAME   # your own S3-compatible store

The same training run (same config, same seed) twice: into a local run dir (what a shared filesystem mount
gives a trial: checkpoints written in place) and into s3:// (trained in a node-local scratch copy, every
checkpoint pushed to the store before it is reported, the final model pushed at the end; models/mirror.py).
Printed: each run's wall time, its updates' time, the seconds its checkpoints took locally, the seconds the
loop waited for a background upload (final.json `seconds.upload_wait`), the end of the run, and the per-trial
overhead of object storage (wall difference); plus the one-off cost per node of staging the unit dataset and of
pulling a checkpoint for a resume on a fresh node.

Without --bucket it starts moto's standalone S3 server (the dev extra) on 127.0.0.1: a Python server holding
objects in memory, so its rate is this machine's CPU, not a network; a real store's figure will differ.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            raise SystemExit("moto server exited: install the dev extra (pip install -e '.[dev]')")
        time.sleep(0.1)
    raise SystemExit("moto server did not start within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-3M")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each kind, alternating; the fastest is shown")
    ap.add_argument("--checkpoints", type=int, default=6, help="checkpoints per run (the default cadence is 10)")
    ap.add_argument("--bucket", default=None, help="an existing bucket at AWS_ENDPOINT_URL (default: a moto server)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the runs (default 1: the other core is the node's spare CPU that uploads use, "
                    "as on a GPU node; with 2 here they compete with the in-process S3 server)")
    args = ap.parse_args()

    moto = None
    if args.bucket is None:
        moto, endpoint = start_moto()
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=endpoint.split("//")[1], scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir("slmscale-bench")
        bucket = "slmscale-bench"
    else:
        bucket = args.bucket
    try:
        with tempfile.TemporaryDirectory(prefix="slmscale-bench-storage-") as tmp:
            run(args, Path(tmp), f"s3://{bucket}/bench-storage-{int(time.time())}",
                "moto S3 server on loopback" if moto else os.environ.get("AWS_ENDPOINT_URL", "AWS S3"))
    finally:
        if moto is not None:
            moto.terminate()


def run(args, tmp: Path, prefix: str, where: str) -> None:
    from slmscale.models.config import TrainConfig, make_plan
    from slmscale.models.mirror import RunMirror, stage_units
    from slmscale.models.synthetic_units import write_pattern_units
    from slmscale.models.train import train
    from slmscale.objstore import StorePath, upload
    from slmscale.tokenization.schema import read_meta

    os.environ["SLMSCALE_SCRATCH"] = str(tmp / "scratch")
    units = write_pattern_units(tmp / "units", n_units=50, n_utterances=3000, seed=2)
    upload(units, StorePath(f"{prefix}/units"))
    t0 = time.perf_counter()
    stage_units(f"{prefix}/units")
    stage_s = time.perf_counter() - t0
    units_bytes = sum(p.stat().st_size for p in units.rglob("*") if p.is_file())

    base = dict(model=args.model, tokens=args.tokens, progress=False, threads=args.threads, context=64,
                tokens_per_update=512, eval_tokens=4096, test_tokens=4096)
    steps = make_plan(TrainConfig(units_dir=str(units), out_dir=str(tmp / "x"), **base), read_meta(units).vocab_size).total_steps
    base["checkpoint_every"] = max(1, steps // args.checkpoints)
    rows: dict[str, dict] = {}
    for rep in range(args.repeats):  # alternating, so a busy moment of the machine hits both kinds alike
        for kind, out in (("shared directory", str(tmp / f"local-run-{rep}")), ("object store", f"{prefix}/runs/run-{rep}")):
            t0 = time.perf_counter()
            train(TrainConfig(units_dir=str(units) if kind == "shared directory" else f"{prefix}/units", out_dir=out,
                              **base))
            wall = time.perf_counter() - t0
            final = json.loads((Path(out) / "final.json").read_text() if "://" not in out
                               else StorePath(f"{out}/final.json").read_text())
            if kind not in rows or wall < rows[kind]["wall"]:
                rows[kind] = {"wall": wall, **final["seconds"]}
    ckpt = next((tmp / "local-run-0" / "checkpoints").glob("step-*"))
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    n_ckpt = steps // base["checkpoint_every"] + (steps % base["checkpoint_every"] != 0)

    t0 = time.perf_counter()  # a resume on a fresh node: pull the newest checkpoint
    RunMirror(f"{prefix}/runs/run-0", tmp / "fresh-node" / "run").pull_checkpoint(
        max(int(p.name[5:]) for p in StorePath(f"{prefix}/runs/run-0/checkpoints").iterdir()))
    pull_s = time.perf_counter() - t0

    print(f"bench_storage: {args.model}, {steps} updates, {n_ckpt} checkpoints of {ckpt_bytes / 1e6:.1f} MB each; "
          f"store: {where}; {os.cpu_count()} CPUs; fastest of {args.repeats} runs each")
    print(f"{'':<18}{'wall s':>9}{'updates s':>11}{'checkpoints s':>15}{'upload wait s':>15}{'final s':>9}")
    for kind, r in rows.items():
        print(f"{kind:<18}{r['wall']:>9.2f}{r['updates']:>11.2f}{r['checkpoints']:>15.2f}"
              f"{r.get('upload_wait', 0.0):>15.2f}{r['final']:>9.2f}")
    shared, store = rows["shared directory"], rows["object store"]
    extra = store["wall"] - shared["wall"]
    print(f"object storage: +{extra:.2f} s per trial ({extra / n_ckpt:.3f} s per checkpoint of {ckpt_bytes / 1e6:.1f} MB; "
          f"wall ratio {store['wall'] / shared['wall']:.2f}x); the loop waited {store.get('upload_wait', 0.0):.2f} s for "
          f"uploads (they run in a background thread), the rest is updates slowed by {store['updates'] - shared['updates']:+.2f} s "
          f"while uploads ran (here the S3 server shares this machine's {os.cpu_count()} CPUs)")
    print(f"once per node: staging the unit dataset ({units_bytes / 1e6:.1f} MB, checksums verified) {stage_s:.2f} s; "
          f"pulling the newest checkpoint for a resume {pull_s:.2f} s")


if __name__ == "__main__":
    main()
