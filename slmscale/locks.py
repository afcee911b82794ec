"""Exclusive, stale-safe locks on a folder: one writer per run directory and per sweep storage.

    with exclusive_lock(run_dir / ".lock", what="run directory runs/x"):
        ...  # every check and every write of the run

The lock is an advisory `flock` on a lock file that is never deleted. The kernel drops it when the holder's
process ends in any way (exit, exception, SIGKILL, OOM kill), so a dead holder cannot block anyone: there is no
lease to expire and nothing to clean up. On NFSv4 the server drops it when the holder's client stops renewing
its lease (a lost node), after the lease period (90 s by default). The holder writes its host, pid, start time
and command line into the file, so a refusal can say who holds it.

Part of the `slmscale` core, which imports no stage.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from slmscale.errors import SlmscaleError

__all__ = ["exclusive_lock", "locked_folder", "store_lease", "LockHeld"]


class LockHeld(SlmscaleError):
    """Another live process holds the lock."""


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {started} ({info.get('command', '?')})"


# Locks this process holds (resolved path -> depth): taking one again in the same process (a sweep trial holds
# its run directory, then calls `train`, which takes it too) nests instead of refusing itself.
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, what: str, wait: float = 0.0) -> Iterator[Path]:
    """Hold an exclusive lock on `lock_file` (created if needed) for the `with` block; raise `LockHeld` naming
    `what` and the holder if another live process holds it, at once or after waiting up to `wait` seconds
    (e.g. for another trial staging the same dataset on this node). Re-entrant within a process."""
    lock_file = Path(lock_file).resolve()
    if lock_file in _HELD:
        _HELD[lock_file] += 1
        try:
            yield lock_file
        finally:
            _HELD[lock_file] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise LockHeld(
                    f"{what} is in use by {_holder(lock_file)}; expected no other writer (wait for it to finish, or "
                    f"stop it: a stopped or killed holder releases {lock_file} at once)"
                ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[lock_file] = 1
        try:
            yield lock_file
        finally:
            del _HELD[lock_file]
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike, lock_name: str, what: str) -> Iterator[Path]:
    """`exclusive_lock(folder / lock_name)`, creating `folder` if needed. When the block fails and the folder was
    created here and holds nothing but the lock file, the folder is removed again: a refused command leaves no
    empty run directory or sweep storage behind."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        with exclusive_lock(folder / lock_name, what):
            yield folder
    except BaseException:
        if created and folder.is_dir() and [p.name for p in folder.iterdir()] == [lock_name]:
            with contextlib.suppress(OSError):
                (folder / lock_name).unlink()
                folder.rmdir()
        raise


def _dead_here(info: dict) -> bool:
    """The lease's holder was a process of this host, and that process is gone."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextlib.contextmanager
def store_lease(lease, what: str, ttl: float = 60.0, settle: float = 2.0) -> Iterator[object]:
    """One holder of an object-store prefix (a sweep storage at s3://...), where there is no flock: a lease
    object naming its holder and an expiry, renewed every ttl/4 s by a thread while the block runs.

    Taking it: a live lease of someone else refuses at once (`LockHeld`, naming the holder); a lease whose holder
    was a process of this host that is gone (a killed driver, resumed from the same machine) is taken over at
    once, as a flock would be; otherwise ours is written, and read back after `settle` s: S3 and GCS are strongly read-after-write consistent, so of two
    takers in the same instant both read the same last writer and the other one backs off. A killed holder's
    lease expires `ttl` s after its last renewal (clocks of the hosts are assumed to agree within seconds).
    `lease` is a `slmscale.objstore.StorePath`."""
    import threading
    import uuid

    def read() -> dict:
        try:
            return json.loads(lease.read_text())
        except (OSError, FileNotFoundError, json.JSONDecodeError):
            return {}

    def holder(info: dict) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return f"pid {info.get('pid')} on {info.get('host')} since {started} ({info.get('command', '?')})"

    current = read()
    if current and current.get("expires", 0) > time.time() and not _dead_here(current):
        raise LockHeld(f"{what} is in use by {holder(current)} (lease {lease}, renewed until "
                       f"{time.strftime('%H:%M:%S', time.localtime(current['expires']))}); expected no other driver "
                       f"(wait for it to finish, or stop it: a killed driver's lease expires within {ttl:.0f} s)")
    token = uuid.uuid4().hex
    info = {"token": token, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}

    def write() -> None:
        lease.write_text(json.dumps({**info, "expires": time.time() + ttl}))

    write()
    time.sleep(settle)
    if read().get("token") != token:
        raise LockHeld(f"{what}: another driver took the lease at the same moment ({holder(read())}); expected one "
                       f"driver per storage")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 4):
            with contextlib.suppress(Exception):
                if read().get("token") in (token, None):
                    write()

    thread = threading.Thread(target=renew, name="slmscale-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            if read().get("token") == token:
                lease.unlink(missing_ok=True)
