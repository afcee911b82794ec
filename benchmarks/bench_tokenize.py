"""Tokenization throughput: the Ray Data pipeline vs a plain per-file loop, side by side in one run.

    python benchmarks/bench_tokenize.py [--files 2400,4800,9600,19200] [--seconds 12]

Builds a corpus of synthetic spoken stories (espeak-ng, no download; 48 distinct recordings hard-linked to the
corpus size), then encodes the same manifest with `--tokenizer mfcc` twice per corpus size: once with a plain
loop in one process (decode -> features -> k-means -> dedup -> one Parquet file written 64 rows at a time;
single-threaded BLAS and the actors' malloc settings, its faster setting), once with `tokenization.encode.encode` (Ray Data: decode + tokenizer actor pool, atomic
shards). Each variant runs in a fresh subprocess so that timings and peak memory do not leak between them.
`ray.init` is not timed; everything after it is, including Ray Data's one-per-cluster helper actors and the
actor pool's start-up. Peak memory is the largest summed RSS of the variant's process tree (driver + Ray
workers), sampled every 0.1 s, and of the driver alone; Ray gets a fixed 512 MiB object store.

Printed: wall time, audio real-time factor and speed ratio per size (goal >= 1.5x on 2 CPUs); a straight-line
fit of the Ray Data wall times, wall = fixed start-up + per-file cost x files, beside the loop's cost per file
(the ratio grows with corpus size because the start-up is paid once); peak memory at the smallest and largest
corpus (goal: flat in corpus size, because the pipeline streams).

With CUDA present it also measures the HuBERT-base real-time factor on the GPU (random-init base config, so the
same FLOPs as the real one; bf16, layer 11, 500 centroids; the goal on one H100/H200 is >= 10,000x, issue #17):
first the extractor + k-means in process on 60 s chunks (the GPU's ceiling), then the whole `encode` pipeline on Ray
Data (CPU decode tasks feeding one GPU actor, shards written) from WAV files at two corpus sizes, with a fixed +
per-file fit. The figures go to benchmarks/results/tokenize-gpu-<device>-<date>.json, written after each
measurement; benchmarks/render_results.py turns them into the README's table.

    python benchmarks/bench_tokenize.py --skip-cpu [--gpu-minutes 60] [--gpu-files 100,400] [--gpu-seconds 60]
                                        [--hubert-compile]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class PeakMemory:
    """Peak summed RSS (MiB) of this process and all of its descendants (Ray workers included), from /proc."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0.0  # whole process tree
        self.peak_self = 0.0  # this process alone (the Ray driver, which collects the unit rows)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree_rss_mib(root: int) -> tuple[float, float]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = {root}, [root]
        while frontier:
            kids = [pid for pid, ppid in parents.items() if ppid in frontier and pid not in tree]
            tree.update(kids)
            frontier = kids
        total_kib = root_kib = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/status") as f:
                    kib = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            except OSError:
                continue
            total_kib += kib
            root_kib = kib if pid == root else root_kib
        return total_kib / 1024, root_kib / 1024

    def _run(self):
        while not self._stop.is_set():
            total, own = self._tree_rss_mib(os.getpid())
            self.peak, self.peak_self = max(self.peak, total), max(self.peak_self, own)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_loop(manifest: str, out: str) -> dict:
    """The baseline: one process, file after file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    from slmscale.tokenization.audio import AudioReject, decode_chunks
    from slmscale.tokenization.dedup import collapse_runs
    from slmscale.tokenization.manifest import read_manifest
    from slmscale.tokenization.pipeline import keep_freed_memory
    from slmscale.tokenization.schema import UNIT_SHARD_SCHEMA
    from slmscale.tokenization.tokenizer import MIN_SAMPLES, load_tokenizer

    keep_freed_memory()  # the same malloc settings as the pipeline's actors
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        tok = load_tokenizer("mfcc")
        # One BLAS thread, the loop's faster setting (Ray gives its actors OMP_NUM_THREADS=1 likewise): with the
        # default two, OpenBLAS threads spinning on these small matrices cost the 2-CPU machine ~12 % of the loop's
        # speed. Set after the tokenizer loads numpy's and scipy's OpenBLAS, the only libraries threadpoolctl sees.
        threadpool_limits(1)
        rows, n_rows, audio_s = [], 0, 0.0
        # Rows go to disk 64 at a time (one row group each), like the pipeline's 64-file shards: the loop's memory
        # and speed then do not depend on how many rows came before.
        with pq.ParquetWriter(Path(out) / "units.parquet", UNIT_SHARD_SCHEMA) as writer:
            for r in read_manifest(manifest).to_pylist():
                try:
                    for c in decode_chunks(r["path"], min_samples=MIN_SAMPLES):
                        frames = tok.frame_units([c.wav])[0]
                        units, durs = collapse_runs(frames)
                        rows.append({"utt_id": r["utt_id"], "units": units, "durations": durs,
                                     "n_frames": len(frames), "n_units": len(units), "duration_s": len(c.wav) / 16000,
                                     "source": r["source"], "sha256": r["sha256"]})
                        n_rows, audio_s = n_rows + 1, audio_s + len(c.wav) / 16000
                except AudioReject:
                    pass
                if len(rows) >= 64:
                    writer.write_table(pa.Table.from_pylist(rows, schema=UNIT_SHARD_SCHEMA))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=UNIT_SHARD_SCHEMA))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_mib": mem.peak, "driver_peak_mib": mem.peak_self, "audio_s": audio_s, "rows": n_rows}


def run_ray(manifest: str, out: str, tokenizer: str = "mfcc", kmeans: str | None = None,
            layer: int | None = None) -> dict:
    import ray
    import ray.data  # noqa: F401  (imported before the clock starts, like the loop's modules)

    from slmscale.tokenization.encode import encode

    t_init = time.perf_counter()
    # A fixed object store (Ray's default is 30% of RAM) so that the memory bound is the same at every corpus size:
    # shared-memory pages of the store that a process has touched count in its RSS. GPU runs move decoded
    # waveforms (3.8 MB per minute of audio) through the store to the GPU actors: they get more room.
    store = (4096 if tokenizer.startswith("hubert") else 512) * 2**20
    ray.init(num_cpus=os.cpu_count(), object_store_memory=store, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    init_s = time.perf_counter() - t_init
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        meta = encode(manifest, tokenizer, out, kmeans=kmeans, layer=layer, rows_per_shard=64, progress=False)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "ray_init_s": init_s, "peak_mib": mem.peak, "driver_peak_mib": mem.peak_self,
            "audio_s": meta.counts["hours"] * 3600, "rows": meta.counts["utterances"],
            "resources": meta.extra.get("resources", {})}


def make_corpus(root: Path, n_files: int, seconds: float, distinct: int = 48) -> Path:
    """n_files WAVs of `seconds` each: `distinct` different recordings (stories spoken in rotating voices and
    rates, concatenated to the length), hard-linked to fill the corpus so that building it takes seconds."""
    import numpy as np
    import soundfile as sf
    import soxr

    from slmscale.tokenization.manifest import build_manifest
    from slmscale.tokenization.stories import generate_stories
    from slmscale.tokenization.synth import DEFAULT_RATES, DEFAULT_VOICES, tts

    sources = root.parent / f"sources-{distinct}x{seconds:g}s"
    if not sources.is_dir():
        tmp = sources.with_name(sources.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        stories = generate_stories(distinct * 2, seed=7)
        pairs = [(v, r) for r in DEFAULT_RATES for v in DEFAULT_VOICES]
        for i in range(distinct):
            parts, total, j = [], 0, 0
            while total < seconds * 16000:
                voice, rate = pairs[(i + j) % len(pairs)]
                wav, sr = tts(stories[(2 * i + j) % len(stories)], voice=voice, rate=rate)
                parts.append(soxr.resample(wav, sr, 16000))
                total += len(parts[-1])
                j += 1
            sf.write(tmp / f"src{i:03d}.wav", np.concatenate(parts)[: int(seconds * 16000)], 16000)
        tmp.rename(sources)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        os.link(sources / f"src{i % distinct:03d}.wav", audio / f"f{i:05d}.wav")
    return build_manifest(audio, root / "manifest.parquet", progress=False)


def _subprocess(variant: str, manifest: Path, out: Path, *extra: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--run", variant, "--manifest", str(manifest), "--out", str(out),
                           *extra], capture_output=True, text=True, cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_base_hubert(root: Path) -> tuple[str, str]:
    """A HuBERT-base-shaped checkpoint with random weights (the same FLOPs as facebook/hubert-base-ls960) and a
    random 500-centroid codebook for its layer 11, saved like the real ones: (model dir, codebook path)."""
    import numpy as np
    from transformers import HubertConfig, HubertModel

    from slmscale.tokenization.kmeans import Codebook

    model_dir, km = root / "hubert-base", root / "kmeans500"
    root.mkdir(parents=True, exist_ok=True)
    HubertModel(HubertConfig()).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    Codebook(rng.normal(size=(500, 768)).astype(np.float32), features={"kind": "hubert", "layer": 11}).save(km)
    return str(model_dir), str(km)


def bench_gpu_hubert(root: Path, minutes: float, compile: bool = False) -> dict:
    """Real-time factor of the extractor + k-means on the GPU, in process (no Ray): the GPU's own ceiling.
    Chunks go in 32 at a time, as the pipeline's GPU actors receive them."""
    import numpy as np
    import torch

    from slmscale.tokenization.hubert import HubertExtractor
    from slmscale.tokenization.tokenizer import TokenizerSpec, UnitTokenizer

    model_dir, km = save_base_hubert(root)
    tok = UnitTokenizer(TokenizerSpec(kind="hubert", model_dir=model_dir, layer=11, kmeans=km))
    if compile:  # the extractor's own opt-in (the tokenizer spec has no switch for it)
        tok.extractor = HubertExtractor(model_dir, layer=11, compile=True)
    rng = np.random.default_rng(0)
    chunks = [rng.normal(scale=0.1, size=16000 * 60).astype(np.float32) for _ in range(int(minutes))]
    t0 = time.perf_counter()
    tok.frame_units(chunks[:32])  # warm-up: CUDA context, cuDNN algorithm choice (and compilation if asked)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(chunks), 32):
        tok.frame_units(chunks[i: i + 32])
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rtf = len(chunks) * 60 / wall
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"GPU HuBERT-base layer 11 + k-means(500) on {torch.cuda.get_device_name()}, in process: {len(chunks)} min "
          f"of audio in {wall:.2f} s -> real-time factor {rtf:,.0f}x (goal >= 10,000x on one H100/H200); dtype "
          f"{tok.extractor.dtype}, {'compiled' if compile else 'eager'}, "
          f"{tok.extractor.max_batch_samples() // 16000} s of audio per forward, first batch {warm:.1f} s, "
          f"peak GPU memory {peak:.1f} GiB", flush=True)
    return {"rtf": rtf, "minutes": len(chunks), "wall_s": wall, "first_batch_s": warm, "peak_memory_gib": peak,
            "dtype": str(tok.extractor.dtype), "compiled": compile,
            "seconds_per_forward": tok.extractor.max_batch_samples() / 16000}


