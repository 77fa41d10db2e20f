"""Environments end to end through the real binaries (process runtime of the local cluster):
``packages=`` builds a venv once per content hash, ``packages=[]`` is the bare base, a
failed build is one clear error before any input runs, verbose shows the build log, a
Dockerfile needs a docker node, and the default clone replicates the client's distributions.

Builds reach PyPI; where TLS is intercepted, ``FLEETMAP_BUILD_CA_BUNDLE`` (set by ``.ci/run``)
names the CA bundle builds trust.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import e2e_support
from fleetmap import EnvironmentBuildFailed, EnvironmentUnavailable, remote_parallel_map

REPO = Path(__file__).resolve().parents[2]


def six_version(_x):
    try:
        import six
    except ImportError:
        return "missing"
    return six.__version__


def environments(cluster) -> dict:
    return e2e_support.get_json(cluster.node_url + "/v1/environments")


@pytest.mark.deadline(300)
def test_packages_build_once_and_install_exactly_the_list(cluster):
    before = environments(cluster)["counters"]["builds"]
    assert remote_parallel_map(six_version, range(3), packages=["six==1.16.0"]) == ["1.16.0"] * 3
    assert remote_parallel_map(six_version, range(2), packages=["six==1.16.0"]) == ["1.16.0"] * 2
    after = environments(cluster)
    assert after["counters"]["builds"] == before + 1, after
    assert remote_parallel_map(six_version, [0], packages=[]) == ["missing"]


@pytest.mark.deadline(300)
def test_verbose_streams_the_build_log(cluster, capfd):
    assert remote_parallel_map(six_version, [0], packages=["six==1.15.0"], verbose=True) == ["1.15.0"]
    err = capfd.readouterr().err
    assert "[build] $ pip install" in err, err[-2000:]
    assert "six" in err


@pytest.mark.deadline(300)
def test_a_package_that_cannot_be_installed_is_one_clear_error(cluster):
    ran = []
    with pytest.raises(EnvironmentBuildFailed) as caught:
        remote_parallel_map(ran.append, range(3), packages=["fleetmap-no-such-distribution==0.0.1"])
    message = str(caught.value)
    assert message.startswith("the environment venv failed to build:"), message
    assert "fleetmap-no-such-distribution" in message
    # The node keeps serving.
    assert remote_parallel_map(e2e_support.triple, range(3)) == [0, 3, 6]


def test_a_dockerfile_needs_a_docker_node(cluster, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM fleetmap/base:1\n")
    with pytest.raises(EnvironmentUnavailable, match="--runtime docker"):
        remote_parallel_map(e2e_support.triple, [1], dockerfile=str(dockerfile))


@pytest.mark.deadline(400)
def test_the_default_clone_replicates_the_clients_distributions(cluster, tmp_path):
    """A client whose interpreter has six 1.14.0 (the node's has another version): the node
    builds the clone and the function sees the client's version."""
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    import cloudpickle

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    ca = os.environ.get("FLEETMAP_BUILD_CA_BUNDLE")
    if ca:
        env["PIP_CERT"] = ca
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-cache-dir",
         "six==1.14.0", f"cloudpickle=={cloudpickle.__version__}"],
        check=True, env=env, capture_output=True, timeout=300,
    )
    child = cluster.child_env()
    child["PYTHONPATH"] = str(REPO / "client")
    code = (
        "from fleetmap import remote_parallel_map\n"
        "def version(_):\n"
        "    import six\n"
        "    return six.__version__\n"
        "print(remote_parallel_map(version, range(2)))\n"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], env=child, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['1.14.0', '1.14.0']", done.stdout
    kinds = [e["kind"] for e in environments(cluster)["entries"]]
    assert "clone" in kinds, kinds


def test_the_clone_of_the_nodes_own_interpreter_needs_no_build(cluster):
    before = environments(cluster)["counters"]
    assert remote_parallel_map(e2e_support.triple, range(4)) == [0, 3, 6, 9]
    after = environments(cluster)["counters"]
    assert after["builds"] == before["builds"]
    assert after["node_default"] > before["node_default"]


def _docker_missing():
    try:
        out = subprocess.run(["docker", "image", "inspect", "fleetmap/base:1"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no docker client to inspect the engine: {err}"
    return None if out.returncode == 0 else "the engine has no fleetmap/base:1 (images/base/ci-ensure.sh builds it)"


@pytest.fixture(scope="module")
def docker_cluster(tmp_path_factory):
    """A private local cluster whose node runs the docker runtime."""
    missing = _docker_missing() or e2e_support.binaries_missing()
    if missing:
        if os.environ.get("FLEETMAP_REQUIRE_DOCKER") == "1":
            pytest.fail(f"FLEETMAP_REQUIRE_DOCKER=1 but {missing}")
        pytest.skip(f"needs Docker: {missing}")
    from fleetmap import local_cluster

    home = tmp_path_factory.mktemp("fleetmap-docker-home")
    saved = os.environ.get("FLEETMAP_LOCAL_RUNTIME")
    os.environ["FLEETMAP_LOCAL_RUNTIME"] = "docker"
    try:
        url = local_cluster.ensure_running(home, cgroups="off")
    finally:
        if saved is None:
            os.environ.pop("FLEETMAP_LOCAL_RUNTIME", None)
        else:
            os.environ["FLEETMAP_LOCAL_RUNTIME"] = saved
    cluster = e2e_support.Cluster(home, url)
    try:
        yield cluster
    finally:
        cluster.stop()
        # Environment images outlive their node by design; this test's go with it.
        listed = subprocess.run(
            ["docker", "images", "-q", "--filter", f"label=org.fleetmap.env-node={cluster.paths.node_id}"],
            capture_output=True, text=True,
        )
        images = listed.stdout.split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *images], capture_output=True)


def read_marker(_x):
    with open("/opt/marker.txt") as fh:
        return fh.read()


@pytest.mark.deadline(400)
def test_a_dockerfile_is_built_once_and_reused(docker_cluster, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FLEETMAP_COORDINATOR", docker_cluster.url)
    monkeypatch.setenv("FLEETMAP_HOME", str(docker_cluster.home))
    (tmp_path / "marker.txt").write_text(f"marker {tmp_path.name}")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM fleetmap/base:1\nCOPY marker.txt /opt/marker.txt\n")
    expected = [f"marker {tmp_path.name}"] * 2
    assert remote_parallel_map(read_marker, range(2), dockerfile=str(dockerfile), verbose=True) == expected
    assert "[build] Step" in capfd.readouterr().err
    assert remote_parallel_map(read_marker, range(2), dockerfile=str(dockerfile)) == expected
    counters = environments(docker_cluster)["counters"]
    assert (counters["builds"], counters["hits"]) == (1, 1), counters
    assert remote_parallel_map(six_version, [0], packages=[]) == ["missing"]
    # The daemon tightened the container worker's timer slack from Linux's 50 µs to 1 ns.
    assert remote_parallel_map(e2e_support.timer_slack_ns, [0], dockerfile=str(dockerfile)) == [1]
