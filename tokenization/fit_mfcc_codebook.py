"""Rebuild the shipped `mfcc` codebook: `python -m slmscale.tokenization.fit_mfcc_codebook [--k 100] [--stories 120]`.

The codebook (tokenization/data/mfcc_k100.npy + .json, ~16 KB) is fitted on embedded children's stories
(`tokenization.stories`) spoken by espeak-ng in every default voice and rate (`tokenization.synth`), so the
`mfcc` tokenizer needs no download and no fitting step. K=100 follows HuBERT's first iteration (k-means with
100 clusters on MFCCs). Everything is seeded: rerunning gives the same file on the same library versions, and
the tokenizer hash is derived from the file's contents, so a refit that changes the centroids changes the hash.
"""
from __future__ import annotations

import argparse

import numpy as np

from slmscale.tokenization.kmeans import fit_kmeans
from slmscale.tokenization.mfcc import MfccExtractor
from slmscale.tokenization.stories import generate_stories
from slmscale.tokenization.synth import DEFAULT_RATES, DEFAULT_VOICES, tts
from slmscale.tokenization.tokenizer import MFCC_CODEBOOK


def main(argv=None) -> None:
    import soxr

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--stories", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(MFCC_CODEBOOK))
    args = parser.parse_args(argv)
    extractor = MfccExtractor()
    feats = []
    pairs = [(v, r) for r in DEFAULT_RATES for v in DEFAULT_VOICES]
    for i, text in enumerate(generate_stories(args.stories, seed=1000 + args.seed)):
        voice, rate = pairs[i % len(pairs)]
        wav, sr = tts(text, voice=voice, rate=rate)
        feats.append(extractor(soxr.resample(wav, sr, 16000).astype(np.float32)))
    frames = np.concatenate(feats)
    print(f"{len(frames)} frames ({len(frames) / 100 / 60:.1f} min of speech) from {args.stories} stories")
    cb = fit_kmeans(frames, args.k, extractor.describe(), seed=args.seed,
                    extra={"corpus": f"slmscale.tokenization.stories seed={1000 + args.seed} n={args.stories}",
                           "voices": list(DEFAULT_VOICES), "rates": list(DEFAULT_RATES)})
    print("wrote", cb.save(args.out), "hash", cb.hash)


if __name__ == "__main__":
    main()
