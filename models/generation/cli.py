"""`slmscale generate`: continue a spoken prompt with a trained model (units, and WAVs with a vocoder);
`slmscale generate convert-vocoder`: turn a torch CodeHiFiGAN checkpoint into safetensors once."""
from __future__ import annotations

import argparse

GENERATE_DESCRIPTION = """\
Continue a prompt with a trained model (a training RUN_DIR) and write the units, and with --vocoder the audio.

The prompt is an audio file (--prompt), tokenized with the model's own tokenizer (the one whose hash is in
RUN_DIR/run.json; another is refused), or units of that tokenizer (--prompt-units FILE, a JSON object
{"tokenizer_hash": HASH, "units": [...]} such as OUT/prompt_units.json). Continuations are sampled with the
model's KV-cached generation, --num-samples at once; on CPU the same --seed gives the same units.

Vocoders (--vocoder):
  embedded   lo-fi: each unit's mean spectrum from espeak-ng speech + Griffin-Lim phase, built once per
             tokenizer and cached (needs a model trained on mfcc or hubert units)
  DIR        a CodeHiFiGAN checkpoint (config.json + generator.safetensors; a torch checkpoint is converted
             once with `slmscale generate convert-vocoder`), or an exemplar vocoder directory (vocoder.json)
The vocoder must render the model's K units at the tokenizer's frame rate.

Outputs in OUT_DIR: samples.json (units, settings, provenance), prompt_units.json, and with a vocoder
prompt.wav and sample-NNN.wav (prompt + continuation; (prompt frames + generated frames) x hop samples at
the tokenizer's sample rate).

Examples:
  slmscale generate --model runs/tiny-1M --prompt prompt.wav -o out/ --vocoder embedded --num-samples 4
  slmscale generate --model runs/85M --prompt-units out/prompt_units.json -o out85/ --vocoder ckpt/hifigan
  slmscale generate convert-vocoder g_00500000 --config config.json -o ckpt/hifigan
"""

CONVERT_DESCRIPTION = """\
Convert a CodeHiFiGAN torch checkpoint (e.g. speech-resynthesis / fairseq `g_00500000`, a dict with a
"generator" state dict) and its config JSON into OUT/config.json + OUT/generator.safetensors, the layout
`slmscale generate --vocoder OUT` loads. Tensors are read with torch.load(weights_only=True); a file holding
other objects is unpickled only with --trust-pickle (unpickling runs code from the file). Prints the sha256 to
pin with --vocoder-sha256."""


def register(sub, formatter_class) -> None:
    p = sub.add_parser("generate", help="continue a spoken prompt with a trained model (units + WAVs)",
                       description=GENERATE_DESCRIPTION, formatter_class=formatter_class)
    p.add_argument("--model", metavar="RUN_DIR", help="training run directory (run.json + model/ or checkpoints/), or its object-store URI (s3://...)")
    p.add_argument("--prompt", metavar="AUDIO", default=None, help="prompt audio file (wav/flac/ogg/mp3)")
    p.add_argument("--prompt-units", metavar="FILE", default=None,
                   help="prompt units JSON {tokenizer_hash, units} of the model's tokenizer")
    p.add_argument("-o", "--out", metavar="OUT_DIR", help="output folder")
    p.add_argument("--max-units", type=int, default=200, help="units generated per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely units (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--num-samples", type=int, default=1, help="continuations of the prompt (one batch)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="end a sample at the model's end-of-utterance unit (default: always --max-units units)")
    p.add_argument("--vocoder", metavar="SPEC", default=None, help="'embedded' or a vocoder directory; none: units only")
    p.add_argument("--vocoder-sha256", metavar="HEX", default=None, help="refuse a vocoder checkpoint with another sha256")
    p.add_argument("--speaker", type=int, default=0, help="speaker id of a multi-speaker CodeHiFiGAN")
    p.add_argument("--cache-dir", default=None,
                   help="where the embedded vocoder is cached (default: $SLMSCALE_CACHE or ~/.cache/slmscale)")
    p.add_argument("--device", default=None, help="torch device (default: cpu, deterministic)")
    p.add_argument("--json", action="store_true", help="print samples.json instead of a summary")
    p.set_defaults(handler=_generate)

    gsub = p.add_subparsers(dest="generate_command", metavar="ACTION")
    q = gsub.add_parser("convert-vocoder", help="convert a torch CodeHiFiGAN checkpoint to safetensors",
                        description=CONVERT_DESCRIPTION, formatter_class=formatter_class)
    q.add_argument("checkpoint", help="torch checkpoint (g_NNNNNNNN, *.pt)")
    q.add_argument("--config", required=True, help="its generator config JSON")
    q.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output directory")
    q.add_argument("--trust-pickle", action="store_true", help="allow unpickling non-tensor objects (trusted files only)")
    q.set_defaults(handler=_convert_vocoder)


def _generate(args: argparse.Namespace) -> int:
    import json

    from slmscale.errors import SlmscaleError
    from slmscale.models.generation import generate

    missing = [flag for flag, value in (("--model", args.model), ("-o/--out", args.out)) if not value]
    if missing:
        raise SlmscaleError(f"{' and '.join(missing)}: required (see `slmscale generate --help`)")
    result = generate(args.model, args.out, prompt=args.prompt, prompt_units=args.prompt_units,
                      max_units=args.max_units, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                      num_samples=args.num_samples, stop_at_eos=args.stop_at_eos, vocoder=args.vocoder,
                      vocoder_sha256=args.vocoder_sha256, speaker=args.speaker, cache_dir=args.cache_dir,
                      device=args.device)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    wavs = [s["wav"] for s in result["samples"] if s.get("wav")]
    print(f"{result['provenance']['run_id']}: {len(result['samples'])} sample(s) of {args.max_units} units from a "
          f"{result['prompt']['n_units']}-unit prompt -> {args.out}/samples.json"
          + (f" + {len(wavs)} WAV(s) at {result['audio']['sample_rate']} Hz" if wavs else ""))
    return 0


def _convert_vocoder(args: argparse.Namespace) -> int:
    from slmscale.models.generation.codehifigan import convert_checkpoint

    out, sha = convert_checkpoint(args.checkpoint, args.config, args.output, trust_pickle=args.trust_pickle)
    print(f"wrote {out} (config.json + generator.safetensors); sha256 {sha} (pin with --vocoder-sha256)")
    return 0
