"""`fit_codebook(manifest, features, k, out)`: fit a k-means codebook on features of a sample of a corpus.

Files are sampled (seeded) from the manifest, decoded like `encode` does, featurised, and at most
`max_frames` frames (a seeded random subset) are clustered with scikit-learn. k-means over a few hours of
frames is enough for a few hundred units (GSLM/TWIST fit on ~100 h; their codebooks can be imported instead).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.tokenization.audio import AudioReject, decode_chunks
from slmscale.tokenization.kmeans import fit_kmeans
from slmscale.tokenization.manifest import read_manifest
from slmscale.tokenization.tokenizer import MIN_SAMPLES, make_extractor, parse_tokenizer

__all__ = ["fit_codebook"]


def fit_codebook(manifest: str | Path, features: str, k: int, out: str | Path, *, layer: int | None = None,
                 max_files: int = 2000, max_frames: int = 500_000, seed: int = 0, progress: bool = True) -> Path:
    """Fit k-means with `k` clusters on `features` ("mfcc" or "hubert:DIR") of up to `max_files` files of
    `manifest`; writes OUT.npy + OUT.json and returns the .npy path."""
    from tqdm.auto import tqdm

    table = read_manifest(manifest)
    if len(table) == 0:
        raise SlmscaleError(f"{manifest}: the manifest has no rows")
    extractor = make_extractor(parse_tokenizer(features, layer=layer))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))[:max_files]
    paths = table.column("path").to_pylist()
    feats, n_frames, skipped = [], 0, 0
    for i in tqdm(order, desc="features", unit="file", disable=not progress):
        try:
            for chunk in decode_chunks(paths[i], min_samples=MIN_SAMPLES):
                f = extractor(chunk.wav)
                feats.append(f)
                n_frames += len(f)
        except AudioReject:
            skipped += 1
            continue
        if n_frames >= 4 * max_frames:  # enough to subsample from
            break
    if not feats:
        raise SlmscaleError(f"{manifest}: none of the sampled files could be decoded ({skipped} rejected)")
    frames = np.concatenate(feats)
    if len(frames) > max_frames:
        frames = frames[np.sort(rng.choice(len(frames), max_frames, replace=False))]
    cb = fit_kmeans(frames, k, extractor.describe(), seed=seed,
                    extra={"manifest": str(Path(manifest).resolve()), "files_skipped": skipped,
                           "features_spec": features})
    return cb.save(out)
