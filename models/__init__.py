"""Units -> trained speech LM: one training run of the paper's model ladder, resumable, in process or on Ray Train.

    ladder.py           Table-1 sizes (+ tiny) as transformers.LlamaConfig; exact parameter counts, FLOPs/token
    config.py           TrainConfig (one run: the pydantic schema of every setting) and RunPlan (its exact
                        schedule, fixed before compute)
    rundir.py           RunDir: the one owner of the run-directory layout (config.json, run.json, ...)
    data.py             utt_id-hash splits, EOS packing, seeded epochs, memory-mapped packed-split cache
    loop.py             the training loop of one worker (AdamW, warmup+cosine, accumulation, eval, checkpoints)
    checkpoint.py       atomic checkpoints, resume, load_model(run_dir)
    ray_train.py        the same loop in a Ray Train TorchTrainer (DDP / FSDP), Tune report forwarding
    throughput.py       ThroughputMeter (tokens/s of the updates), device peaks and MFU
    train.py            train(cfg, report=None) -> results row: checks, RUN_DIR, dispatch, results.parquet
    synthetic_units.py  a learnable synthetic unit dataset for tests, benchmarks and demos
    cli.py              `slmscale models`, `slmscale train` (flags generated from TrainConfig)
    evaluation/         downstream benchmarks (sBLIMP, StoryCloze) of trained models

Heavy imports (torch, transformers, ray) happen inside functions, so importing this package is cheap.
"""
