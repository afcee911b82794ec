"""Starting or joining Ray the same way in every stage."""
from __future__ import annotations

import os

from slmscale.errors import SlmscaleError

__all__ = ["ensure_ray"]


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local Ray if none is running.

    A local instance gets no dashboard (nothing listens on a public interface) and quiet logs.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address:
        try:
            ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
        except Exception as exc:  # ConnectionError, TimeoutError, ValueError from ray
            raise SlmscaleError(f"could not reach a Ray cluster at --address {address!r}: {exc}") from None
        return
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
