"""Object storage (S3, GCS, anything pyarrow's filesystem layer resolves) behind a small pathlib-like class.

A sweep's storage, a run directory and a unit dataset may live at a URI (`s3://bucket/prefix`, `gs://...`)
instead of a local or shared path. `location(text)` gives a `pathlib.Path` for a local path and a `StorePath`
for a URI; `StorePath` offers the part of the `Path` API the project's readers use (`/`, `name`, `parent`,
`exists`, `is_file`, `is_dir`, `iterdir`, `glob` of one level, `read_text`, `read_bytes`, `open`, `stat`), so
code that reads sweep.json, row.json or a checkpoint listing works on both. Writes of one object are a single
PUT, which readers see whole or not at all (what temp-file + rename gives on a filesystem).

Credentials and endpoints come from the standard environment, never from files of this project:
  S3   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), AWS_PROFILE and ~/.aws, web identity,
       or the instance profile; AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for S3-compatible stores (MinIO,
       Ceph, moto); AWS_REGION / AWS_DEFAULT_REGION, else the bucket's region is looked up.
  GCS  GOOGLE_APPLICATION_CREDENTIALS or the instance's service account.
Timeouts are short and retries few, so a dead endpoint is an error in seconds, not minutes.

Part of the `slmscale` core: imports no stage.
"""
from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slmscale.errors import SlmscaleError

__all__ = ["is_uri", "location", "StorePath", "upload", "download", "check_store", "filesystem_of"]

_CONNECT_TIMEOUT_S = 5.0
_REQUEST_TIMEOUT_S = 60.0
_MAX_ATTEMPTS = 3


def is_uri(value: Any) -> bool:
    """True for an object-store URI (`scheme://...`, except `file://`)."""
    if isinstance(value, StorePath):
        return True
    if not isinstance(value, str):
        return False
    return "://" in value and not value.startswith("file://")


def location(value: str | os.PathLike | StorePath) -> Path | StorePath:
    """A `Path` for a local path (`file://` stripped, `~` expanded) or a `StorePath` for an object-store URI."""
    if isinstance(value, StorePath):
        return value
    text = os.fspath(value)
    if is_uri(text):
        return StorePath(text)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser()


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_FS_CACHE: dict[tuple, Any] = {}
_FS_LOCK = threading.Lock()


def _s3_filesystem(bucket: str):
    import pyarrow.fs as pafs

    endpoint = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key = ("s3", bucket if not (endpoint or region) else "", endpoint, region)
    with _FS_LOCK:
        if key in _FS_CACHE:
            return _FS_CACHE[key]
    kwargs: dict[str, Any] = dict(connect_timeout=_CONNECT_TIMEOUT_S, request_timeout=_REQUEST_TIMEOUT_S,
                                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=_MAX_ATTEMPTS))
    if endpoint:
        parts = urlsplit(endpoint)
        kwargs["endpoint_override"] = parts.netloc or parts.path
        kwargs["scheme"] = parts.scheme or "https"
        kwargs["region"] = region or "us-east-1"
    elif region:
        kwargs["region"] = region
    else:
        try:
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        except OSError:
            kwargs["region"] = "us-east-1"  # the bucket check names the real problem
    fs = pafs.S3FileSystem(**kwargs)
    with _FS_LOCK:
        _FS_CACHE[key] = fs
    return fs


def filesystem_of(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path within it) of an object-store URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    path = (parts.netloc + parts.path).rstrip("/")
    if not parts.netloc:
        raise SlmscaleError(f"{uri}: expected scheme://bucket/prefix, got no bucket")
    if scheme in ("s3", "s3a"):
        return _s3_filesystem(parts.netloc), path
    import pyarrow.fs as pafs

    try:
        fs, fs_path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise SlmscaleError(f"{uri}: not a storage URI pyarrow can open ({exc})") from None
    return fs, fs_path.rstrip("/")


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime: float


