"""`slmscale tokenize ...`: audio -> units. Each handler is a thin wrapper over a library function of this stage;
heavy modules (ray, torch, soundfile) are imported inside the handlers so `--help` stays instant."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slmscale.errors import SlmscaleError

TOKENIZE_DESCRIPTION = """\
Audio -> discrete units (paper §3): manifest -> features (HuBERT layer L, or embedded MFCC) -> k-means units,
deduplicated, as Parquet shards that `slmscale train` reads.

Typical flow:
  slmscale tokenize synth --stories 200 -o audio/            # embedded spoken stories (espeak-ng), with manifest
  slmscale tokenize manifest audio/ -o manifest.parquet      # or your own folder / TSV / JSONL of audio files
  slmscale tokenize encode --manifest manifest.parquet --tokenizer mfcc -o units/
  slmscale tokenize stats units/
With a HuBERT checkpoint directory:
  slmscale tokenize fit-kmeans --manifest manifest.parquet --features hubert:ckpt/ --layer 11 -k 500 -o km500
  slmscale tokenize encode --manifest manifest.parquet --tokenizer hubert:ckpt/ --layer 11 --kmeans km500 -o units/
"""


def _manifest(args) -> int:
    from slmscale.tokenization.manifest import build_manifest, rejects_path_for

    out = build_manifest(args.src, args.output, source=args.source, threads=args.threads, progress=not args.quiet)
    import pyarrow.parquet as pq

    n_ok = pq.read_metadata(out).num_rows
    n_bad = pq.read_metadata(rejects_path_for(out)).num_rows
    print(f"wrote {out}: {n_ok} file(s); {n_bad} rejected -> {rejects_path_for(out)}")
    return 0


def _encode(args) -> int:
    from slmscale.tokenization.config import EncodeConfig
    from slmscale.tokenization.encode import encode

    cfg = EncodeConfig(manifest=args.manifest, tokenizer=args.tokenizer, out_dir=args.output, layer=args.layer,
                       kmeans=args.kmeans, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                       dedup=not args.no_dedup, rows_per_shard=args.rows_per_shard, chunk_s=args.chunk_s,
                       batch_size=args.batch_size, window_rows=args.window_rows, progress=not args.quiet)
    meta = encode(cfg, address=args.address)  # checks manifest, tokenizer and address before it starts Ray
    c = meta.counts
    print(f"wrote {args.output}: {c['utterances']} utterance(s), {c['units']:,} units, {c['hours']:.3f} h from "
          f"{c['encoded_files']} file(s); {c['rejected']} rejected (see rejects.parquet); tokenizer hash "
          f"{meta.tokenizer_hash[:16]}")
    return 0


def _fit_kmeans(args) -> int:
    from slmscale.tokenization.fit import fit_codebook

    path = fit_codebook(args.manifest, args.features, args.k, args.output, layer=args.layer, max_files=args.max_files,
                        max_frames=args.max_frames, seed=args.seed, progress=not args.quiet)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _import_kmeans(args) -> int:
    from slmscale.tokenization.kmeans import import_joblib
    from slmscale.tokenization.tokenizer import make_extractor, parse_tokenizer

    desc = {"kind": args.features.partition(":")[0]}
    if args.layer is not None:
        desc["layer"] = args.layer
    if ":" in args.features:  # a checkpoint dir: record exactly which features the codebook belongs to
        desc = make_extractor(parse_tokenizer(args.features, layer=args.layer, device="cpu")).describe()
    path = import_joblib(args.file, args.output, desc, trust_pickle=args.trust_pickle)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _unigram_train(args) -> int:
    from slmscale.tokenization.unigram import train_unigram

    path = train_unigram(args.units_dir, args.vocab_size, args.output, max_sentences=args.max_sentences, seed=args.seed)
    trained = json.loads(path.with_suffix(".json").read_text())["vocab_size"]
    note = "" if trained == args.vocab_size else f" (the corpus supports only {trained} of the {args.vocab_size} pieces asked for)"
    print(f"wrote {path} and {path.with_suffix('.json')}: V={trained}{note}")
    return 0


def _unigram_apply(args) -> int:
    from slmscale.tokenization.unigram import apply_unigram

    meta = apply_unigram(args.units_dir, args.model, args.output)
    print(f"wrote {args.output}: {meta.counts['units']:,} tokens (V={meta.vocab_size}), "
          f"{meta.counts['compression']:.2f} units per token")
    return 0


def _read_text_items(path: Path) -> list[tuple[str, str]]:
    from slmscale.tokenization.synth import check_utt_id

    if not path.is_file():
        raise SlmscaleError(f"--text {path}: file not found")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt_id, sep, text = line.partition("\t")
        if sep:
            check_utt_id(utt_id.strip(), f"--text {path}:{lineno}")
        items.append((utt_id.strip(), text.strip()) if sep else (f"line{lineno:06d}", line.strip()))
    if not items:
        raise SlmscaleError(f"--text {path}: no non-empty lines")
    return items


def _synth(args) -> int:
    from slmscale.tokenization.stories import story_items
    from slmscale.tokenization.synth import synthesize

    items = _read_text_items(Path(args.text)) if args.text else story_items(args.stories, seed=args.seed)
    path = synthesize(items, args.output, voices=args.voices, rates=args.rates, sample_rate=args.sample_rate,
                      source=args.source, progress=not args.quiet)
    print(f"wrote {len(items)} WAV file(s) and {path}")
    return 0


def _stats(args) -> int:
    from slmscale.tokenization.stats import format_stats, unit_stats

    df = unit_stats(args.units_dir)
    if args.json:
        json.dump(df.to_dict(orient="records"), sys.stdout, indent=2)
        print()
    else:
        print(format_stats(df))
    return 0


def register(sub, formatter_class) -> None:
    from slmscale.tokenization.synth import DEFAULT_RATES, DEFAULT_VOICES

    tok = sub.add_parser("tokenize", help="audio -> units: manifest, encode, k-means, unigram, synth, stats",
                         description=TOKENIZE_DESCRIPTION, formatter_class=formatter_class)
    tsub = tok.add_subparsers(dest="tokenize_command", metavar="SUBCOMMAND")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = tsub.add_parser("manifest", parents=[quiet], formatter_class=formatter_class,
                        help="scan audio files into a manifest Parquet",
                        description="Record path, size, SHA-256, sample rate, channels, duration (and transcript/speaker "
                                    "from a list) of every audio file. SRC is a folder (wav/flac/ogg/mp3, recursive; "
                                    "utt_id = relative path without extension) or a .tsv (header with 'path', optional "
                                    "utt_id/transcript/speaker/source) or .jsonl list. Unreadable files go to "
                                    "OUT.rejects.parquet with a reason.")
    p.add_argument("src", help="folder of audio files, or a .tsv/.jsonl list")
    p.add_argument("-o", "--output", required=True, help="manifest Parquet to write")
    p.add_argument("--source", default=None, help="corpus name stored per row; %(default)s means the folder/list name")
    p.add_argument("--threads", type=int, default=8, help="parallel readers (hashing is I/O bound)")
    p.set_defaults(handler=_manifest)

    p = tsub.add_parser("encode", parents=[quiet], formatter_class=formatter_class,
                        help="encode a manifest into unit shards (Ray Data)",
                        description="Decode (mono, 16 kHz) as Ray tasks, extract features and assign k-means units in an "
                                    "actor pool (model loaded once per actor; GPU actors with --gpus-per-actor), collapse "
                                    "repeats, and write UNITS_DIR/shard-NNNNN.parquet atomically + rejects.parquet + "
                                    "meta.json. Rerunning the same command resumes: finished shards are checked against the "
                                    "checksum recorded with them and skipped (damaged ones are redone). A file whose "
                                    "audio repeats an earlier one's is rejected as 'duplicate'.")
    p.add_argument("--manifest", required=True, help="manifest Parquet from `tokenize manifest` or `tokenize synth`")
    p.add_argument("--tokenizer", default="mfcc",
                   help="'mfcc' (embedded, shipped codebook) or 'hubert:DIR' (local HubertModel checkpoint)")
    p.add_argument("--layer", type=int, default=None, help="HuBERT layer whose output is clustered; %(default)s means 11")
    p.add_argument("--kmeans", default=None,
                   help="codebook NAME(.npy) with NAME.json; %(default)s means the shipped one for mfcc, DIR/kmeans for hubert")
    p.add_argument("-o", "--output", required=True, help="unit dataset directory (UNITS_DIR)")
    p.add_argument("--actors", type=int, default=None, help="tokenizer actors; %(default)s means one per CPU, or one per GPU")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPUs per actor; %(default)s means 1 for hubert when the cluster has GPUs, else 0")
    p.add_argument("--no-dedup", action="store_true", help="keep consecutive repeated units")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="manifest rows (files) per shard")
    p.add_argument("--chunk-s", type=float, default=60.0, help="files longer than this are split into chunks (utt_id#NNNN)")
    p.add_argument("--batch-size", type=int, default=None, help="chunks per actor call; %(default)s means 8 on CPU, 32 on GPU")
    p.add_argument("--window-rows", type=int, default=100_000,
                   help="manifest rows per Ray Data execution (whole shards): bounds driver memory on huge corpora")
    p.add_argument("--address", default=None, help="Ray cluster address (HOST:PORT, checked before Ray starts); %(default)s means $RAY_ADDRESS, "
                        "else a new local Ray on 127.0.0.1 only")
    p.set_defaults(handler=_encode)

    p = tsub.add_parser("fit-kmeans", parents=[quiet], formatter_class=formatter_class,
                        help="fit a k-means codebook on features of a corpus sample",
                        description="Fit scikit-learn k-means on features of up to --max-files files (seeded sample) "
                                    "of a manifest; writes OUT.npy (centroids) + OUT.json (K, features, provenance).")
    p.add_argument("--manifest", required=True, help="manifest Parquet")
    p.add_argument("--features", default="mfcc", help="'mfcc' or 'hubert:DIR'")
    p.add_argument("--layer", type=int, default=None, help="HuBERT layer; %(default)s means 11")
    p.add_argument("-k", type=int, default=500, help="number of clusters (units)")
    p.add_argument("-o", "--output", required=True, help="codebook path prefix OUT (writes OUT.npy, OUT.json)")
    p.add_argument("--max-files", type=int, default=2000, help="files sampled from the manifest")
    p.add_argument("--max-frames", type=int, default=500_000, help="frames clustered (random subset)")
    p.add_argument("--seed", type=int, default=0, help="sampling and k-means seed")
    p.set_defaults(handler=_fit_kmeans)

    p = tsub.add_parser("import-kmeans", formatter_class=formatter_class,
                        help="convert a pickled sklearn/joblib codebook (needs --trust-pickle)",
                        description="Convert an existing joblib/pickle k-means (e.g. TWIST's 500-unit codebook) into "
                                    "OUT.npy + OUT.json. Unpickling can run arbitrary code: it is refused unless "
                                    "--trust-pickle is given.")
    p.add_argument("file", help="joblib/pickle file holding a fitted k-means (cluster_centers_) or a [K, D] array")
    p.add_argument("-o", "--output", required=True, help="codebook path prefix OUT")
    p.add_argument("--features", default="hubert", help="features it was fitted on: 'mfcc', 'hubert' or 'hubert:DIR'")
    p.add_argument("--layer", type=int, default=None, help="HuBERT layer it was fitted on (%(default)s: not recorded)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling FILE (only for files you trust)")
    p.set_defaults(handler=_import_kmeans)

    p = tsub.add_parser("unigram", formatter_class=formatter_class,
                        help="SentencePiece unigram over units (paper ablation): train | apply",
                        description="Train a SentencePiece unigram model over unit strings, or rewrite a unit dataset "
                                    "into its pieces (a new unit dataset whose meta.json keeps both provenances).")
    usub = p.add_subparsers(dest="unigram_command", metavar="ACTION")
    q = usub.add_parser("train", formatter_class=formatter_class, help="train a unigram model on a unit dataset")
    q.add_argument("units_dir", help="unit dataset from `tokenize encode`")
    q.add_argument("--vocab-size", type=int, required=True, help="pieces V, an upper bound (must exceed the unit vocabulary K)")
    q.add_argument("-o", "--output", required=True, help="model path prefix OUT (writes OUT.model, OUT.json)")
    q.add_argument("--max-sentences", type=int, default=1_000_000, help="utterances used for training")
    q.add_argument("--seed", type=int, default=0, help="recorded in OUT.json")
    q.set_defaults(handler=_unigram_train)
    q = usub.add_parser("apply", formatter_class=formatter_class, help="rewrite a unit dataset into unigram pieces")
    q.add_argument("units_dir", help="unit dataset the model was trained on")
    q.add_argument("--model", required=True, help="OUT(.model) from `unigram train`")
    q.add_argument("-o", "--output", required=True, help="new unit dataset directory")
    q.set_defaults(handler=_unigram_apply)
    p.set_defaults(handler=lambda a, parser=p: parser.print_help() or 2)

    p = tsub.add_parser("synth", parents=[quiet], formatter_class=formatter_class,
                        help="synthesise speech offline with espeak-ng (+ manifest with transcripts)",
                        description="Speak text with espeak-ng (no download) in several voices and rates, writing "
                                    "AUDIO_DIR/<utt_id>.wav (16-bit PCM) and AUDIO_DIR/manifest.parquet with transcripts. "
                                    "--stories N uses the embedded children's-story generator (an sTinyStories stand-in).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="UTF-8 file: one utterance per line, optionally 'utt_id<TAB>text' (utt_id: a "
                                    "relative path inside AUDIO_DIR, e.g. spk1/utt001; '..' and '/abs' are refused)")
    src.add_argument("--stories", type=int, help="generate N embedded children's stories")
    p.add_argument("-o", "--output", required=True, help="AUDIO_DIR for WAVs and manifest.parquet")
    p.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES), help="espeak-ng voices, cycled per utterance")
    p.add_argument("--rates", nargs="+", type=int, default=list(DEFAULT_RATES), help="speaking rates (words/min)")
    p.add_argument("--seed", type=int, default=0, help="story generator seed")
    p.add_argument("--sample-rate", type=int, default=16000, help="WAV sample rate")
    p.add_argument("--source", default="stinystories", help="corpus name stored in the manifest")
    p.set_defaults(handler=_synth)

    p = tsub.add_parser("stats", formatter_class=formatter_class, help="hours, units, units/s by source (Table 2)",
                        description="Summarise a unit dataset per source: utterances, hours, units, frames, units per "
                                    "second and frames per unit (the dedup ratio).")
    p.add_argument("units_dir", help="unit dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.set_defaults(handler=_stats)

    tok.set_defaults(handler=lambda a: tok.print_help() or 2)
