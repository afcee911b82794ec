"""Training checkpoints and trained-model loading.

    RUN_DIR/checkpoints/step-NNNNNNN/
      model/               save_pretrained (config.json + model.safetensors): loadable by any HF user
      optimizer.pt         AdamW state      (torch.save of tensors only; loaded with weights_only=True)
      scheduler.pt         LambdaLR state   (idem)
      rng.pt               torch CPU / CUDA RNG states (idem)
      trainer_state.json   data position (updates done, sequences and tokens read), numpy/python RNG,
                           model identity (size, n_params, vocab, context) checked on resume

A checkpoint is written into a hidden temporary directory, fsynced, and renamed into place (the parent is fsynced
too), so a `step-*` directory is always complete; a crash mid-write leaves only a `.tmp-*` directory, removed on
the next start. trainer_state.json, written last, records the SHA-256 of every other file. Before a run resumes,
`newest_intact_checkpoint` checks the newest checkpoint against those checksums (a checkpoint from before they
were recorded: by loading every file) and falls back to the newest intact one; a broken checkpoint is moved aside
to `checkpoints/broken-step-N` with the reason in `broken-step-N/why.txt` (kept for inspection, never resumed from).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from slmscale.errors import SlmscaleError
from slmscale.io import atomic_write_json, atomic_write_text, fsync_path, read_json, sha256_file
from slmscale.models.rundir import RunDir

__all__ = [
    "complete_steps",
    "list_checkpoints",
    "latest_checkpoint",
    "newest_intact_checkpoint",
    "branch_point",
    "checkpoint_problem",
    "save_model",
    "write_checkpoint",
    "read_checkpoint",
    "check_identity",
    "clean_stale_tmp",
    "prune_checkpoints",
    "load_model",
]

TRAINER_STATE = "trainer_state.json"
IDENTITY_KEYS = ("model", "n_params", "vocab_size", "context")


def complete_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints (trainer_state.json is written last), ascending."""
    rd = RunDir(run_dir)
    return [s for s in rd.checkpoint_steps() if (rd.checkpoint(s) / TRAINER_STATE).is_file()]


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [RunDir(run_dir).checkpoint(s) for s in complete_steps(run_dir)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clean_stale_tmp(run_dir: str | Path) -> None:
    root = RunDir(run_dir).checkpoints
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep: int, protected: Collection[int] = ()) -> None:
    """Remove all but the `keep` newest checkpoints, except those of the `protected` steps (a WSD trunk's branch
    points, which its branches load whenever they start)."""
    rd = RunDir(run_dir)
    steps = [s for s in complete_steps(run_dir) if s not in protected]
    for step in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(rd.checkpoint(step), ignore_errors=True)


def _rng_state_json() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _restore_rng_json(state: dict[str, Any]) -> None:
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    unwrapped_model,
    model_state: dict,
    optimizer_state: dict,
    scheduler_state: dict,
    trainer_state: dict[str, Any],
) -> Path:
    """Write one checkpoint atomically (temp dir + rename). Call on one rank only."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per checkpoint would drown the training bar
    final = RunDir(run_dir).checkpoint(step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(unwrapped_model, tmp / "model", model_state)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    files = _data_files(tmp)
    for f in files:
        fsync_path(f)
    checksums = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in files}
    atomic_write_json(tmp / TRAINER_STATE, {**trainer_state, "rng": _rng_state_json(), "files": checksums})
    fsync_path(tmp / "model")
    fsync_path(tmp)
    if final.exists():  # a previous attempt got this far: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    return final


def save_model(unwrapped_model, out_dir: Path, state_dict: dict | None = None) -> None:
    """`save_pretrained` (config.json + model.safetensors) with the file modes of every other file we write:
    safetensors' writer leaves model.safetensors 0600 (its temporary file's mode), unreadable to a colleague
    who can read the rest of the run."""
    unwrapped_model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    umask = os.umask(0)
    os.umask(umask)
    for f in _data_files(out_dir):
        os.chmod(f, 0o666 & ~umask)


def _data_files(folder: Path) -> list[Path]:
    """Every file under `folder` except trainer_state.json, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TRAINER_STATE)


def checkpoint_problem(ckpt: Path, expected: dict[str, Any]) -> str | None:
    """Why `ckpt` cannot be resumed from (a file missing, truncated, altered or unreadable), or None when it is
    intact. A checkpoint of another model (size, vocab, context) is not a broken one: that raises SlmscaleError."""
    try:
        state = check_identity(ckpt, expected)
    except ForeignCheckpoint:
        raise
    except SlmscaleError as exc:
        return f"{TRAINER_STATE} unreadable ({exc})"
    recorded = state.get("files")
    if isinstance(recorded, dict):  # checksums recorded at write time: the cheap, complete check
        for rel, digest in sorted(recorded.items()):
            f = ckpt / rel
            if not f.is_file():
                return f"{rel} is missing"
            if sha256_file(f) != digest:
                return f"{rel} does not match the SHA-256 recorded when it was written (truncated or altered)"
        return None
    try:  # a checkpoint from before checksums were recorded: every file must load
        read_checkpoint(ckpt, expected)
    except SlmscaleError as exc:
        return str(exc)
    except Exception as exc:  # safetensors / torch errors of a truncated file
        return f"a file does not load ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def newest_intact_checkpoint(run_dir: str | Path, expected: dict[str, Any]) -> Path | None:
    """The newest checkpoint that passes `checkpoint_problem`, None when the run has none. Each newer, broken one
    is moved aside to `checkpoints/broken-step-N` (with why.txt) and reported on stderr, so that neither this
    resume nor any later one tries it again. Raises SlmscaleError only when checkpoints exist and none is intact."""
    rd = RunDir(run_dir)
    problems: list[str] = []
    for step in reversed(complete_steps(run_dir)):
        ckpt = rd.checkpoint(step)
        problem = checkpoint_problem(ckpt, expected)
        if problem is None:
            if problems:
                print(f"{rd.path}: resuming from the checkpoint of step {step} instead", file=sys.stderr, flush=True)
            return ckpt
        aside = ckpt.parent / f"broken-{ckpt.name}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(ckpt, aside)
        atomic_write_text(aside / "why.txt", problem + "\n")
        problems.append(f"step {step}: {problem}")
        print(f"{rd.path}: checkpoint of step {step} is broken ({problem}); moved aside to {aside.name}",
              file=sys.stderr, flush=True)
    if problems:
        raise SlmscaleError(
            f"{rd.checkpoints}: no intact checkpoint to resume from ({'; '.join(problems)}); the broken ones are kept "
            f"as broken-step-*; expected at least one intact checkpoint, or remove {rd.checkpoints} to start over"
        )
    return None


