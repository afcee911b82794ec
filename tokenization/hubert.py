"""HuBERT features from a local checkpoint directory (transformers.HubertModel), layer L.

Any directory `HubertModel.from_pretrained` reads works (config.json + safetensors/bin weights, e.g. a
downloaded TWIST mHuBERT-25Hz or facebook/hubert-base-ls960); nothing is fetched from the network. The 25 Hz
and 50 Hz variants differ only in the config's conv strides, from which the frame rate is derived.

On a GPU the model runs in bf16 (fp16 where bf16 is unsupported) with PyTorch SDPA attention, eagerly:
torch.compile is opt-in (`compile=True`) because it made HuBERT-base slower, not faster (H200, torch 2.11,
4 x 60 s per forward: eager 7,200x real time, compiled 2,700x with static and 1,650x with dynamic shapes, plus
20-70 s of compilation per process; the time goes to cuDNN's convolutions either way). Equal-length chunks are
stacked into one forward (no padding, so group-norm statistics are exactly those of each chunk alone), up to
an amount of audio sized to the GPU's memory (16 x 60 s chunks ran at 9,700x there). Layers above L are dropped
before the first forward: they cost compute and never affect layer L's output.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from slmscale.errors import SlmscaleError

__all__ = ["HubertExtractor", "weights_sha256", "DEFAULT_LAYER"]

DEFAULT_LAYER = 11
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@lru_cache(maxsize=8)
def weights_sha256(model_dir: str) -> str:
    """sha256 over config.json and every weight file (sorted by name): identifies the checkpoint exactly."""
    root = Path(model_dir)
    h = hashlib.sha256()
    h.update((root / "config.json").read_bytes())
    files = sorted({p for pat in _WEIGHT_PATTERNS for p in root.glob(pat)})
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class HubertExtractor:
    kind = "hubert"

    def __init__(self, model_dir: str | Path, layer: int | None = None, device: str | None = None,
                 dtype: str | None = None, compile: bool = False):
        import torch
        from transformers import HubertConfig, HubertModel

        root = Path(model_dir).expanduser()
        if not root.is_dir():
            raise SlmscaleError(f"hubert checkpoint: {root} is not a directory (expected a local HubertModel "
                                "save_pretrained folder with config.json and weights)")
        if not (root / "config.json").is_file():
            raise SlmscaleError(f"hubert checkpoint {root}: no config.json")
        if not any(any(root.glob(p)) for p in _WEIGHT_PATTERNS):
            raise SlmscaleError(f"hubert checkpoint {root}: no weight file (*.safetensors or *.bin)")
        try:
            config = HubertConfig.from_pretrained(root, local_files_only=True)
        except Exception as exc:  # OSError / ValueError from transformers for a malformed config
            raise SlmscaleError(f"hubert checkpoint {root}: unreadable config.json: {exc}") from None
        self.layer = DEFAULT_LAYER if layer is None else int(layer)
        if not 0 <= self.layer <= config.num_hidden_layers:
            raise SlmscaleError(f"--layer {self.layer}: {root} has {config.num_hidden_layers} transformer layers, "
                                f"expected 0..{config.num_hidden_layers}")
        self.model_dir = root.resolve()
        self.device = _pick_device(device)
        if dtype is None:
            dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if self.device.startswith("cuda") else "float32"
        self.dtype = getattr(torch, dtype)
        # Keep only the layers that feed layer L (post-norm HuBERT-base style: hidden_states[L] is layer L's output).
        if not config.do_stable_layer_norm:
            config.num_hidden_layers = max(self.layer, 1)
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the dropped upper layers are reported as "unexpected" weights: expected
        try:
            model = HubertModel.from_pretrained(root, config=config, local_files_only=True, attn_implementation="sdpa",
                                                dtype=self.dtype)
        except (ValueError, ImportError):  # a transformers build without SDPA for HuBERT
            model = HubertModel.from_pretrained(root, config=config, local_files_only=True, dtype=self.dtype)
        except OSError as exc:
            raise SlmscaleError(f"hubert checkpoint {root}: could not load weights: {exc}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        # cast explicitly as well: transformers 4.x ignores `dtype=` (it was `torch_dtype=` there)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self._forward = self.model
        if compile:
            self._forward = torch.compile(self.model, dynamic=True)
        self.frame_rate_hz = 16000.0 / float(np.prod(config.conv_stride))
        self.dim = int(config.hidden_size)
        pre = root / "preprocessor_config.json"
        self.normalize = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.is_file() else False

    def describe(self) -> dict:
        return {"kind": self.kind, "weights_sha256": weights_sha256(str(self.model_dir)), "layer": self.layer,
                "frame_rate_hz": self.frame_rate_hz, "normalize": self.normalize}

    def _run(self, x):
        import torch

        with torch.inference_mode():
            if self.normalize:
                x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True) + 1e-7)
            try:
                out = self._forward(x.to(self.dtype), output_hidden_states=True)
            except Exception:
                if self._forward is self.model:
                    raise
                self._forward = self.model  # torch.compile failed on this platform: stay eager from now on
                out = self.model(x.to(self.dtype), output_hidden_states=True)
            return out.hidden_states[self.layer]

    def max_batch_samples(self) -> int:
        """Samples per forward: 4 minutes of audio on CPU; on a GPU 12 s per GiB of its memory, between 4 and 16
        minutes (HuBERT-base in bf16 peaked at 9.1 GiB for 16 minutes, ~10 MB per second of audio, mostly the
        first conv layer's output: 12 s per GiB leaves the rest of the card to the codebook and other work)."""
        import torch

        if not self.device.startswith("cuda"):
            return 16000 * 240
        total_gib = torch.cuda.get_device_properties(torch.device(self.device)).total_memory / 2**30
        return int(16000 * min(960.0, max(240.0, 12.0 * total_gib)))

    def batch_tensors(self, wavs: list[np.ndarray], max_batch_samples: int | None = None) -> list:
        """Features of each waveform as a [T, D] tensor on the model's device. Equal-length waveforms share a forward."""
        import torch

        if max_batch_samples is None:
            max_batch_samples = self.max_batch_samples()
        out: list = [None] * len(wavs)
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            by_len.setdefault(len(w), []).append(i)
        for length, idx in by_len.items():
            per = max(1, max_batch_samples // max(length, 1))
            for s in range(0, len(idx), per):
                group = idx[s: s + per]
                if self.device.startswith("cuda"):  # stacked straight into pinned memory: an asynchronous copy
                    host = torch.empty((len(group), length), dtype=torch.float32, pin_memory=True)
                    np.stack([wavs[i] for i in group], out=host.numpy())
                    x = host.to(self.device, non_blocking=True)
                else:
                    x = torch.from_numpy(np.stack([wavs[i] for i in group]).astype(np.float32)).to(self.device)
                feats = self._run(x)
                for j, i in enumerate(group):
                    out[i] = feats[j]
        return out

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return self.batch_tensors([wav])[0].float().cpu().numpy()

    def batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        return [t.float().cpu().numpy() for t in self.batch_tensors(wavs)]
