"""A real boot of the systemd units: a container running systemd as PID 1 (the base image plus
systemd), the units and settings put in place by ``systemd/install.sh``, ``systemd-analyze
verify`` on the installed units, a job run through the installed coordinator and daemon
(instances pinned by cgroups), ``systemctl stop`` ending the daemon cleanly (no worker, no cgroup
left) and ``install.sh uninstall --purge`` removing everything.

Needs the Docker engine, the ``fleetmap/base:1`` image (``images/base/ci-ensure.sh``), root and
cgroups; skips loudly without them unless ``FLEETMAP_REQUIRE_DOCKER=1`` (CI), where it fails."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import e2e_support

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "fleetmap/base:1"
BOOT_DOCKERFILE = f"""\
FROM {BASE_IMAGE}
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus procps \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
"""
# Tagged by the recipe's hash, so a changed recipe builds a new image instead of reusing a stale one.
BOOT_IMAGE = "fleetmap/systemd-boot:" + hashlib.sha256(BOOT_DOCKERFILE.encode()).hexdigest()[:12]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def missing() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    if docker("version", check=False).returncode != 0:
        return "the Docker engine is not reachable"
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        return f"{BASE_IMAGE} is missing (run images/base/ci-ensure.sh)"
    return e2e_support.cgroups_missing() or e2e_support.binaries_missing()


@pytest.fixture(scope="module")
def machine():
    """A booted systemd container with the repository at /src and the binaries at /fleetmap-bin."""
    reason = missing()
    if reason:
        if os.environ.get("FLEETMAP_REQUIRE_DOCKER") == "1":
            pytest.fail(f"FLEETMAP_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(f"=== SKIPPED systemd boot: {reason} ===")
    if docker("image", "inspect", BOOT_IMAGE, check=False).returncode != 0:
        subprocess.run(
            ["docker", "build", "-q", "-t", BOOT_IMAGE, "-"],
            input=BOOT_DOCKERFILE, text=True, capture_output=True, timeout=600, check=True,
        )
    bin_dir = Path(e2e_support.local_cluster.find_binary("fleetmapd")).parent
    name = f"fleetmap-boot-{uuid.uuid4().hex[:8]}"
    # systemd as PID 1 needs CAP_SYS_ADMIN and the cgroup tree; nothing more (not --privileged).
    docker(
        "run", "-d", "--name", name, "--cap-add", "SYS_ADMIN",
        "--security-opt", "seccomp=unconfined", "--cgroupns=host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "-v", f"{REPO}:/src:ro", "-v", f"{bin_dir}:/fleetmap-bin:ro",
        "-e", "container=docker", BOOT_IMAGE, "/lib/systemd/systemd",
    )
    try:
        state = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = docker("exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        assert state in ("running", "degraded"), f"systemd did not boot: {state}\n{docker('logs', name, check=False).stdout}"
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def sh(machine: str, script: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = docker("exec", machine, "bash", "-c", script, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{script!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def wait_active(machine: str, unit: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sh(machine, f"systemctl is-active {unit}", check=False).stdout.strip()
        if state == "active":
            return
        time.sleep(0.2)
    journal = sh(machine, f"journalctl -u {unit} --no-pager | tail -20", check=False).stdout
    raise AssertionError(f"{unit} is {state!r}, not active:\n{journal}")


def running_jobs(machine: str) -> int:
    """Jobs the installed coordinator lists as running."""
    probe = (
        "import json, urllib.request; "
        "jobs = json.load(urllib.request.urlopen('http://127.0.0.1:7077/v1/jobs')); "
        "print(sum(1 for j in jobs if j.get('state') == 'running'))"
    )
    out = sh(machine, f'python3 -c "{probe}"', check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


JOB = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, "/src/client")
    from fleetmap import remote_parallel_map

    def where(x):
        return x * x, sorted(os.sched_getaffinity(0))

    results = remote_parallel_map(where, range(40), func_cpu=1, func_ram=1)
    assert [r[0] for r in results] == [x * x for x in range(40)], results
    assert all(len(r[1]) == 1 for r in results), results
    print("ok", len(results))
    """
)


