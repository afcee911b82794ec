"""Inference-only CodeHiFiGAN: the unit HiFi-GAN of speech-resynthesis / GSLM / textless-lib / TWIST.

A local checkpoint directory, nothing downloaded:

    DIR/config.json              the generator config of those repositories (fairseq `CodeHiFiGANVocoder`
                                 format): upsample_rates, upsample_kernel_sizes, upsample_initial_channel,
                                 resblock ("1" | "2"), resblock_kernel_sizes, resblock_dilation_sizes,
                                 num_embeddings (units), embedding_dim, model_in_dim, sampling_rate,
                                 optional code_hop_size, dur_predictor_params, multispkr + num_speakers
    DIR/generator.safetensors    the generator's state dict (read with safetensors: no unpickling)

The architecture follows fairseq's `CodeGenerator` (models/text_to_speech/codehifigan.py + hifigan.py): unit
embedding -> optional duration predictor (FastSpeech 2's variance predictor; a deduplicated unit is repeated
round(exp(log_dur) - 1) >= 1 frames) -> optional speaker embedding, concatenated -> HiFi-GAN generator
(conv_pre, transposed-conv upsampling with multi-receptive-field residual blocks, conv_post, tanh). Weight norm
is folded into plain weights at load time (`weight_g * weight_v / ||weight_v||`, and the same for torch's newer
`parametrizations.weight.original0/1` names), so released checkpoints load with their tensor names unchanged.
F0-conditioned and speaker-embedder variants are refused: they need inputs a unit LM does not produce.

Released checkpoints are pickled torch files (`g_00500000`, a dict with a "generator" state dict).
`convert_checkpoint` turns one into the layout above once: it reads tensors with torch.load(weights_only=True),
and unpickles arbitrary objects only with `trust_pickle=True` (`slmscale generate convert-vocoder
--trust-pickle`). `weights_sha256` (config + weights) identifies a checkpoint; `load_codehifigan(...,
sha256=HEX)` refuses any other (the pin).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_folder, code_version, read_json

__all__ = ["CodeHiFiGAN", "CodeHiFiGANVocoder", "load_codehifigan", "convert_checkpoint", "weights_sha256",
           "check_config", "WEIGHTS_FILE", "CONFIG_FILE", "LRELU_SLOPE"]

WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "config.json"
LRELU_SLOPE = 0.1
_REQUIRED = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes",
             "resblock_dilation_sizes", "num_embeddings", "embedding_dim")


def check_config(cfg: Any, where: str) -> dict[str, Any]:
    """A CodeHiFiGAN generator config with defaults filled in, or a SlmscaleError naming what is wrong."""
    if not isinstance(cfg, dict):
        raise SlmscaleError(f"{where}: expected a JSON object (the CodeHiFiGAN generator config), got {type(cfg).__name__}")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise SlmscaleError(f"{where}: missing fields {missing}, expected a CodeHiFiGAN generator config "
                            f"(speech-resynthesis / fairseq CodeHiFiGANVocoder format)")
    if cfg.get("f0"):
        raise SlmscaleError(f"{where}: field 'f0' is true; F0-conditioned vocoders need an F0 track a unit LM does "
                            "not generate, expected a units-only CodeHiFiGAN")
    if cfg.get("embedder_params"):
        raise SlmscaleError(f"{where}: field 'embedder_params' set; speaker-embedder vocoders need reference audio, "
                            "expected a units-only CodeHiFiGAN (a 'multispkr' one with speaker ids works)")
    if len(cfg["upsample_rates"]) != len(cfg["upsample_kernel_sizes"]):
        raise SlmscaleError(f"{where}: 'upsample_rates' and 'upsample_kernel_sizes' differ in length")
    if len(cfg["resblock_kernel_sizes"]) != len(cfg["resblock_dilation_sizes"]):
        raise SlmscaleError(f"{where}: 'resblock_kernel_sizes' and 'resblock_dilation_sizes' differ in length")
    out = {"resblock": "1", "model_in_dim": 80, "sampling_rate": 16000, "multispkr": False, "num_speakers": 200, **cfg}
    out["resblock"] = str(out["resblock"])
    if out["resblock"] not in ("1", "2"):
        raise SlmscaleError(f"{where}: field 'resblock' is {out['resblock']!r}, expected '1' or '2'")
    expected_in = out["embedding_dim"] * (2 if out["multispkr"] else 1)
    if out["model_in_dim"] != expected_in:
        raise SlmscaleError(f"{where}: field 'model_in_dim' is {out['model_in_dim']}, expected embedding_dim"
                            f"{' x 2 (multispkr)' if out['multispkr'] else ''} = {expected_in}")
    hop = int(np.prod(out["upsample_rates"]))
    if "code_hop_size" in out and int(out["code_hop_size"]) != hop:
        raise SlmscaleError(f"{where}: field 'code_hop_size' is {out['code_hop_size']}, but the upsample_rates "
                            f"multiply to {hop}; expected them to agree")
    return out


def weights_sha256(path: str | Path) -> str:
    """sha256 over config.json and generator.safetensors: identifies a vocoder checkpoint exactly."""
    root = Path(path)
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update(name.encode())
        with open(root / name, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _build_module_classes():
    """torch.nn classes, defined on first use so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def padding(kernel: int, dilation: int = 1) -> int:
        return (kernel * dilation - dilation) // 2

    class ResBlock1(nn.Module):
        def __init__(self, ch: int, k: int, dilation):
            super().__init__()
            self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=padding(k, d)) for d in dilation[:3])
            self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=1, padding=padding(k)) for _ in dilation[:3])

        def forward(self, x):
            for c1, c2 in zip(self.convs1, self.convs2):
                x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            return x

    class ResBlock2(nn.Module):
        def __init__(self, ch: int, k: int, dilation):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=padding(k, d)) for d in dilation[:2])

        def forward(self, x):
            for c in self.convs:
                x = x + c(F.leaky_relu(x, LRELU_SLOPE))
            return x

    class DurationPredictor(nn.Module):
        """FastSpeech 2's VariancePredictor (fairseq), inference only: [B, T, C] -> log(1 + frames) [B, T]."""

        def __init__(self, p: dict):
            super().__init__()
            dim, hidden, k = p["encoder_embed_dim"], p["var_pred_hidden_dim"], p["var_pred_kernel_size"]
            self.conv1 = nn.Sequential(nn.Conv1d(dim, hidden, k, padding=(k - 1) // 2), nn.ReLU())
            self.ln1 = nn.LayerNorm(hidden)
            self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, k, padding=1), nn.ReLU())
            self.ln2 = nn.LayerNorm(hidden)
            self.proj = nn.Linear(hidden, 1)

        def forward(self, x):
            x = self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2))
            x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
            return self.proj(x).squeeze(2)

    class CodeHiFiGAN(nn.Module):
        def __init__(self, cfg: dict):
            super().__init__()
            self.cfg = cfg
            ch0 = cfg["upsample_initial_channel"]
            self.dict = nn.Embedding(cfg["num_embeddings"], cfg["embedding_dim"])
            if cfg["multispkr"]:
                self.spkr = nn.Embedding(cfg["num_speakers"], cfg["embedding_dim"])
            self.dur_predictor = DurationPredictor(cfg["dur_predictor_params"]) if cfg.get("dur_predictor_params") else None
            self.conv_pre = nn.Conv1d(cfg["model_in_dim"], ch0, 7, 1, padding=3)
            self.ups = nn.ModuleList(
                nn.ConvTranspose1d(ch0 // 2**i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)
                for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])))
            block = ResBlock1 if cfg["resblock"] == "1" else ResBlock2
            self.resblocks = nn.ModuleList(
                block(ch0 // 2 ** (i + 1), k, d) for i in range(len(self.ups))
                for k, d in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]))
            self.conv_post = nn.Conv1d(ch0 // 2 ** len(self.ups), 1, 7, 1, padding=3)
            self.num_kernels = len(cfg["resblock_kernel_sizes"])

        def predict_frames(self, units):
            """Frames per unit [T] from the duration predictor (batch of one sequence, as fairseq)."""
            log_dur = self.dur_predictor(self.dict(units[None]))
            return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)[0]

        def forward(self, units, frames, speaker: int = 0):
            """units [T] long, frames [T] long -> waveform [sum(frames) * hop] (one sequence)."""
            x = torch.repeat_interleave(self.dict(units), frames, dim=0).T[None]  # [1, C, frames]
            if self.cfg["multispkr"]:
                spk = self.spkr(torch.tensor([speaker], device=units.device))[:, :, None].expand(-1, -1, x.shape[-1])
                x = torch.cat([x, spk], dim=1)
            x = self.conv_pre(x)
            for i, up in enumerate(self.ups):
                x = up(F.leaky_relu(x, LRELU_SLOPE))
                blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
                x = sum(b(x) for b in blocks) / self.num_kernels
            return torch.tanh(self.conv_post(F.leaky_relu(x))).flatten()

    return CodeHiFiGAN


