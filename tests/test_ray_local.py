"""slmscale/ray_utils.py: a local Ray listens on loopback only; a wrong cluster address fails in seconds."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slmscale.errors import SlmscaleError
from slmscale.ray_utils import check_address

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: the session's Ray (tests/conftest.py) would make ensure_ray a no-op here.
_LOCAL_RAY_SCRIPT = r"""
import json, os, subprocess, sys
from slmscale.ray_utils import ensure_ray
ensure_ray(num_cpus=1)
import psutil  # Ray's vendored copy, importable once ray is
import ray

ray.get(ray.remote(lambda: 1).remote())  # so that a worker process listens too
names = {}
for proc in psutil.Process().children(recursive=True):
    try:
        names[proc.pid] = proc.name()
    except psutil.Error:
        pass
names[os.getpid()] = "driver"
listening = [(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections(kind="inet")
             if c.pid in names and c.status == psutil.CONN_LISTEN]
gcs = ray.get_runtime_context().gcs_address
join = subprocess.run(
    [sys.executable, "-c", "from slmscale.ray_utils import ensure_ray; ensure_ray(); import ray; "
                           "print(ray.cluster_resources()['CPU'])"],
    env={**os.environ, "RAY_ADDRESS": gcs}, capture_output=True, text=True, timeout=120)
print(json.dumps({"gcs": gcs, "listening": listening, "join_rc": join.returncode,
                  "join_out": join.stdout.strip(), "join_err": join.stderr[-1500:]}))
ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only_and_can_be_joined_there():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.run([sys.executable, "-c", _LOCAL_RAY_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {name for _, _, name in got["listening"]}
    # GCS, raylet, the driver's and a worker's gRPC servers, agents: enough that "none public" is not vacuous
    assert {"gcs_server", "raylet", "driver"} <= names and len(got["listening"]) >= 5, got["listening"]
    public = [(ip, port, name) for ip, port, name in got["listening"] if not _loopback(ip)]
    assert public == [], f"listening beyond loopback: {public}"
    assert got["gcs"].startswith("127.0.0.1:")
    # another process joins it through the loopback address (Ray alone would rewrite it to the LAN address)
    assert got["join_rc"] == 0 and got["join_out"] == "1.0", got["join_err"]


def _serve(reply: bytes | None) -> tuple[socket.socket, int]:
    """A listener on a free loopback port that answers every connection with `reply` (None: says nothing)."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if reply is None:
                held.append(conn)  # keep it open and silent
            else:
                with conn:
                    conn.recv(1024)
                    conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_check_address_fails_fast_on_nothing_or_not_ray():
    closed = socket.create_server(("127.0.0.1", 0))
    free_port = closed.getsockname()[1]
    closed.close()
    web, web_port = _serve(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # like the dashboard's 8265
    silent, silent_port = _serve(None)
    try:
        cases = [(f"127.0.0.1:{free_port}", "Connection refused"),
                 (f"127.0.0.1:{web_port}", "does not speak gRPC"),
                 (f"ray://127.0.0.1:{silent_port}", "does not speak gRPC")]
        for address, why in cases:
            start = time.monotonic()
            with pytest.raises(SlmscaleError, match="could not reach a Ray cluster") as exc:
                check_address(address, timeout_s=1.0)
            assert time.monotonic() - start < 5 and why in str(exc.value) and "\n" not in str(exc.value)
    finally:
        web.close()
        silent.close()
    for bad in ("nohost", "host:port", "h:0", "h:70000"):
        with pytest.raises(SlmscaleError, match="expected HOST:PORT"):
            check_address(bad, flag="$RAY_ADDRESS")
    for left_to_ray in (None, "", "auto", "local"):
        check_address(left_to_ray)


@pytest.mark.ray
def test_check_address_accepts_a_ray_head(ray_local):
    check_address(ray_local.get_runtime_context().gcs_address, timeout_s=5.0)
