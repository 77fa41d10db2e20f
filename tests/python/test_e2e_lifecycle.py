"""Lifecycles through the real binaries: Ctrl-C cancels remote work within a second, a
SIGKILLed daemon restarted leaves no cgroups behind, a million-item generator runs in bounded
memory, and the zero-configuration local cluster starts once, is reused and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import e2e_support
from fleetmap import local_cluster

LONG_JOB = textwrap.dedent(
    """
    import os, sys, time
    from fleetmap import remote_parallel_map

    def slow(x):
        with open("/proc/self/cgroup") as fh:
            cgroup = fh.read().replace("\\n", ";")
        print(f"pid={os.getpid()} cgroup={cgroup}", flush=True)
        time.sleep(120)
        return x

    remote_parallel_map(slow, range(4), parallelism=2)
    """
)


def start_long_job(cluster):
    """A client process running four 120 s inputs on two instances; returns it and the two worker pids + cgroups."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LONG_JOB], env=cluster.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers = {}
    lines = []
    reader_done = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "pid=" in line:
                pid_part, _, cgroup = line.split("pid=", 1)[1].partition(" cgroup=")
                workers[int(pid_part)] = cgroup.strip()
            if len(workers) == 2:
                break
        reader_done.set()

    threading.Thread(target=read, daemon=True).start()
    if not reader_done.wait(60) or len(workers) != 2:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the long job did not start two workers: stdout={lines!r} stderr={err[-2000:]!r}")
    return proc, workers


def test_ctrl_c_cancels_the_remote_work_within_a_second(cluster):
    proc, workers = start_long_job(cluster)
    try:
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        gone = e2e_support.wait_until(lambda: all(e2e_support.pid_gone(p) for p in workers), 1.0)
        elapsed = time.monotonic() - start
        assert gone, f"workers {workers} still alive {elapsed:.2f} s after Ctrl-C"
        proc.wait(timeout=10)
        err = proc.stderr.read()
        assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
        assert e2e_support.wait_until(lambda: cluster.node_info()["instances"] == 0, 2.0)
        assert cluster.jobs()[0]["state"] == "cancelled"
    finally:
        proc.kill()
        proc.wait()


def _slot_dirs(cgroups: str, parent: str):
    """Existing cgroup directories (any controller) that a worker's /proc/self/cgroup named."""
    dirs = []
    for line in cgroups.split(";"):
        if not line:
            continue
        _hierarchy, controllers, path = line.split(":", 2)
        if parent not in path:
            continue
        for controller in controllers.split(",") if controllers else [""]:
            mount = Path("/sys/fs/cgroup") / controller if controller else Path("/sys/fs/cgroup")
            if controller.startswith("name="):
                mount = Path("/sys/fs/cgroup") / controller[5:]
            dirs.append(mount / path.lstrip("/"))
    return dirs


@pytest.mark.deadline(180)
def test_daemon_sigkilled_and_restarted_leaves_no_cgroups(tmp_path, need_cgroups):
    cluster = e2e_support.Cluster.start(tmp_path / "home")
    proc = None
    try:
        proc, workers = start_long_job(cluster)
        parent = cluster.paths.cgroup_parent
        old_dirs = [d for cg in workers.values() for d in _slot_dirs(cg, parent)]
        assert old_dirs, f"workers are not under {parent}: {workers}"
        assert all(d.is_dir() for d in old_dirs)
        old_daemon = cluster.node_pid
        os.kill(old_daemon, signal.SIGKILL)
        assert e2e_support.wait_until(lambda: e2e_support.pid_gone(old_daemon), 5)
        # End the client and its job so nothing is re-dispatched onto the restarted node: any
        # slot cgroup still there afterwards is a leftover of the killed daemon.
        proc.kill()
        proc.wait()
        job_id = cluster.jobs()[0]["job_id"]
        e2e_support.delete(f"{cluster.url}/v1/jobs/{job_id}")
        url = local_cluster.ensure_running(cluster.home, cgroups="required")
        assert url == cluster.url and cluster.node_pid != old_daemon
        cleaned = e2e_support.wait_until(
            lambda: all(e2e_support.pid_gone(p) for p in workers) and not any(d.exists() for d in old_dirs), 10
        )
        left = [str(d) for d in old_dirs if d.exists()]
        alive = [p for p in workers if not e2e_support.pid_gone(p)]
        assert cleaned, f"after the restart: cgroups left {left}, worker pids alive {alive}"
        # The restarted node works.
        env = cluster.child_env()
        done = e2e_support.run_python("from fleetmap import remote_parallel_map as m; print(m(abs, [-5]))", env, 60)
        assert done.stdout.strip() == "[5]", done.stderr
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        cluster.stop()