def branch_point(trunk_dir: str | Path, step: int, expected: dict[str, Any]) -> Path:
    """The trunk's intact checkpoint of `step`, where a WSD branch starts. Raises SlmscaleError when it is not
    (yet) written or is broken; a broken one is left in place for the trunk's own resume to deal with."""
    ckpt = RunDir(trunk_dir).checkpoint(step)
    if step not in complete_steps(trunk_dir):
        raise SlmscaleError(f"{trunk_dir}: the trunk has no checkpoint of step {step} (yet); expected the trunk to "
                            f"have trained past its branch point {step} with keep_steps including it")
    problem = checkpoint_problem(ckpt, expected)
    if problem is not None:
        raise SlmscaleError(f"{ckpt}: the trunk's branch-point checkpoint is broken ({problem}); expected an intact "
                            f"checkpoint (retrain the trunk past step {step})")
    return ckpt


class ForeignCheckpoint(SlmscaleError):
    """A checkpoint made for another model (size, vocab, context): a mistake to refuse, not damage to skip."""


def check_identity(ckpt: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint's trainer_state and refuse one made for another model (size, vocab, context)."""
    state = read_json(ckpt / TRAINER_STATE, what="checkpoint state")
    wrong = {k: (state.get(k), expected[k]) for k in IDENTITY_KEYS if k in expected and state.get(k) != expected[k]}
    if wrong:
        detail = ", ".join(f"{k}={have!r} (this run: {want!r})" for k, (have, want) in wrong.items())
        raise ForeignCheckpoint(f"{ckpt}: checkpoint belongs to another model: {detail}; expected a checkpoint of this run")
    return state


def read_checkpoint(ckpt: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint's tensors and state (no unpickling: weights_only=True) after checking its identity.

    Returns {"trainer_state", "model_state", "optimizer_state", "scheduler_state", "rng"}; the caller puts them
    into its (possibly distributed) model and optimizer, then calls `restore_rng`."""
    import torch
    from safetensors.torch import load_file

    state = check_identity(ckpt, expected)
    files = sorted((ckpt / "model").glob("*.safetensors"))
    if not files:
        raise SlmscaleError(f"{ckpt}: no model safetensors in checkpoint")
    model_state: dict = {}
    for f in files:
        model_state.update(load_file(f))
    return {
        "trainer_state": state,
        "model_state": model_state,
        "optimizer_state": torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"),
        "scheduler_state": torch.load(ckpt / "scheduler.pt", weights_only=True),
        "rng": torch.load(ckpt / "rng.pt", weights_only=True),
    }


def restore_rng(loaded: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(loaded["rng"]["cpu"])
    if "cuda" in loaded["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(loaded["rng"]["cuda"])
    _restore_rng_json(loaded["trainer_state"]["rng"])


def load_model_state(model, model_state: dict, where: Path) -> None:
    """Load a (tied-embedding) state dict into a plain LlamaForCausalLM, refusing shape mismatches."""
    own = model.state_dict()
    for k, v in model_state.items():
        if k in own and own[k].shape != v.shape:
            raise SlmscaleError(
                f"{where}: tensor {k} has shape {tuple(v.shape)}, this model expects {tuple(own[k].shape)} "
                f"(checkpoint of another model size)"
            )
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens, saved once
    if missing or unexpected:
        raise SlmscaleError(f"{where}: checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_model(run_dir: str | Path, device: str = "cpu"):
    """`(LlamaForCausalLM, run_info)` of a training run: the final model, or the newest checkpoint if the
    run has not finished. `run_info` is run.json plus `model_dir`, `step` and `finished`."""
    from transformers import LlamaForCausalLM

    rd = RunDir(run_dir)
    info = rd.read_run_info()
    if rd.has_model():
        model_dir, step, finished = rd.model, info.get("total_steps"), True
    else:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise SlmscaleError(f"{run_dir}: no trained model (model/) and no checkpoint in checkpoints/")
        model_dir, finished = ckpt / "model", False
        step = json.loads((ckpt / TRAINER_STATE).read_text())["step"]
    model = LlamaForCausalLM.from_pretrained(model_dir).to(device)
    model.eval()
    return model, {**info, "model_dir": str(model_dir), "step": step, "finished": finished}
