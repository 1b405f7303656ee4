"""A real two-node Ray cluster on this machine, joined the way docs/cluster.md tells a user to.

``ray start --head`` and a second ``ray start --address=...`` (each with its own temp dir, 1 CPU, no
dashboard, a small object store), both with token authentication on (``RAY_AUTH_MODE=token`` and one token
file, as on a real cluster); then ``annotator annotate ... --engine ray --address HOST:PORT`` as a
subprocess, whose output files must be byte-identical to ``--engine local`` on the same inputs; and a driver
without the token, which must get one line saying what to do (``pipelines.ray_session``).

The nodes use loopback addresses only (head 127.0.0.2, worker 127.0.0.1: Ray turns "127.0.0.1" into the
machine's outward address, any other 127.x it keeps), their own temp dirs (so a plain ``ray.init()`` of
another test never finds this cluster) and free ports. Each ``ray start`` runs in its own process group,
which the fixture kills at the end: never ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotator.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.1"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 420


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_cli() -> str | None:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.is_file() else shutil.which("ray")


def _base_env() -> dict[str, str]:
    """This process's environment without any Ray address / auth setting (a local ray.init() in an earlier
    test sets RAY_AUTH_MODE=token in os.environ), plus what every process of the cluster tests shares."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        YOLO_OFFLINE="1",
        YOLO_AUTOINSTALL="False",
        YOLO_VERBOSE="False",
    )
    return env


