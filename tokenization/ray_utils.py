"""Starting or joining Ray the same way in every stage."""
from __future__ import annotations

import os
from contextlib import contextmanager

from analysis.io import SlmscaleError


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


@contextmanager
def quiet_ray_data():
    """Ray Data without its own console chatter, for commands that show their own tqdm bar.

    Ray Data's progress bars are turned off (they would interleave with ours), and so are the INFO lines it prints
    when an execution starts and ends (the plan is recorded in meta.json instead). Its warnings stay visible.
    Everything is restored on exit.
    """
    import logging

    import ray.data
    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    executor_log = logging.getLogger("ray.data._internal.execution.streaming_executor")
    saved_level = executor_log.level
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    log_once("ray_data_progress_manager_disabled")  # marks Ray's "Progress bars disabled" notice as already shown
    executor_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        executor_log.setLevel(saved_level)
