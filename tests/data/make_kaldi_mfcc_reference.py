"""Write tests/data/kaldi_mfcc_torchaudio.npz: HuBERT's iteration-0 features computed by torchaudio itself.

Not part of the project and never imported by it (torchaudio is not a dependency): it loads torchaudio's pure-torch
`compliance/kaldi.py` and the two functions it and fairseq's recipe need from `functional/functional.py`
(`create_dct`, `compute_deltas`) out of an unpacked torchaudio wheel, against the installed torch, and runs exactly
fairseq's `examples/hubert/simple_kmeans/dump_mfcc_feature.py` computation on two waveforms stored in the file.
See tests/data/README.md for the command and provenance.

    python tests/data/make_kaldi_mfcc_reference.py UNPACKED_WHEEL_DIR tests/data/kaldi_mfcc_torchaudio.npz
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def load_torchaudio_kaldi(root: Path):
    """torchaudio.compliance.kaldi from an unpacked wheel, with a stub `torchaudio.functional` holding the real
    `create_dct` and `compute_deltas` source (the rest of torchaudio needs its compiled extension)."""
    ns = {"torch": torch, "Tensor": torch.Tensor, "math": math, "Optional": Optional}
    tree = ast.parse((root / "torchaudio/functional/functional.py").read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("create_dct", "compute_deltas")]
    assert len(wanted) == 2
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "torchaudio/functional/functional.py", "exec"), ns)
    functional = types.ModuleType("torchaudio.functional")
    functional.create_dct, functional.compute_deltas = ns["create_dct"], ns["compute_deltas"]
    stub = types.ModuleType("torchaudio")
    stub.functional = functional
    sys.modules["torchaudio"], sys.modules["torchaudio.functional"] = stub, functional
    spec = importlib.util.spec_from_file_location("torchaudio_compliance_kaldi", root / "torchaudio/compliance/kaldi.py")
    kaldi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kaldi)
    return kaldi, functional


def hubert_mfcc(kaldi, functional, wav: np.ndarray) -> np.ndarray:
    """fairseq examples/hubert/simple_kmeans/dump_mfcc_feature.py, MfccFeatureReader.get_feats after reading."""
    with torch.no_grad():
        x = torch.from_numpy(wav).float().view(1, -1)
        mfccs = kaldi.mfcc(waveform=x, sample_frequency=16000, use_energy=False).transpose(0, 1)
        deltas = functional.compute_deltas(mfccs)
        ddeltas = functional.compute_deltas(deltas)
        return torch.cat([mfccs, deltas, ddeltas], dim=0).transpose(0, 1).contiguous().numpy()


def inputs() -> dict[str, np.ndarray]:
    """int16 waveforms (the fixture stores them, so the test does not depend on espeak-ng reproducing them)."""
    import soxr

    from slmscale.tokenization.synth import tts

    wav, sr = tts("The little cat went to the park.", voice="en")
    speech = soxr.resample(wav, sr, 16000)[:16000]  # first second of speech (espeak's leading silence included)
    speech = np.concatenate([speech, np.zeros(1600, np.float32)])  # 100 ms of digital silence: the log floor
    t = np.arange(4000) / 16000  # 250 ms: a 440 Hz tone gliding to 3 kHz, a DC offset of 0.1
    sine = 0.5 * np.sin(2 * np.pi * (440 * t + (3000 - 440) / (2 * t[-1]) * t ** 2)) + 0.1
    return {name: np.round(np.clip(w, -1, 1) * 32767).astype(np.int16) for name, w in
            (("speech", speech), ("sine", sine))}


def main(root: str, out: str) -> None:
    kaldi, functional = load_torchaudio_kaldi(Path(root))
    arrays = {}
    for name, pcm in inputs().items():
        arrays[f"{name}_int16"] = pcm
        arrays[f"{name}_features"] = hubert_mfcc(kaldi, functional, pcm.astype(np.float32) / 32768.0)
    kaldi_py = hashlib.sha256((Path(root) / "torchaudio/compliance/kaldi.py").read_bytes()).hexdigest()
    arrays["provenance"] = np.array(f"torchaudio.compliance.kaldi.mfcc (kaldi.py sha256 {kaldi_py}) + compute_deltas "
                                    f"x2, torch {torch.__version__}; input = int16 / 32768 as float32")
    np.savez_compressed(out, **arrays)
    print(out, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
