"""Small I/O helpers every stage uses: atomic writes, checksums, code version.

Part of the `slmscale` core, which imports no stage: every stage (tokenization, models, sweep, analysis)
may import it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from slmscale.errors import SlmscaleError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_folder",
    "fsync_path",
    "json_safe",
    "read_json",
    "sha256_file",
    "sha256_bytes",
    "code_version",
]


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only be read by setting it)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path` (atomic on POSIX).

    On error the temporary file is removed and `path` keeps its previous content, so a crash never
    leaves a half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a results file should read like any other file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)  # the bytes reach the disk before the name does (a lost node leaves old or new)
        os.replace(tmp_path, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh hidden sibling folder to fill; when the block succeeds it replaces `path` whole.

    An existing `path` stays in place until the new folder is complete and is removed only after the swap; if
    the block raises, the half-built sibling is removed and `path` is untouched (readers never see a mix of
    old and new files). Two renames, so a crash between them leaves `path` missing and the old folder beside
    it as `.NAME.old-*`; nothing half-written is ever at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = path.parent / f".{path.name}.building-{tag}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{tag}"
    if path.exists():
        path.rename(old)
    try:
        staging.rename(path)
    except OSError:
        if old.exists():
            old.rename(path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a directory (so a rename inside it is durable). A file system that cannot fsync a
    directory (some network ones) is left to its own guarantees."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN/inf float replaced by None (JSON has no NaN: `jq`, browsers and strict parsers
    reject the bare `NaN` Python writes). Dicts, lists and tuples are walked; other values kept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_text(path, text: str):
    """Write `text` to a local path (temp file + fsync + rename) or to an object store (`StorePath`: one PUT,
    which readers see whole or not at all). Returns the path."""
    if _is_store_path(path):
        path.write_text(text)
        return path
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path, obj: Any, indent: int = 2):
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def _is_store_path(path: Any) -> bool:
    from slmscale.objstore import StorePath

    return isinstance(path, StorePath)


def read_json(path, what: str = "JSON file") -> Any:
    """A JSON file on a local path or an object store (`StorePath`), with errors naming `what` and where."""
    path = path if _is_store_path(path) else Path(path)
    if not path.is_file():
        raise SlmscaleError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SlmscaleError(f"{what} {path} is not valid JSON: {exc}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """`slmscale <version>[+g<commit>[.dirty]]` — recorded in every shard, checkpoint and results row."""
    try:
        from importlib.metadata import version

        base = version("slmscale")
    except Exception:  # running from a source tree without installation
        base = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / "slmscale" / "__init__.py").is_file() or not (root / "pyproject.toml").is_file():
        return f"slmscale {base}"  # an installed copy (site-packages): no checkout to ask git about
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return f"slmscale {base}+g{commit}" + (".dirty" if dirty else "")
    except Exception:
        return f"slmscale {base}"