SLOW_JOB = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, "/src/client")
    from fleetmap import remote_parallel_map

    def slow(x):
        time.sleep(0.25)
        return x

    print("ok", len(remote_parallel_map(slow, range(24))), flush=True)
    """
)


def test_installed_units_verify_start_run_a_job_drain_on_stop_and_uninstall(machine):
    node_id = f"boot-{uuid.uuid4().hex[:6]}"
    out = sh(machine, f"/src/systemd/install.sh install --bin-dir /fleetmap-bin --node-id {node_id}").stdout
    assert "enabled and started fleetmap-coordinator.service fleetmapd.service" in out, out
    verify = sh(machine, "systemd-analyze verify /etc/systemd/system/fleetmapd.service "
                         "/etc/systemd/system/fleetmap-coordinator.service 2>&1", check=False)
    assert verify.returncode == 0 and verify.stdout.strip() == "", verify.stdout
    wait_active(machine, "fleetmap-coordinator")
    wait_active(machine, "fleetmapd")
    # The coordinator runs as the unprivileged system user, the daemon as root.
    users = sh(machine, "ps -o user= -C fleetmap-coordinator; ps -o user= -C fleetmapd").stdout.split()
    assert users == ["fleetmap", "root"], users
    # Installing again keeps the operator's settings.
    sh(machine, "echo '# operator edit' >> /etc/fleetmap/fleetmapd.toml")
    again = sh(machine, f"/src/systemd/install.sh install --bin-dir /fleetmap-bin --node-id {node_id}").stdout
    assert "keeping the existing /etc/fleetmap/fleetmapd.toml" in again, again
    assert "# operator edit" in sh(machine, "cat /etc/fleetmap/fleetmapd.toml").stdout
    wait_active(machine, "fleetmapd")

    sh(machine, f"cat > /tmp/job.py <<'EOF'\n{JOB}\nEOF")
    deadline = time.monotonic() + 60
    while True:  # the node registers a moment after the unit starts
        job = sh(machine, "FLEETMAP_COORDINATOR=http://127.0.0.1:7077 python3 /tmp/job.py 2>&1", check=False)
        if job.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert job.returncode == 0 and "ok 40" in job.stdout, job.stdout
    journal = sh(machine, "journalctl -u fleetmapd --no-pager").stdout
    assert node_id in journal, journal[-2000:]

    # The token install.sh generated is what both services use, readable by the coordinator's user.
    token = sh(machine, "stat -c '%a %U %G' /etc/fleetmap/cluster.token").stdout.split()
    assert token == ["640", "root", "fleetmap"], token

    # `systemctl stop` drains: a job running on the node completes before the daemon exits.
    sh(machine, f"cat > /tmp/slow.py <<'EOF'\n{SLOW_JOB}\nEOF")
    sh(machine, "FLEETMAP_COORDINATOR=http://127.0.0.1:7077 nohup python3 /tmp/slow.py > /tmp/slow.out 2>&1 &")
    deadline = time.monotonic() + 30
    while running_jobs(machine) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_jobs(machine) == 1, sh(machine, "cat /tmp/slow.out", check=False).stdout
    started = time.monotonic()
    sh(machine, "systemctl stop fleetmapd", timeout=120)
    while sh(machine, "pgrep -f /tmp/slow.py", check=False).returncode == 0 and time.monotonic() < started + 60:
        time.sleep(0.2)
    slow_out = sh(machine, "cat /tmp/slow.out").stdout
    assert "ok 24" in slow_out, slow_out
    journal = sh(machine, "journalctl -u fleetmapd --no-pager").stdout
    assert "drain" in journal.lower(), journal[-2000:]
    state = sh(machine, "systemctl is-active fleetmapd", check=False).stdout.strip()
    assert state == "inactive", state  # stopped cleanly, not "failed"
    assert sh(machine, "pgrep -f fleetmap_worker", check=False).stdout.strip() == ""
    leftovers = [p for p in Path("/sys/fs/cgroup").glob(f"*/fleetmap/{node_id}") if p.exists()]
    assert leftovers == [], leftovers

    out = sh(machine, "/src/systemd/install.sh uninstall --purge").stdout
    assert "removed" in out, out
    gone = sh(machine, "ls /etc/systemd/system/fleetmapd.service /usr/local/bin/fleetmapd /etc/fleetmap 2>&1", check=False)
    assert gone.returncode != 0 and "No such file" in gone.stdout, gone.stdout
    assert sh(machine, "getent passwd fleetmap", check=False).returncode != 0