_CLASSES: dict[str, Any] = {}


def CodeHiFiGAN(cfg: dict):  # a factory named like the class it builds: torch loads on first use
    """A randomly initialised CodeHiFiGAN module for a (checked) config."""
    if "CodeHiFiGAN" not in _CLASSES:
        _CLASSES["CodeHiFiGAN"] = _build_module_classes()
    return _CLASSES["CodeHiFiGAN"](check_config(cfg, "CodeHiFiGAN config"))


def _fold_weight_norm(state: dict) -> dict:
    """Plain `.weight` tensors for weight-normed ones (old `weight_g/weight_v`, new parametrization names)."""
    import torch

    out, pairs = {}, {}
    for key, value in state.items():
        for g_name, v_name in (("weight_g", "weight_v"), ("parametrizations.weight.original0",
                                                          "parametrizations.weight.original1")):
            if key.endswith(g_name) or key.endswith(v_name):
                stem = key[: -len(g_name if key.endswith(g_name) else v_name)]
                pairs.setdefault(stem, {})["g" if key.endswith(g_name) else "v"] = value
                break
        else:
            out[key] = value
    for stem, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise SlmscaleError(f"vocoder weights: {stem}weight has only half of its weight-norm pair")
        v = gv["v"].float()
        norm = v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))  # torch weight_norm, dim=0
        out[stem + "weight"] = (gv["g"].float() * v / norm).to(torch.float32)
    return out