class StorePath:
    """A file or folder (prefix) on an object store, with the part of `pathlib.Path` the project reads with.

    `str()` gives the URI. There is no `__fspath__`: passing one to `open()` or `os` functions fails loudly
    instead of creating a local folder named `s3:`."""

    __slots__ = ("scheme", "path", "_fs")

    def __init__(self, uri: str, *, _fs: Any = None, _scheme: str | None = None, _path: str | None = None):
        if _path is not None:
            self.scheme, self.path, self._fs = _scheme, _path, _fs
            return
        parts = urlsplit(uri)
        self.scheme = parts.scheme.lower()
        self.path = (parts.netloc + parts.path).rstrip("/")
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            self._fs = filesystem_of(str(self))[0]
        return self._fs

    # --- pure path operations -------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def _child(self, path: str) -> StorePath:
        return StorePath("", _fs=self._fs, _scheme=self.scheme, _path=path)

    def __truediv__(self, name: str | os.PathLike) -> StorePath:
        rel = os.fspath(name).strip("/")
        return self._child(posixpath.join(self.path, rel) if rel else self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> StorePath:
        head = posixpath.dirname(self.path)
        return self._child(head or self.path)

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def resolve(self) -> StorePath:
        return self

    def expanduser(self) -> StorePath:
        return self

    # --- queries --------------------------------------------------------------------------------------
    def _info(self):
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def stat(self) -> _Stat:
        info = self._info()
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return _Stat(st_size=int(info.size or 0), st_mtime=mtime)

    def iterdir(self) -> Iterator[StorePath]:
        import pyarrow.fs as pafs

        for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True)):
            yield self._child(info.path.rstrip("/"))

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """One level only (`step-*`, `*.json`): what the project's readers ask for."""
        if "/" in pattern or "**" in pattern:
            raise ValueError(f"StorePath.glob: one-level patterns only, got {pattern!r}")
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    def rglob_files(self) -> list[tuple[str, int]]:
        """(path relative to this folder, size) of every object below it."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        return [(posixpath.relpath(i.path, self.path), int(i.size or 0)) for i in infos if i.type == pafs.FileType.File]

    # --- reading and writing ----------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "r", encoding: str = "utf-8"):
        if mode in ("r", "rt"):
            return io.TextIOWrapper(io.BytesIO(self.read_bytes()), encoding=encoding)
        if mode == "rb":
            return io.BytesIO(self.read_bytes())
        raise ValueError(f"StorePath.open: read modes only, got {mode!r} (writes are whole objects: write_bytes)")

    def write_bytes(self, data: bytes) -> None:
        """One PUT: readers see the old object or the new one, never a part."""
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        import pyarrow.fs as pafs

        if self._info().type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders: a prefix exists once something is written under it."""


def upload(local: str | os.PathLike, dest: StorePath) -> None:
    """Copy a local file, or a folder's whole tree, to `dest` (pyarrow's multi-threaded copy)."""
    import pyarrow.fs as pafs

    pafs.copy_files(str(Path(local)), dest.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dest.fs)


def download(src: StorePath, local: str | os.PathLike) -> Path:
    """Copy an object, or everything under a prefix, to `local` (a folder is filled, not replaced)."""
    import pyarrow.fs as pafs

    local = Path(local)
    if src.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
    else:
        local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src.path, str(local), source_filesystem=src.fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def _aws_credentials_source() -> str | None:
    """Where AWS credentials would come from, or None when no source of the standard chain is present."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return "environment"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return "web identity"
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return "container credentials"
    for var, default in (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), ("AWS_CONFIG_FILE", "~/.aws/config")):
        if Path(env.get(var, default)).expanduser().is_file():
            return var
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        try:  # the instance profile: the metadata service answers on the link-local address
            with socket.create_connection(("169.254.169.254", 80), timeout=1.0):
                return "instance profile"
        except OSError:
            pass
    return None


def check_store(uri: str, *, what: str = "--storage") -> StorePath:
    """Refuse, in seconds and with the reason, a store this process cannot use: no credentials (S3), an endpoint
    that does not answer, a bucket that does not exist or cannot be read. Returns the `StorePath`."""
    import pyarrow.fs as pafs

    store = StorePath(uri)
    s3 = store.scheme in ("s3", "s3a")
    if s3 and _aws_credentials_source() is None:
        raise SlmscaleError(
            f"{what} {uri}: no AWS credentials found (expected AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, "
            f"AWS_PROFILE / ~/.aws/credentials, web identity or an instance profile on every node)")
    where = f" at {_endpoint()}" if s3 and _endpoint() else ""
    try:
        info = store.fs.get_file_info(store.bucket)
    except OSError as exc:
        raise SlmscaleError(f"{what} {uri}: the object store{where} could not be reached or refused access "
                            f"({str(exc).splitlines()[0][:300]}); expected a reachable endpoint and credentials "
                            f"that may read and write the bucket") from None
    if info.type == pafs.FileType.NotFound:
        raise SlmscaleError(f"{what} {uri}: bucket {store.bucket!r} does not exist{where}; create it first "
                            f"(slmscale never creates buckets)")
    return store
