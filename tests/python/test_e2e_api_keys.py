"""API keys end to end: a coordinator run with ``--require-api-keys`` (and a cluster token its
node shares), a key made with ``fleetmap-coordinator keys create``, and the client sending it
from each of its three sources (``api_key=``, ``FLEETMAP_API_KEY``, the file ``fleetmap login``
writes); without a key, and with a revoked one, the client raises ``Unauthorized`` with the
coordinator's sentence before any input runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fleetmap import errors, local_cluster, remote_parallel_map

import e2e_support
import hardening_support

TOKEN = "py-fleet-secret-0123456789abcdef"


def keys(db, *args: str) -> str:
    binary = local_cluster.find_binary(local_cluster.COORDINATOR_BIN)
    out = subprocess.run([str(binary), "keys", *args, "--db", str(db)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def square(x):
    return x * x


@pytest.fixture
def keyed(tmp_path, monkeypatch):
    missing = e2e_support.binaries_missing()
    if missing:
        pytest.fail(f"the end-to-end suite runs the real binaries: {missing}")
    token = tmp_path / "cluster.token"
    token.write_text(TOKEN + "\n")
    coordinator = hardening_support.coordinator(
        tmp_path, "--cluster-token-file", str(token), "--require-api-keys").start()
    node = hardening_support.node(tmp_path, "keyed", coordinator.url, "--cluster-token-file", str(token)).start()
    key = keys(tmp_path / "jobs.db", "create", "--name", "pytest")
    home = tmp_path / "home"
    monkeypatch.setenv("FLEETMAP_COORDINATOR", coordinator.url)
    monkeypatch.setenv("FLEETMAP_HOME", str(home))
    monkeypatch.delenv("FLEETMAP_API_KEY", raising=False)
    deadline = time.monotonic() + 30
    while not any(n["node_id"] == "keyed" and n["alive"] for n in remote_nodes(key)):
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)
    try:
        yield tmp_path, key, home, coordinator
    finally:
        node.stop()
        coordinator.stop()


def remote_nodes(key):
    from fleetmap import config, transport

    endpoint = config.resolve(key, start_local=False)[0]
    return transport.request_json(endpoint, "GET", "/v1/nodes")


def test_the_key_travels_from_each_source_and_its_absence_or_revocation_is_explained(keyed, monkeypatch):
    tmp_path, key, home, coordinator = keyed

    with pytest.raises(errors.Unauthorized) as refused:
        remote_parallel_map(square, range(5))
    assert "API key" in str(refused.value) and "fleetmap login" in str(refused.value)

    assert remote_parallel_map(square, range(20), api_key=key) == [x * x for x in range(20)]

    monkeypatch.setenv("FLEETMAP_API_KEY", key)
    assert remote_parallel_map(square, range(7)) == [x * x for x in range(7)]
    monkeypatch.delenv("FLEETMAP_API_KEY")

    env = dict(os.environ, FLEETMAP_HOME=str(home), PYTHONPATH=os.pathsep.join(sys.path))
    login = subprocess.run([sys.executable, "-m", "fleetmap", "login", "--api-key", key],
                           env=env, capture_output=True, text=True)
    assert login.returncode == 0, login.stderr
    assert (home / "api_key").stat().st_mode & 0o777 == 0o600
    assert remote_parallel_map(square, range(3)) == [0, 1, 4]
    jobs = subprocess.run([sys.executable, "-m", "fleetmap", "jobs"], env=env, capture_output=True, text=True)
    assert jobs.returncode == 0, jobs.stderr
    assert "completed" in jobs.stdout, jobs.stdout

    keys(tmp_path / "jobs.db", "revoke", "pytest")
    deadline = time.monotonic() + 5
    while True:
        try:
            remote_parallel_map(square, range(2))
        except errors.Unauthorized as err:
            assert "revoked" in str(err)
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.2)

    log = (tmp_path / "coordinator.log").read_text()
    assert key[len("fmk_") + 13:] not in log