def bench_gpu_pipeline(root: Path, sizes: list[int], seconds: float, on_run=None) -> dict:
    """The same extractor inside `tokenization.encode` (Ray Data: CPU decode tasks -> one GPU actor -> shards),
    from WAV files on disk, at two corpus sizes; the straight-line fit separates the start-up (Ray Data, the actor,
    model load) from the per-file cost, whose inverse is the pipeline's steady-state real-time factor."""
    model_dir, km = save_base_hubert(root)
    walls, result = [], {"file_seconds": seconds, "runs": []}
    for n in sizes:
        t0 = time.perf_counter()
        manifest = make_corpus(root / f"g{n}", n, seconds, distinct=8)
        built = time.perf_counter() - t0
        r = _subprocess("ray", manifest, root / f"out-gpu-{n}", "--tokenizer", f"hubert:{model_dir}", "--kmeans", km,
                        "--layer", "11")
        walls.append((n, r["wall_s"]))
        result["runs"].append({"files": n, "wall_s": r["wall_s"], "audio_s": r["audio_s"],
                               "rtf_with_startup": r["audio_s"] / r["wall_s"], "peak_mib": r["peak_mib"],
                               "resources": r["resources"]})
        if on_run:
            on_run(result)
        res = r["resources"]
        print(f"  Ray Data + GPU actor, {n:4d} x {seconds:.0f} s files (corpus built in {built:.0f} s): "
              f"{r['wall_s']:6.1f} s wall, {r['audio_s'] / r['wall_s']:6.0f}x real time incl. start-up; "
              f"{res.get('actors')} actor(s) x {res.get('gpus_per_actor')} GPU, batch {res.get('batch_size')}, "
              f"operators {res.get('operators')}; peak memory {r['peak_mib']:.0f} MiB", flush=True)
    if len(walls) > 1:
        fixed, per_file = _line_fit(walls)
        print(f"Ray Data + GPU: {fixed:.1f} s fixed (Ray Data start, actor start, model load) + {per_file * 1e3:.1f} ms per "
              f"{seconds:.0f} s file -> steady-state real-time factor {seconds / per_file:,.0f}x (goal >= 10,000x)")
        result.update(startup_s=fixed, per_file_ms=per_file * 1e3, steady_rtf=seconds / per_file)
    return result


