"""Ray Data settings shared by the tokenization commands."""
from __future__ import annotations

from contextlib import contextmanager


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