class CodeHiFiGANVocoder:
    """A loaded CodeHiFiGAN with the vocoder interface of models/generation/vocoder.py."""

    kind = "codehifigan"

    def __init__(self, module, cfg: dict[str, Any], path: Path, sha256: str, device: str = "cpu", speaker: int = 0):
        self.module, self.cfg, self.path, self.sha256 = module, cfg, path, sha256
        self.device, self.speaker = device, int(speaker)
        self.n_units = int(cfg["num_embeddings"])
        self.sample_rate = int(cfg["sampling_rate"])
        self.hop_samples = int(np.prod(cfg["upsample_rates"]))
        if cfg["multispkr"] and not 0 <= self.speaker < int(cfg["num_speakers"]):
            raise SlmscaleError(f"--speaker {speaker}: {path} has {cfg['num_speakers']} speakers, expected 0..{cfg['num_speakers'] - 1}")

    def frames_per_unit(self, units: np.ndarray, dedup: bool) -> np.ndarray:
        """Deduplicated units get the duration predictor's frames when the checkpoint has one, else one frame."""
        import torch

        units = np.asarray(units, np.int64)
        if not dedup or self.module.dur_predictor is None or len(units) == 0:
            return np.ones(len(units), np.int64)
        with torch.inference_mode():
            return self.module.predict_frames(torch.from_numpy(units).to(self.device)).cpu().numpy().astype(np.int64)

    def synthesize(self, units: np.ndarray, frames: np.ndarray) -> np.ndarray:
        import torch

        units, frames = np.asarray(units, np.int64), np.asarray(frames, np.int64)
        n = int(frames.sum()) * self.hop_samples
        if len(units) == 0:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            wav = self.module(torch.from_numpy(units).to(self.device), torch.from_numpy(frames).to(self.device),
                              self.speaker).float().cpu().numpy()
        out = np.zeros(n, np.float32)  # kernel/stride pairs with odd (k - u) give a few samples more or fewer
        out[:min(n, len(wav))] = wav[:n]
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "codehifigan", "path": str(self.path), "sha256": self.sha256, "lo_fi": False,
                "sampling_rate": self.sample_rate, "hop_samples": self.hop_samples, "n_units": self.n_units,
                "duration_predictor": self.module.dur_predictor is not None, "speaker": self.speaker
                if self.cfg["multispkr"] else None}