class _Cluster:
    def __init__(self, root: Path, token_file: Path) -> None:
        self.root, self.token_file = root, token_file
        self.groups: list[int] = []
        self.address = ""

    @property
    def env(self) -> dict[str, str]:
        """The environment of every node and of the driver: token mode on, the cluster's token file."""
        return {**_base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def start(self, ray: str, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [ray, "start", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.groups.append(proc.pid)  # its daemons (gcs_server, raylet, agents) stay in this process group
        try:
            rc = proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            raise RuntimeError(f"`ray start` ({name}) ended with {rc}:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = []
            for pgid in self.groups:
                try:
                    os.killpg(pgid, sig)
                    alive.append(pgid)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while alive and time.monotonic() < deadline:
                alive = [g for g in alive if _group_alive(g)]
                time.sleep(0.2)
            if not alive:
                break


def _group_alive(pgid: int) -> bool:
    """True while a process of the group is still running (zombies waiting for init do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture(scope="module")
def cluster():
    ray = _ray_cli()
    if ray is None:
        pytest.skip("the `ray` command is not installed")
    # short: Ray's socket paths (<temp dir>/session_.../sockets/...) must stay under 108 characters
    root = Path(tempfile.mkdtemp(prefix="anncl-", dir="/tmp"))
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    c = _Cluster(root, token_file)
    port, dash_h, agent_h, dash_w, agent_w = _free_ports(5)
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    try:
        c.start(ray, "head", [
            "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", f"--temp-dir={root / 'head'}",
            "--include-dashboard=false", f"--dashboard-port={dash_h}", f"--dashboard-agent-listen-port={agent_h}",
            *common,
        ])  # fmt: skip
        c.address = f"{HEAD_IP}:{port}"
        c.start(ray, "worker", [
            f"--address={c.address}", f"--temp-dir={root / 'worker'}", f"--dashboard-port={dash_w}",
            f"--dashboard-agent-listen-port={agent_w}", *common,
        ])  # fmt: skip
        _wait_for_nodes(c, 2)
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    nodes = [(n["NodeManagerAddress"], n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= int(sys.argv[3]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(sorted(nodes)))
"""


def _wait_for_nodes(c: _Cluster, n: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NODES, c.address, "60", str(n)],
        env=c.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    nodes = json.loads(out.stdout.strip().splitlines()[-1])
    assert nodes == sorted([[HEAD_IP, 1.0], [WORKER_IP, 1.0]]), f"expected a head and a worker node, got {nodes}"


@pytest.fixture(scope="module")
def cluster_inputs(tmp_path_factory) -> Path:
    """3 images with shapes (the trained detector finds them, so masks are compared), 1 plain, 1 broken."""
    root = tmp_path_factory.mktemp("cluster") / "shapes"
    write_synthetic_dataset(root, 3, seed=5, image_hw=(256, 256), n_objects=(1, 2), empty_fraction=0.0, labels=None)
    images = root / "images"
    (images / "sub").mkdir(exist_ok=True)
    cv2.imwrite(str(images / "sub" / "plain.png"), np.full((128, 160, 3), 127, np.uint8))
    (images / "broken.jpg").write_bytes(b"this is text, not a JPEG")
    return images


def _output_files(d: Path) -> dict[str, bytes]:
    """Every output file but the run report (timings, engine name) and the ledger folder."""
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and ".annotator" not in p.parts and p.name != "run_report.json"
    }


def _annotate(data: Path, out: Path, det: Path, sam: Path, env: dict[str, str], *extra: str):
    cmd = [
        sys.executable, "-m", "annotator", "annotate", str(data), "--det-model", str(det), "--sam-model", str(sam),
        "--device", "cpu", "--format", "both", "--batch-size", "2", "--sam-min-score", "0", "--quiet",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def test_two_node_cluster_writes_the_local_engines_bytes(
    cluster, cluster_inputs, shapes_detector, sam2_t_ckpt, tmp_path
):
    local = _annotate(
        cluster_inputs, tmp_path / "local", shapes_detector, sam2_t_ckpt, _base_env(), "--engine", "local"
    )
    assert local.returncode == 1, local.stdout + local.stderr  # 1: broken.jpg failed, the rest annotated
    ray_run = _annotate(
        cluster_inputs, tmp_path / "ray", shapes_detector, sam2_t_ckpt, cluster.env,
        "--engine", "ray", "--address", cluster.address,
    )  # fmt: skip
    assert ray_run.returncode == 1, ray_run.stdout + ray_run.stderr[-4000:]
    local_files, ray_files = _output_files(tmp_path / "local"), _output_files(tmp_path / "ray")
    assert b'"segmentation"' in local_files["annotations.json"], "the comparison needs masks to compare"
    assert sorted(ray_files) == sorted(local_files)
    for name, data in local_files.items():
        assert ray_files[name] == data, f"{name} differs from the local engine's"
    local_report, ray_report = (json.loads((tmp_path / d / "run_report.json").read_text()) for d in ("local", "ray"))
    assert ray_report["settings"]["engine"] == "ray" and ray_report["settings"]["ray"]["address"] == cluster.address
    assert ray_report["summary"]["status_counts"] == local_report["summary"]["status_counts"]


_JOIN = """
import sys
from pipelines.ray_session import ray_session
try:
    with ray_session(sys.argv[1], num_cpus=None, runtime_env=None, quiet=True, forwarded_env=("YOLO_OFFLINE",)) as ray:
        print("JOINED", int(ray.cluster_resources().get("CPU", 0)))
except Exception as e:
    print(f"{type(e).__name__}: {e}")
"""


def _join(address: str, env: dict[str, str]) -> tuple[str, float]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _JOIN, address], env=env, cwd=REPO, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip(), time.monotonic() - t0


def test_driver_with_the_token_joins_both_nodes(cluster):
    line, _ = _join(cluster.address, cluster.env)
    assert line == "JOINED 2"


@pytest.mark.parametrize(
    "auth",
    [
        {"RAY_AUTH_MODE": "disabled"},  # the case: the head enables tokens, this process does not
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-cluster-token"},
    ],
    ids=["no-token-mode", "wrong-token"],
)
def test_driver_without_the_token_gets_one_line(cluster, auth, tmp_path):
    env = {**_base_env(), "HOME": str(tmp_path), **auth}  # HOME: no ~/.ray/auth_token to fall back on
    line, seconds = _join(cluster.address, env)
    assert "\n" not in line
    assert line.startswith("RayAuthError: ") and cluster.address in line, line
    assert "InvalidAuthToken" in line and "RAY_AUTH_MODE=token" in line and "docs/cluster.md" in line, line
    assert "not-the-cluster-token" not in line and cluster.token_file.read_text() not in line  # never the token
    assert seconds < 60  # not Ray's 20 s of retries, let alone its wait for a GCS that never answers


def test_token_mode_without_a_token_gets_one_line(cluster, tmp_path):
    env = {**_base_env(), "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}
    line, _ = _join(cluster.address, env)
    assert line.startswith("RayAuthError: ") and "no Ray token" in line and "\n" not in line, line


def test_no_cluster_at_the_address_gets_one_line(tmp_path):
    [port] = _free_ports(1)
    line, seconds = _join(f"{HEAD_IP}:{port}", {**_base_env(), "HOME": str(tmp_path)})
    assert line.startswith("RayClusterUnreachableError: no Ray cluster answers at ") and "\n" not in line, line
    assert seconds < 60  # ray.init alone would retry for minutes
