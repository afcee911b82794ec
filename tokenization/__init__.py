"""Audio -> discrete units (paper §3), on Ray Data. One module per job:

    synth.py      offline TTS with libespeak-ng (tts, synthesize)      stories.py   embedded story generator
    manifest.py   audio manifest (build_manifest, read_manifest)       audio.py     decode/validate/chunk to 16 kHz
    mfcc.py       MFCC + deltas (the embedded `mfcc` features)         hubert.py    HuBERT layer-L features
    kmeans.py     codebooks: fit, save/load (.npy + .json), assign     tokenizer.py features + codebook + hash
    pipeline.py   the Ray Data stages (decode map, tokenizer actors) encode.py    resumable sharded encode
    dedup.py      consecutive-duplicate collapse with durations        fit.py       fit a codebook on a manifest
    unigram.py    SentencePiece unigram over units (ablation)          stats.py     Table-2 style summary
    schema.py     the unit-dataset contract read by models/            cli.py       `slmscale tokenize ...`

Heavy dependencies (ray, torch, transformers, soundfile) are imported where used, not here.
"""