def load_codehifigan(path: str | Path, *, sha256: str | None = None, device: str = "cpu",
                     speaker: int = 0) -> CodeHiFiGANVocoder:
    """Load DIR (config.json + generator.safetensors); with `sha256`, refuse any other checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    if not root.is_dir():
        raise SlmscaleError(f"--vocoder {root}: not a directory, expected 'embedded' or a CodeHiFiGAN directory "
                            f"({CONFIG_FILE} + {WEIGHTS_FILE})")
    if not (root / WEIGHTS_FILE).is_file():
        legacy = [p.name for p in root.iterdir() if p.is_file() and (p.name.startswith("g_") or p.suffix in (".pt", ".pth"))]
        hint = (f"; found {legacy[0]}: convert it once with `slmscale generate convert-vocoder {root / legacy[0]} "
                f"--config {root / CONFIG_FILE} -o DIR`") if legacy else ""
        raise SlmscaleError(f"--vocoder {root}: no {WEIGHTS_FILE}, expected a CodeHiFiGAN directory with "
                            f"{CONFIG_FILE} + {WEIGHTS_FILE}{hint}")
    cfg = check_config(read_json(root / CONFIG_FILE, what="vocoder config"), f"{root / CONFIG_FILE}")
    digest = weights_sha256(root)
    if sha256 and digest != sha256.lower():
        raise SlmscaleError(f"--vocoder-sha256: {root} has sha256 {digest}, expected the pinned {sha256}; "
                            "the checkpoint changed or is not the one pinned")
    try:
        state = load_file(str(root / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SlmscaleError(f"{root / WEIGHTS_FILE}: not a readable safetensors file ({exc}), expected the "
                            "CodeHiFiGAN generator weights (corrupt or truncated?)") from None
    state = _fold_weight_norm(state)
    module = CodeHiFiGAN(cfg)
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (config wants {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        raise SlmscaleError(f"{root / WEIGHTS_FILE}: weights do not match {CONFIG_FILE}: "
                            + "; ".join(x for x in (f"shapes {wrong[:3]}" if wrong else "",
                                                    f"missing {missing[:3]}" if missing else "",
                                                    f"unexpected {unexpected[:3]}" if unexpected else "") if x))
    module.load_state_dict(state)
    module.eval().to(device)
    return CodeHiFiGANVocoder(module, cfg, root.resolve(), digest, device=device, speaker=speaker)


def convert_checkpoint(checkpoint: str | Path, config: str | Path, out_dir: str | Path, *,
                       trust_pickle: bool = False) -> tuple[Path, str]:
    """Convert a torch CodeHiFiGAN checkpoint (+ its config JSON) into OUT/config.json + OUT/generator.safetensors.
    Returns (OUT, sha256 to pin). Tensors only are read unless `trust_pickle` (unpickling runs code from the file)."""
    import pickle

    import torch
    from safetensors.torch import save_file

    checkpoint, config, out = Path(checkpoint), Path(config), Path(out_dir)
    if not checkpoint.is_file():
        raise SlmscaleError(f"vocoder checkpoint not found: {checkpoint}")
    cfg = read_json(config, what="vocoder config")
    check_config(cfg, str(config))
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise SlmscaleError(f"{checkpoint}: holds objects other than tensors ({str(exc).splitlines()[0][:160]}); "
                                "unpickling them runs code from the file — re-run with --trust-pickle if you trust "
                                "its origin") from None
        obj = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise SlmscaleError(f"{checkpoint}: not a readable torch checkpoint ({exc})") from None
    state = obj.get("generator", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SlmscaleError(f"{checkpoint}: expected a state dict of tensors (or a dict with a 'generator' state dict)")
    with atomic_folder(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"converted_from": str(checkpoint.resolve()), "code_version": code_version()})
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        load_codehifigan(tmp)  # the converted weights must load against the config before they replace anything
    return out, weights_sha256(out)
