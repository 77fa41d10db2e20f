"""Detached jobs through the real binaries: ``remote_parallel_map(..., detach=True)`` returns the
job id and the client process leaves; the job runs on; ``fleetmap.fetch_results`` and
``fleetmap results JOB`` read its results back in input order, also after the coordinator was
stopped and started again on the same database; a function exception raises as its own type."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import e2e_support
import fleetmap
from fleetmap import local_cluster

DETACH = textwrap.dedent(
    """
    import time
    from fleetmap import remote_parallel_map

    def f(x):
        time.sleep(0.002)
        if x == {bad}:
            raise ValueError(f"bad input {{x}}")
        return {{"x": x, "sq": x * x}}

    print(remote_parallel_map(f, range({n}), detach=True), flush=True)
    """
)


def submit_detached(env: dict, n: int, bad: int = -1) -> str:
    """Runs a client process that submits a detached job and exits; the job id it printed."""
    done = e2e_support.run_python(DETACH.format(n=n, bad=bad), env, timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    assert len(job_id) == 32, done.stdout
    return job_id


def test_detached_results_are_fetched_by_id_and_from_the_cli(cluster):
    job_id = submit_detached(cluster.child_env(), 500)
    results = fleetmap.fetch_results(job_id, wait=True, timeout=90)
    assert results == [{"x": x, "sq": x * x} for x in range(500)]

    cli = subprocess.run(
        [sys.executable, "-m", "fleetmap", "results", job_id],
        env=cluster.child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert len(lines) == 500
    assert lines[7] == "7\t{'x': 7, 'sq': 49}"

    fleetmap.delete_results(job_id)
    with pytest.raises(fleetmap.CoordinatorError, match="no stored results"):
        fleetmap.fetch_results(job_id)


def test_a_detached_jobs_exception_raises_on_fetch(cluster):
    job_id = submit_detached(cluster.child_env(), 50, bad=5)
    with pytest.raises(ValueError, match="bad input 5") as raised:
        fleetmap.fetch_results(job_id, wait=True, timeout=60)
    assert raised.value.fleetmap_index == 5


@pytest.mark.deadline(240)
def test_detached_results_survive_a_coordinator_restart(tmp_path):
    home = tmp_path / "home"
    started = e2e_support.Cluster.start(home)
    try:
        env = started.child_env()
        job_id = submit_detached(env, 300)
        saved = {k: os.environ.get(k) for k in ("FLEETMAP_COORDINATOR", "FLEETMAP_HOME")}
        os.environ["FLEETMAP_COORDINATOR"] = started.url
        os.environ["FLEETMAP_HOME"] = str(home)
        try:
            first = fleetmap.fetch_results(job_id, wait=True, timeout=90)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        started.stop()
        again = e2e_support.Cluster.start(home)
        try:
            env = again.child_env()
            fetch = "import sys, fleetmap; r = fleetmap.fetch_results(sys.argv[1]); print(len(r), r[299])"
            done = subprocess.run([sys.executable, "-c", fetch, job_id], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split(maxsplit=1)[0] == "300"
            assert first[299] == {"x": 299, "sq": 299 * 299}
        finally:
            again.stop()
    finally:
        local_cluster.down(home)


SLOW_DETACHED = textwrap.dedent(
    """
    import time
    from fleetmap import remote_parallel_map

    def f(x):
        time.sleep(30)
        return x

    print(remote_parallel_map(f, range(4), parallelism=1, detach=True), flush=True)
    """
)


def test_status_shows_each_nodes_slots_and_the_jobs_on_it(cluster):
    done = e2e_support.run_python(SLOW_DETACHED, cluster.child_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    try:
        def listed():
            nodes = e2e_support.get_json(cluster.url + "/v1/nodes")
            # The job's stream is open and a heartbeat since reported its instance's slot.
            return nodes and job_id in nodes[0].get("jobs_running", []) and nodes[0]["free_cpus"] < nodes[0]["cpus"]

        assert e2e_support.wait_until(listed, 20, 0.05)
        table = subprocess.run(
            [sys.executable, "-m", "fleetmap", "status"], env=cluster.child_env(), capture_output=True, text=True, timeout=30
        )
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[1:3]
        assert "slots used" in header and "jobs" in header
        assert job_id[:12] in row
        assert " 1/" in row, row  # one of the node's slots runs the job's instance
    finally:
        cancel = subprocess.run(
            [sys.executable, "-m", "fleetmap", "cancel", job_id], env=cluster.child_env(), capture_output=True, text=True, timeout=30
        )
        assert cancel.returncode == 0, cancel.stderr