BOUNDED = textwrap.dedent(
    """
    import json, resource, time
    from fleetmap import remote_parallel_map

    def size(b):
        return len(b)

    list(remote_parallel_map(size, [b"warm"]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    count = total = 0
    for value in remote_parallel_map(size, (b"%0100d" % i for i in range(1_000_000)), generator=True):
        count += 1
        total += value
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"count": count, "total": total, "growth_kib": after - before, "seconds": elapsed}))
    """
)


@pytest.mark.deadline(300)
def test_million_item_generator_runs_in_bounded_memory(cluster):
    done = e2e_support.run_python(BOUNDED, cluster.child_env(), timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"1,000,000-item generator: {report}")
    assert report["count"] == 1_000_000 and report["total"] == 100_000_000
    # Holding the inputs or results would take >250 MB; the window keeps growth far below.
    assert report["growth_kib"] < 64 * 1024, report


AUTOSTART = textwrap.dedent(
    """
    import json, time
    start = time.perf_counter()
    from fleetmap import remote_parallel_map
    imported = time.perf_counter()
    out = remote_parallel_map(abs, [-7])
    first = time.perf_counter()
    out2 = remote_parallel_map(abs, [-8])
    second = time.perf_counter()
    print(json.dumps({"out": out + out2, "import_s": imported - start, "first_call_s": first - imported, "second_call_s": second - first}))
    """
)


@pytest.mark.deadline(120)
def test_local_cluster_autostarts_once_is_reused_and_stops(tmp_path):
    missing = e2e_support.binaries_missing()
    if missing:
        pytest.fail(missing)
    home = tmp_path / "auto"
    env = dict(os.environ, FLEETMAP_HOME=str(home))
    env.pop("FLEETMAP_COORDINATOR", None)
    try:
        # Two concurrent first calls: one cluster.
        procs = [
            subprocess.Popen([sys.executable, "-c", AUTOSTART], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        assert all(r["out"] == [7, 8] for r in reports)
        print(f"auto-start reports: {reports}")
        state = local_cluster.status(home)
        assert state["coordinator"]["alive"] and state["node"]["alive"], state
        coordinators = subprocess.run(["pgrep", "-f", "--", f"--addr-file {home}/local/"], capture_output=True, text=True).stdout.split()
        assert len(coordinators) == 2, coordinators  # one coordinator + one node for this home
        # A later process reuses the running cluster.
        again = e2e_support.run_python(AUTOSTART, env, 60)
        assert again.returncode == 0, again.stderr
        assert local_cluster.status(home)["coordinator"]["pid"] == state["coordinator"]["pid"]
        print(f"warm process: {again.stdout.strip()}")
        cli = [sys.executable, "-m", "fleetmap"]
        status = subprocess.run(cli + ["status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and local_cluster.Paths(home).node_id in status.stdout, status
        jobs = subprocess.run(cli + ["jobs", "--json"], env=env, capture_output=True, text=True)
        assert jobs.returncode == 0 and len(json.loads(jobs.stdout)) >= 5, jobs
        local = subprocess.run(cli + ["local", "status"], env=env, capture_output=True, text=True)
        assert local.returncode == 0, local
    finally:
        down = subprocess.run([sys.executable, "-m", "fleetmap", "local", "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 0 and down.stdout.strip() == "stopped", down
    state = local_cluster.status(home)
    assert not state["coordinator"]["alive"] and not state["node"]["alive"]
    for part in ("coordinator", "node"):
        assert e2e_support.pid_gone(state[part]["pid"])