def _sizes(text: str) -> list[int]:
    """'2400, 4800' -> [2400, 4800] (sorted, unique; empty items ignored)."""
    return sorted({int(x) for x in str(text).split(",") if x.strip()})


def _line_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares wall = fixed + per_file * n over (n, wall) points: (fixed s, per-file s)."""
    import numpy as np

    n, wall = np.array(points, dtype=float).T
    per_file, fixed = np.polyfit(n, wall, 1)
    return float(fixed), float(per_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="2400,4800,9600,19200",
                        help="comma-separated corpus sizes (files); memory is compared between the smallest and largest")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each file")
    parser.add_argument("--run", choices=["loop", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", default="mfcc", help=argparse.SUPPRESS)
    parser.add_argument("--kmeans", help=argparse.SUPPRESS)
    parser.add_argument("--layer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU measurements")
    parser.add_argument("--gpu-minutes", type=int, default=60,
                        help="minutes of audio for the in-process GPU real-time factor (default 60)")
    parser.add_argument("--gpu-files", default="100,400",
                        help="corpus sizes (files of --gpu-seconds) for the Ray Data GPU run; '' skips it")
    parser.add_argument("--gpu-seconds", type=float, default=60.0, help="length of each file of the GPU corpus")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"),
                        help="where the GPU figures go (tokenize-gpu-<device>-<date>.json)")
    parser.add_argument("--json-gpu", help="write the GPU figures to this file instead")
    parser.add_argument("--hubert-compile", action="store_true",
                        help="also time the in-process extractor under torch.compile (slower on torch 2.11 / H200)")
    args = parser.parse_args()
    if args.run == "loop":
        print(json.dumps(run_loop(args.manifest, args.out)))
        return
    if args.run == "ray":
        print(json.dumps(run_ray(args.manifest, args.out, args.tokenizer, args.kmeans, args.layer)))
        return
    sizes = _sizes(args.files)
    if not sizes or sizes[0] < 1:
        parser.error(f"--files: expected comma-separated positive integers, got {args.files!r}")
    print(f"machine: {os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.1f} at start")
    if not args.skip_cpu:
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            for n in sizes:
                t0 = time.perf_counter()
                manifest = make_corpus(Path(tmp) / f"c{n}", n, args.seconds)
                print(f"corpus of {n} x {args.seconds:.0f} s files built in {time.perf_counter() - t0:.1f} s")
                for variant in ("loop", "ray"):
                    r = _subprocess(variant, manifest, Path(tmp) / f"out-{variant}-{n}")
                    results[(variant, n)] = r
                    extra = f", Ray start {r['ray_init_s']:.1f} s not counted" if "ray_init_s" in r else ""
                    print(f"  {variant:4s} {n:5d} files: {r['wall_s']:7.2f} s wall, {r['audio_s'] / r['wall_s']:6.0f}x "
                          f"real time, peak memory {r['peak_mib']:6.0f} MiB (driver {r['driver_peak_mib']:4.0f} MiB)"
                          f"{extra}")
            for n in sizes:
                ratio = results[("loop", n)]["wall_s"] / results[("ray", n)]["wall_s"]
                print(f"speed ratio Ray Data / plain loop at {n} files: {ratio:.2f}x (goal >= 1.5x on 2 CPUs)")
            if len(sizes) > 1:
                fixed, per_file = _line_fit([(n, results[("ray", n)]["wall_s"]) for n in sizes])
                loop_ms = [results[("loop", n)]["wall_s"] / n * 1e3 for n in sizes]
                print(f"Ray Data wall ~ {fixed:.1f} s fixed start-up + {per_file * 1e3:.2f} ms/file (straight-line fit "
                      f"over the sizes); plain loop {min(loop_ms):.2f}-{max(loop_ms):.2f} ms/file")
            lo, hi = sizes[0], sizes[-1]
            for variant in ("loop", "ray"):
                for key, what in (("peak_mib", "process tree"), ("driver_peak_mib", "driver")):
                    a, b = results[(variant, lo)][key], results[(variant, hi)][key]
                    print(f"peak memory {variant} ({what}): {a:.0f} MiB at {lo} files, {b:.0f} MiB at "
                          f"{hi} files (x{b / a:.2f} for {hi / lo:g}x the corpus)")
    import torch

    if not torch.cuda.is_available():
        print("GPU HuBERT real-time factor: skipped (no CUDA device)")
        return
    gpu_results(args)


def gpu_results(args) -> None:
    """The GPU measurements, each written to benchmarks/results/tokenize-gpu-<device>-<date>.json as soon as it is
    done (a failure of one keeps the others' figures; the run then exits non-zero)."""
    import traceback

    from render_results import environment, results_file, write_results

    env = environment()
    path = Path(args.json_gpu) if args.json_gpu else results_file("tokenize-gpu", env, Path(args.results_dir))
    data = {"kind": "tokenize-gpu", **env, "errors": {}}
    print(f"GPU results -> {path}", flush=True)
    steps = [("in_process", lambda tmp: bench_gpu_hubert(tmp / "inproc", args.gpu_minutes))]
    if args.hubert_compile:
        steps.append(("in_process_compiled",
                      lambda tmp: bench_gpu_hubert(tmp / "inproc-compiled", args.gpu_minutes, compile=True)))
    gpu_sizes = _sizes(args.gpu_files)
    if gpu_sizes:
        def pipeline(tmp):
            def partial(result):  # each corpus size as it finishes
                data["ray_data"] = result
                write_results(path, data)
            return bench_gpu_pipeline(tmp / "ray", gpu_sizes, args.gpu_seconds, on_run=partial)
        steps.append(("ray_data", pipeline))
    with tempfile.TemporaryDirectory() as tmp:
        for key, run in steps:
            try:
                data[key] = run(Path(tmp))
            except (Exception, SystemExit) as exc:  # _subprocess raises SystemExit for a failed Ray run
                traceback.print_exc()
                data["errors"][key] = f"{type(exc).__name__}: {exc}"[:1000]
            write_results(path, data)
    if data["errors"]:
        raise SystemExit(f"GPU tokenizer measurements failed: {sorted(data['errors'])} (the others are written)")


if __name__ == "__main__":
    main()
