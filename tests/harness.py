"""A Ray cluster whose worker nodes cannot see the driver's files, and an S3 API on loopback.

The head (no CPUs: work lands on the workers) runs beside the driver. Each worker node runs
``ray start --block`` inside its own mount namespace (``unshare -m``) with a tmpfs over the
checkout's source, ``artifacts/`` and ``data/``, the IDX mirror, the tests' temporary
directories and ``/tmp/ray``, and a node IP of its own (127.0.0.N): the same Python
environment, none of the driver's files, as on an image-based cluster. Object storage is
``moto_server`` (a real S3 API) on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
BUCKET = "dgm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unshare_available() -> str | None:
    """None when private mount namespaces work here, else why not."""
    if shutil.which("unshare") is None:
        return "the unshare command is missing"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -m with a tmpfs mount is not permitted: {probe.stderr.strip()}"
    return None


def _kill_group(process: subprocess.Popen) -> None:
    """Signal the process group (``ray start`` and the raylet, agents it started)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class IsolatedCluster:
    """A head and ``workers`` isolated 1-CPU nodes; :attr:`env` is what a driver needs."""

    hidden: list[Path]
    logs: Path
    workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[subprocess.Popen] = field(default_factory=list)
    head: subprocess.Popen | None = None
    s3: subprocess.Popen | None = None

    def _spawn(self, args: list[str], log: str, env: dict[str, str]) -> subprocess.Popen:
        out = open(self.logs / log, "wb")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def start(self) -> IsolatedCluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        s3_port, gcs_port, dashboard = free_port(), free_port(), free_port()
        aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        base = {**os.environ, **aws, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        base.pop("RAY_ADDRESS", None)
        self.s3 = self._spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                              "moto.log", base)
        self.head = self._spawn(
            [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "0",
             "--port", str(gcs_port), "--dashboard-port", str(dashboard),
             "--include-dashboard", "true", "--disable-usage-stats",
             # its own agent ports: beside another Ray (the suite's) the defaults are taken,
             # and without an agent the head accepts no `ray job submit`
             "--dashboard-agent-listen-port", str(free_port()),
             "--dashboard-agent-grpc-port", str(free_port())], "head.log", base)
        ip = _wait_for_head(self.logs / "head.log", self.head)
        address = f"{ip}:{gcs_port}"
        for index in range(self.workers):
            self.nodes.append(self._spawn(self._node_command(address, index), f"node{index}.log",
                                          {**base, "TMPDIR": "/tmp/ray"}))
        self.env = {**aws, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "DGM_TEST_DASHBOARD": f"http://127.0.0.1:{dashboard}"}
        _wait(lambda: _s3_up(aws["AWS_ENDPOINT_URL"]), 30, "moto_server")
        import boto3

        boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test"
                     ).create_bucket(Bucket=BUCKET)
        _wait(lambda: self.alive_workers() == self.workers, 90, "the worker nodes")
        return self

    def _node_command(self, address: str, index: int) -> list[str]:
        """``ray start`` in a private mount namespace with the driver's files hidden."""
        # 194 worker ports a node (Ray Data starts many worker processes), below the
        # ephemeral range; the driver's pid keeps concurrent harnesses apart
        base_port = 20000 + 5000 * index + (os.getpid() % 25) * 200
        hide = " ".join(f"mount -t tmpfs none {p};" for p in self.hidden)
        ports = (f"--node-manager-port {base_port} --object-manager-port {base_port + 1} "
                 f"--metrics-export-port {base_port + 2} "
                 f"--dashboard-agent-listen-port {base_port + 3} "
                 f"--dashboard-agent-grpc-port {base_port + 4} "
                 f"--runtime-env-agent-port {base_port + 5} "
                 f"--min-worker-port {base_port + 6} --max-worker-port {base_port + 199}")
        start = (f"exec {BIN / 'ray'} start --address {address} --node-ip-address "
                 f"127.0.0.{index + 2} --num-cpus 1 --block --disable-usage-stats {ports}")
        return ["unshare", "-m", "bash", "-c", f"set -e; {hide} {start}"]

    def node_table(self) -> list[dict]:
        """The alive nodes (``NodeID``, ``NodeManagerAddress``), asked by a fresh driver."""
        import json

        done = subprocess.run(
            [str(BIN / "python"), "-c",
             "import json, ray; ray.init(logging_level='ERROR'); print(json.dumps([{k: n[k] "
             "for k in ('NodeID', 'NodeManagerAddress')} for n in ray.nodes() if n['Alive']]))"],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            return []
        return json.loads(done.stdout.strip().splitlines()[-1])

    def alive_workers(self) -> int:
        return sum(1 for n in self.node_table() if n["NodeManagerAddress"].startswith("127.0.0."))

    def kill_node(self, index: int) -> None:
        """A crash of worker node ``index``: SIGKILL to every process in its mount namespace
        (Ray's workers run in process groups of their own, and outlive their raylet for a
        while)."""
        process = self.nodes[index]
        namespace = os.readlink(f"/proc/{process.pid}/ns/mnt")
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if os.readlink(proc / "ns/mnt") == namespace:
                        os.kill(int(proc.name), signal.SIGKILL)
                except OSError:  # gone already
                    pass
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in [*self.nodes, self.head, self.s3]:
            if process is not None:
                _kill_group(process)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout:g} s")


def _wait_for_head(log: Path, process: subprocess.Popen) -> str:
    """The head's node IP, once it is up (from its log)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.is_file() else ""
        for line in text.splitlines():
            if "Local node IP" in line:
                return line.rsplit(":", 1)[-1].strip().replace("\x1b[1m", "").split("\x1b")[0]
        if process.poll() is not None:
            raise RuntimeError(f"ray start --head exited: {text[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError("the Ray head did not come up")


def _s3_up(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=1):
            return True
    except OSError:
        return False
