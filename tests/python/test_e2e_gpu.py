"""GPU jobs from ``remote_parallel_map`` through the real binaries: a private coordinator with
a node started with ``fleetmapd --test-only-fake-gpus`` (a test-only GPU inventory: the node
hands out GPU slots and sets the GPU variables, with no device behind them). Each instance
reports from inside which GPU it sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import e2e_support
from fleetmap import errors, local_cluster, remote_parallel_map

FAKE_GPUS = "NVIDIA H100 80GB HBM3:81559,NVIDIA H100 80GB HBM3:81559,NVIDIA A10G:23028"
GPU_NODE = "gpu-node"


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A private coordinator and node, plus a second node with fake GPUs registered with it."""
    home = tmp_path_factory.mktemp("fleetmap-gpu-home")
    cluster = e2e_support.Cluster.start(home)
    state = home / "gpu-node"
    state.mkdir()
    addr = state / "addr"
    log = open(state / "log", "wb")
    node = subprocess.Popen(
        [str(local_cluster.find_binary(local_cluster.NODE_BIN)), "--listen", "127.0.0.1:0",
         "--addr-file", str(addr), "--coordinator", cluster.url, "--node-id", GPU_NODE,
         "--state-dir", str(state / "state"), "--worker-python", sys.executable,
         "--cgroup-parent", f"fleetmap-e2e-gpu-{os.getpid()}", "--cgroups", "off",
         "--pool-size", "2", "--test-only-fake-gpus", FAKE_GPUS],
        stdout=log, stderr=subprocess.STDOUT)
    def registered():
        nodes = e2e_support.get_json(cluster.url + "/v1/nodes")
        return any(n["node_id"] == GPU_NODE and n.get("alive") for n in nodes)
    saved = {k: os.environ.get(k) for k in ("FLEETMAP_COORDINATOR", "FLEETMAP_HOME")}
    os.environ["FLEETMAP_COORDINATOR"] = cluster.url
    os.environ["FLEETMAP_HOME"] = str(home)
    try:
        assert e2e_support.wait_until(registered, 30, 0.05), (state / "log").read_text()
        yield cluster
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.stop()


def sees_gpu(x):
    start = time.time()
    time.sleep(0.1)
    return {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
            "pid": os.getpid(), "start": start, "end": time.time()}


def test_each_instance_sees_one_gpu_of_the_model_and_concurrent_ones_differ(gpu_cluster):
    seen = remote_parallel_map(sees_gpu, range(12), func_gpu="H100")
    h100s = {f"GPU-fake-{GPU_NODE}-0", f"GPU-fake-{GPU_NODE}-1"}
    assert len(seen) == 12
    for s in seen:
        assert s["gpu"] in h100s, s
        assert s["nvidia"] == s["gpu"]
    for a in seen:
        for b in seen:
            if a["pid"] != b["pid"] and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["gpu"] != b["gpu"], (a, b)
    # Jobs without func_gpu never see a GPU, wherever they run.
    assert all(s["gpu"] is None for s in remote_parallel_map(sees_gpu, range(4)))


def test_a_model_the_fleet_lacks_is_refused_before_any_input_runs(gpu_cluster, tmp_path):
    marker = tmp_path / "ran"

    def touch(x):
        open(marker, "w").close()
        return x

    with pytest.raises(errors.FleetmapError) as caught:
        remote_parallel_map(touch, range(3), func_gpu="A100")
    message = str(caught.value)
    assert 'no node has a GPU matching "A100"; the fleet has: NVIDIA H100 80GB HBM3 (×2), NVIDIA A10G (×1)' in message
    assert "change func_gpu" in message
    assert not marker.exists()


def test_fleetmap_status_lists_gpus_and_their_use(gpu_cluster):
    cli = [sys.executable, "-m", "fleetmap", "status"]
    out = subprocess.run(cli, env=gpu_cluster.child_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "gpus free" in out.stdout
    assert "3/3" in out.stdout, out.stdout
    assert f"GPU-fake-{GPU_NODE}-0" in out.stdout and "NVIDIA A10G" in out.stdout, out.stdout
    nodes = json.loads(subprocess.run(cli + ["--json"], env=gpu_cluster.child_env(), capture_output=True,
                                      text=True, timeout=60).stdout)
    gpus = [g for n in nodes if n["node_id"] == GPU_NODE for g in n["gpus"]]
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2 + ["NVIDIA A10G"]
    assert all(g["in_use"] is False and g["mig"] == "disabled" for g in gpus)
