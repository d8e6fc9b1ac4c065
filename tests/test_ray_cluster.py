"""--ray against a real multi-node Ray cluster (docs/large-runs.md): a head and three worker nodes,
started on this machine with Ray's own ``ray.cluster_utils.Cluster``, every node on 127.0.0.1 only.

The command line runs for real, in a subprocess, and joins the cluster by its address. The actors
spread over the nodes; a worker node lost in the middle of a run, or a driver killed outright and run
again with --resume, still ends with every input exactly once, with the plain command line's caption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCRIPT, cli_env
from tests.test_ray import Captions, _assert_same, _photos, _plain

WORKER_NODES = 3  # two for the actors, one to restart an actor on when its node is lost
ACTORS = 2
RUN_TIMEOUT_S = 300


@dataclass
class RunningCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    node_args: dict[str, Any]  # what each node is started with

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_worker(self) -> None:
        self.cluster.add_node(num_cpus=1, **self.node_args)
        self.cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningCluster]:
    """A head (no CPUs: the actors go to the workers) and WORKER_NODES worker nodes of one CPU each, on
    127.0.0.1, their logs in a temporary folder removed afterwards; every process stopped at the end."""
    from ray.cluster_utils import Cluster

    folder = tempfile.mkdtemp(prefix="rc", dir="/tmp" if os.path.isdir("/tmp") else None)
    loopback = {"node_ip_address": "127.0.0.1", "temp_dir": folder, "include_dashboard": False}
    # Ray's Cluster records the head's address in <RAY_TMPDIR>/ray/ray_current_cluster (by default /tmp/ray,
    # which a fresh machine lacks, and where it would replace the address of a `ray start` of the user's).
    os.makedirs(os.path.join(folder, "ray"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", folder)
        started = Cluster(initialize_head=True, head_node_args={**loopback, "num_cpus": 0}, shutdown_at_exit=False)
    running = RunningCluster(started, loopback)
    try:
        for _ in range(WORKER_NODES):
            running.add_worker()
        yield running
    finally:
        raylets = [node.all_processes["raylet"][0].process for node in started.list_all_nodes()]
        started.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
        assert all(raylet.poll() is not None for raylet in raylets)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # Large enough that the actors work for seconds: a node or the driver is killed in the middle.
    return _photos(tmp_path_factory.mktemp("cluster") / "photos", 40, size=(1800, 1200), noise=24)


@pytest.fixture(scope="module")
def expected(shared_models: Path, photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Captions:
    return _plain(shared_models, photos[0].parent, tmp_path_factory.mktemp("plain") / "plain.jsonl")


@pytest.fixture(scope="module")
def shared_models(model_set_dir: tuple[Path, Any]) -> Path:
    return model_set_dir[0]


def _worker_nodes(cluster: RunningCluster) -> dict[int, Any]:
    """Each worker node by the pid of its raylet, which starts the node's actors."""
    return {node.all_processes["raylet"][0].process.pid: node for node in cluster.cluster.worker_nodes}


def _actor_parents() -> set[int]:
    """The parent (a node's raylet) of every process Ray names ray::MapWorker, the actors of --ray."""
    parents = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                parents.add(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]))
        except OSError:
            continue
    return parents


def _run(cluster: RunningCluster, models: Path, photos: list[Path], out: Path,
         on_progress: Callable[[int, subprocess.Popen[str]], None] | None = None) -> tuple[int, str]:
    """The command line on the cluster, --debug so that it reports each row it receives; ``on_progress``
    is called with the count of rows received so far. The exit status and stderr."""
    command = [sys.executable, str(SCRIPT), "-i", str(photos[0].parent), "--ray", cluster.address, "--workers",
               str(ACTORS), "--captions-file", str(out), "--resume", "--model-dir", str(models), "--offline",
               "--onnx", "--debug"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if on_progress is not None and " rows captioned" in line:
                on_progress(int(line.split(" rows captioned")[0].split()[-1]), proc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.join()
    return status, "".join(lines)


def _records(out: Path) -> list[tuple[str, str | None, float | None]]:
    """The complete records: a driver killed outright may have left its last line cut short."""
    lines = out.read_text().split("\n")[:-1]
    return [(r["input"], r["caption"], r.get("confidence")) for r in map(json.loads, lines)]


def test_actors_spread_over_nodes_and_a_lost_node_costs_no_caption(cluster: RunningCluster, shared_models: Path,
                                                                    photos: list[Path], expected: Captions,
                                                                    tmp_path: Path) -> None:
    nodes = _worker_nodes(cluster)
    hosts: set[int] = set()
    lost: list[int] = []  # the rows received when a node hosting an actor was removed

    def on_progress(received: int, proc: subprocess.Popen[str]) -> None:
        hosts.update(_actor_parents() & set(nodes))
        if not lost and received >= 2 and (busy := sorted(_actor_parents() & set(nodes))):
            cluster.cluster.remove_node(nodes[busy[0]], allow_graceful=False)  # its raylet, its actor, its objects
            lost.append(received)

    out = tmp_path / "out.jsonl"
    status, stderr = _run(cluster, shared_models, photos, out, on_progress)
    assert status == 0, stderr[-3000:]
    assert len(hosts) > 1, "the actors ran on one node only"
    assert lost and lost[0] < len(photos), "the node was lost after the run, not during it"
    records = _records(out)
    assert [name for name, _, _ in records] == [str(p) for p in photos]  # each input once, in input order
    _assert_same(records, expected)


def test_a_killed_driver_goes_on_with_resume(cluster: RunningCluster, shared_models: Path, photos: list[Path],
                                            expected: Captions, tmp_path: Path) -> None:
    while len(cluster.cluster.worker_nodes) < WORKER_NODES:  # the test before took one away
        cluster.add_worker()
    killed: list[int] = []

    def on_progress(received: int, proc: subprocess.Popen[str]) -> None:
        if not killed and received >= 8:
            proc.send_signal(signal.SIGKILL)
            killed.append(received)

    out = tmp_path / "out.jsonl"
    status, _ = _run(cluster, shared_models, photos, out, on_progress)
    assert status == -signal.SIGKILL and killed
    first = _records(out)
    assert 0 < len(first) < len(photos), "the driver was killed with nothing written, or after the end"
    status, stderr = _run(cluster, shared_models, photos, out)
    assert status == 0, stderr[-3000:]
    assert f"{len(first)} of {len(photos)} inputs are done" in stderr
    records = _records(out)
    assert sorted(name for name, _, _ in records) == sorted(str(p) for p in photos)  # each input once
    assert records[:len(first)] == first  # the first run's records stand, the second run's follow
    _assert_same(records, expected)
