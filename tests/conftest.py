"""Shared fixtures: an S3 server (moto) on 127.0.0.1, Ray in this process or as a two-node local
cluster, and tiny model bundles. Ray always runs with token authentication on, its token in a
temporary file, so no test touches ``~/.ray`` or another process's cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ra2batch.storage import Location, resolve

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_token_env(directory: Path) -> dict[str, str]:
    """Environment that makes Ray use token authentication with a token file in ``directory``."""
    token = directory / "auth_token"
    if not token.exists():
        directory.mkdir(parents=True, exist_ok=True)
        token.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


# Ray reads its authentication settings when it is first imported, and test modules (training,
# nightly, benchmarks) import Ray while they are collected: so the session's token is set here,
# before any of them, and every in-process Ray of the session uses it.
os.environ.update(ray_token_env(Path(tempfile.mkdtemp(prefix="ra2-auth-"))))


# -- S3 ------------------------------------------------------------------------------------------


@dataclass
class S3Bucket:
    """A fresh bucket on the test's S3 server; ``options`` are ra2batch storage options for it."""

    uri: str
    options: dict[str, str]

    def location(self, *parts: str) -> Location:
        return resolve("/".join([self.uri, *parts]), self.options)

    def upload(self, local: Path, prefix: str) -> str:
        """Copy a file or a folder tree to ``prefix``; returns its ``s3://`` URI."""
        dest = self.location(prefix)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for f in files:
            dest.write_bytes(f.read_bytes(), *([] if local.is_file() else [f.relative_to(local).as_posix()]))
        return dest.uri


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a moto S3 server running for the whole session.

    The server is a process of its own: delta-rs holds the GIL during some calls (restore, history),
    which would stall a server thread inside the test process until the call timed out.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint) -> S3Bucket:
    import boto3

    name = f"ra2-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing", "region": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=name)
    return S3Bucket(f"s3://{name}", options)


# -- Ray -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """Ray started in this process (2 CPUs, token auth on with the session's token), shared by the
    session's tests."""
    import ray

    # address="local": never the cluster another process recorded on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             log_to_driver=False)
    yield ray
    ray.shutdown()


@dataclass
class RayCluster:
    """A local multi-node cluster: ``address`` for ``ray job submit``, ``env`` to reach it,
    ``ray`` the command-line tool."""

    address: str
    env: dict[str, str]
    ray: str = RAY


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_nodes(env: dict[str, str], gcs: str, n: int, procs, logs, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        dead = [log for p, log in zip(procs, logs) if p.poll() is not None]
        if dead:
            raise RuntimeError(f"ray node exited early: {dead[0].read_text()[-2000:]}")
        r = subprocess.run([RAY, "status", "--address", gcs], env=env, capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.count("node_") >= n:
            return
        time.sleep(2)
    raise RuntimeError(f"the local ray cluster did not reach {n} nodes in {timeout:.0f} s")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A head and a worker node (2 CPUs each) on this machine, each in its own process group,
    with token authentication on and ports of their own; stopped by killing exactly those groups.

    Ray's temp dir is a short path under /tmp (its unix socket paths must stay under 108 bytes) and
    its own: ``RAY_TMPDIR`` in ``env`` makes it this machine's Ray to every process run with ``env``
    (``ray start`` records the head there), and no other cluster's.
    """
    root = Path(tempfile.mkdtemp(prefix="ra2c", dir="/tmp"))
    env = {**os.environ, "HOME": str(root), "RAY_TMPDIR": str(root), **ray_token_env(root / "auth"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    gcs = f"127.0.0.1:{port}"
    logs = [root / "head.log", root / "worker.log"]
    def node() -> list[str]:
        return ["--num-cpus", "2", "--object-store-memory", str(400 * 2**20), "--node-ip-address", "127.0.0.1",
                "--dashboard-agent-listen-port", str(free_port())]

    procs = [_start_node(["--head", "--port", str(port), "--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1",
                          "--ray-client-server-port", str(free_port()), "--temp-dir", str(root / "ray"), *node()],
                         env, logs[0])]
    try:
        _wait_for_nodes(env, gcs, 1, procs, logs[:1])
        procs.append(_start_node(["--address", gcs, *node()], env, logs[1]))
        _wait_for_nodes(env, gcs, 2, procs, logs)
        yield RayCluster(address=f"http://127.0.0.1:{dash}", env=env)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


# -- models --------------------------------------------------------------------------------------


def _save_tiny_bundle(uri: str, foot_min_score: float) -> str:
    from ra2batch import catalogue
    from ra2batch.models import PLAN, DetectorConfig, JointHeadConfig, build_bundle

    det = DetectorConfig(backbone="mobilenet_v3_fpn_narrow", min_size=96, max_size=128, min_score=0.0)
    bundle = build_bundle(
        # one tall group, so every stage handles crops that are not square
        PLAN.variant(backbones="test_efficientnet", crop_sizes=48).variant(
            crop_sizes={"erosion_fingers": 64}, crop_widths={"erosion_fingers": 32}),
        {"hand": det, "foot": det.model_copy(update={"min_score": foot_min_score})},
        joint_head=JointHeadConfig(attention_widths=(8,), dense_width=8),
    )
    medians = {c: float(i % 3) for i, c in enumerate(catalogue.COLUMNS)}
    bundle.save(uri, label_medians=medians)
    return uri


@pytest.fixture(scope="session")
def tiny_bundle_factory(tmp_path_factory):
    """``make(foot_min_score=0.0) -> path`` of an untrained bundle of the smallest models.

    ``min_score`` 0 makes a detector report its best box for every class, so every joint is scored;
    a ``foot_min_score`` above what an untrained detector reaches (about 0.01) finds nothing in feet.
    """
    import torch

    def make(foot_min_score: float = 0.0) -> str:
        torch.manual_seed(0)
        return _save_tiny_bundle(str(tmp_path_factory.mktemp("bundle")), foot_min_score)

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_factory) -> str:
    return tiny_bundle_factory()


@pytest.fixture(scope="module")
def warm_pool(ray_local, tiny_bundle):
    """A warm model pool for the tiny bundle, for a module's tests that are about what happens after
    the models: jobs with that bundle score on it and skip the model actors' start-up (about 5 s a
    run on 2 cores). Stopped when the module ends."""
    from ra2batch.job import JobConfig
    from ra2batch.job.model_pool import start_pool, stop_pools
    from ra2batch.models import load_bundle

    version = load_bundle(tiny_bundle, parts=()).model_version
    start_pool(tiny_bundle, None, version, JobConfig(detector_actors=1, actor_cpus=0.5), progress=lambda m: None)
    yield
    stop_pools()
