"""Starting or joining Ray the same way in every stage, and checking a cluster address before waiting on it.

Part of the `slmscale` core, which imports no stage.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator

from slmscale.errors import SlmscaleError

__all__ = ["ensure_ray", "check_address"]

# Ray's own switch for "this machine is a one-node cluster" (on by default only on macOS and Windows). Off, Ray
# takes 127.0.0.1 as the node's address instead of the LAN address, and then its GCS, raylet, object manager,
# workers and agents bind loopback only (each binds 127.0.0.1 when the node address is loopback).
_ONE_NODE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# The HTTP/2 client preface and an empty SETTINGS frame. A gRPC server (Ray's GCS, the Ray Client server) answers
# with a SETTINGS frame of its own; an HTTP/1 server (the dashboard on 8265) or any other service does not.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


def _host_port(address: str, flag: str) -> tuple[str, int]:
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SlmscaleError(f"{flag} {address!r}: expected HOST:PORT, ray://HOST:PORT or 'auto'")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def check_address(address: str | None, timeout_s: float = 5.0, flag: str = "--address") -> None:
    """Fail in seconds, not minutes, when `address` (HOST:PORT or ray://HOST:PORT) names no Ray cluster.

    `ray.init(address=...)` retries a GCS that does not answer for minutes, inside Ray's C++ client where the
    Python SIGTERM handler Ray installs never runs, so the process cannot even be stopped politely. Here a TCP
    connect tells at once whether anyone listens, and an HTTP/2 greeting whether it speaks gRPC like Ray's GCS
    (not, say, the dashboard's port 8265). With Ray's TLS on ($RAY_USE_TLS) only the connect is checked.
    None, 'auto' and 'local' are left to Ray. `flag` names the setting in the error ('--address', '$RAY_ADDRESS').
    """
    if not address or address in ("auto", "local"):
        return
    host, port = _host_port(address, flag)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            conn.sendall(_HTTP2_HELLO)
            reply = b""
            with contextlib.suppress(OSError):  # a reset or a timeout: no gRPC answer, judged below
                while len(reply) < 9:
                    got = conn.recv(9 - len(reply))
                    if not got:
                        break
                    reply += got
    except OSError as exc:
        raise SlmscaleError(
            f"could not reach a Ray cluster at {flag} {address!r}: {exc.strerror or exc}; expected a running Ray head "
            f"(`ray start --head` or `ray up cluster.yaml`; from outside the cluster use an SSH tunnel)"
        ) from None
    if len(reply) < 9 or reply[3] != _HTTP2_SETTINGS:
        raise SlmscaleError(
            f"could not reach a Ray cluster at {flag} {address!r}: something listens there but does not speak gRPC "
            f"like a Ray head; expected the GCS port that `ray start --head` prints (6379 by default), not e.g. "
            f"the dashboard's 8265"
        )


@contextlib.contextmanager
def _one_node_ray() -> Iterator[None]:
    """While Ray starts (or joins a loopback address): node address 127.0.0.1, so nothing binds a public interface.

    Ray reads the switch from the environment when it is imported and again in every process it starts; both
    are set here and restored afterwards (the processes already started keep it), so nothing else in this
    process, such as a later `ray start` in a subprocess, sees a changed environment."""
    import ray._private.ray_constants as ray_constants

    saved_env = os.environ.get(_ONE_NODE_SWITCH)
    saved_constant = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_ONE_NODE_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_ONE_NODE_SWITCH, None)
        else:
            os.environ[_ONE_NODE_SWITCH] = saved_env
        if saved_constant is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_constant


def _token_auth_like_ray_start() -> None:
    """Join with Ray's token authentication on when this machine has a token (~/.ray/auth_token) and RAY_AUTH_MODE
    is unset: what `ray start` decided for a cluster started here, which a plain `ray.init(address=...)` does not
    do by itself in Ray 2.60 (it would be refused by such a cluster). RAY_AUTH_MODE, when set, is respected."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local Ray if none is running.

    The address is checked first (`check_address`), so a wrong one is a one-line error within seconds. A local
    instance listens on loopback only (GCS, raylet, workers, agents and the metrics endpoints on 127.0.0.1: no
    other machine can reach it, and none can join it), has no dashboard web UI, and logs quietly.
    """
    import ray

    if ray.is_initialized():
        return
    flag = "--address"
    if not address and os.environ.get("RAY_ADDRESS"):
        address, flag = os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
    if not address:  # what ray.init() would join: a cluster started with `ray start` on this machine, if any
        from ray._private.services import canonicalize_bootstrap_address

        address, flag = canonicalize_bootstrap_address(None), "the running Ray (/tmp/ray/ray_current_cluster)"
    kwargs = dict(log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address and address != "local":
        check_address(address, flag=flag)
        _token_auth_like_ray_start()
        # Ray rewrites a loopback address to this machine's LAN address, where a loopback-only head does not listen
        loopback = address != "auto" and _is_loopback(_host_port(address, flag)[0])
        try:
            with _one_node_ray() if loopback else contextlib.nullcontext():
                ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, TimeoutError, ValueError from ray
            raise SlmscaleError(f"could not reach a Ray cluster at {flag} {address!r}: {exc}") from None
        return
    with _one_node_ray():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
