"""Shared fixtures. Tests create all data they need (audio, units, models) in temp dirs; nothing is downloaded."""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Object storage in tests: a real S3 server (moto's standalone server) on loopback, started by the `s3` fixture
# on first use. Its endpoint and (fake) credentials are set here, before any Ray instance starts, because Ray
# workers inherit the environment of the process that starts Ray: trials reach the store the way cluster nodes
# do, through the standard AWS_* variables. No test ever talks to a real cloud store.
if "SLMSCALE_TEST_S3_PORT" not in os.environ:  # once per session: this file is imported as conftest and tests.conftest
    os.environ["SLMSCALE_TEST_S3_PORT"] = str(_free_port())
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{os.environ['SLMSCALE_TEST_S3_PORT']}",
        "AWS_ACCESS_KEY_ID": "slmscale-test", "AWS_SECRET_ACCESS_KEY": "slmscale-test",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    for _var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        os.environ.pop(_var, None)
    # Node-local scratch of object-store runs and staged datasets (models/mirror.py): one per test session.
    os.environ["SLMSCALE_SCRATCH"] = tempfile.mkdtemp(prefix="slmscale-test-scratch-")
    atexit.register(shutil.rmtree, os.environ["SLMSCALE_SCRATCH"], ignore_errors=True)
S3_PORT = int(os.environ["SLMSCALE_TEST_S3_PORT"])
S3_BUCKET = "slmscale-tests"


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 (the endpoint in AWS_ENDPOINT_URL) with bucket S3_BUCKET; yields
    `new_prefix(name) -> "s3://slmscale-tests/<name>-<n>"`, a fresh prefix per call."""
    import itertools

    import pyarrow.fs as pafs

    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            if server.poll() is not None:
                raise AssertionError("moto_server exited; is moto[server] installed (dev extra)?")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", S3_PORT)) == 0
        wait_for(up, 60, "the moto S3 server")
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{S3_PORT}", scheme="http", allow_bucket_creation=True,
                               region="us-east-1")
        fs.create_dir(S3_BUCKET)
        counter = itertools.count()
        yield lambda name: f"s3://{S3_BUCKET}/{name}-{next(counter)}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard) shared by every test that asks for it, on loopback only like
    every local Ray slmscale starts (slmscale/ray_utils.py), and never joining another Ray on this machine."""
    import ray

    from slmscale.ray_utils import _one_node_ray

    if not ray.is_initialized():
        with _one_node_ray():
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     object_store_memory=1 << 30)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def chinchilla_csv() -> Path:
    return REPO / "analysis" / "data" / "chinchilla_epoch_svg_extracted.csv"


def wait_for(condition, timeout: float, what: str):
    """Poll `condition()` every 50 ms until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
