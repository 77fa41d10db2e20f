"""Helpers of the end-to-end suite: starting and inspecting private clusters, reading cgroup
limits and process state, and functions run remotely (this module is local, so it travels by
value with the functions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

from fleetmap import errors, local_cluster

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroups_missing() -> Optional[str]:
    """Why this host cannot run cgroup-enforced instances, or None if it can."""
    if os.geteuid() != 0:
        return "not running as root"
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    if (CGROUP_ROOT / "memory").is_dir() and (CGROUP_ROOT / "cpuset").is_dir():
        return None
    return f"no cgroup v2 hierarchy or v1 memory+cpuset controllers under {CGROUP_ROOT}"


def binaries_missing() -> Optional[str]:
    """Why the release binaries cannot be found, or None."""
    try:
        local_cluster.find_binary(local_cluster.COORDINATOR_BIN)
        local_cluster.find_binary(local_cluster.NODE_BIN)
    except errors.LocalClusterError as err:
        return str(err)
    return None


def get_json(url: str, timeout: float = 5.0):
    """GET a JSON document (test-side inspection, independent of the client's transport)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def delete(url: str, timeout: float = 5.0) -> int:
    """DELETE ``url``; the HTTP status (errors included)."""
    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


class Cluster:
    """A running private local cluster."""

    def __init__(self, home: Path, url: str) -> None:
        self.home = home
        self.url = url
        self.paths = local_cluster.Paths(home)

    @classmethod
    def start(cls, home: Path) -> "Cluster":
        missing = binaries_missing()
        if missing:
            raise RuntimeError(f"the end-to-end suite runs the real binaries: {missing}")
        mode = "required" if cgroups_missing() is None else "off"
        url = local_cluster.ensure_running(home, cgroups=mode)
        return cls(home, url)

    def stop(self) -> None:
        local_cluster.down(self.home)

    @property
    def node_url(self) -> str:
        return self.paths.node_addr.read_text().strip()

    @property
    def node_pid(self) -> int:
        return int(self.paths.node_pid.read_text())

    def node_info(self) -> dict:
        return get_json(self.node_url + "/v1/node")

    def jobs(self) -> List[dict]:
        return get_json(self.url + "/v1/jobs")

    def child_env(self) -> dict:
        env = dict(os.environ)
        env["FLEETMAP_COORDINATOR"] = self.url
        env["FLEETMAP_HOME"] = str(self.home)
        return env


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def run_python(code: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so its ``__main__`` is the script)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


# ---- functions that run on the node --------------------------------------------------------


def memory_limit_bytes(_unused=None) -> Optional[int]:
    """The memory limit of the cgroup this process is in (v1 memory.limit_in_bytes or v2 memory.max)."""
    with open("/proc/self/cgroup") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            limit = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
            return int(limit.read_text())
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            text = (Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max").read_text().strip()
            return None if text == "max" else int(text)
    return None


def cgroup_paths(_unused=None) -> dict:
    """controller → cgroup path of this process, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh.read().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            for controller in (controllers.split(",") if controllers else ["unified"]):
                out[controller] = path
    return out


def timer_slack_ns(_unused=None) -> int:
    """This process's timer slack: how late Linux may fire its timers."""
    with open("/proc/self/timerslack_ns") as fh:
        return int(fh.read())


def affinity(_unused=None) -> List[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def triple(x):
    """A plain function of a local module (pickled by value: the node cannot import this module)."""
    return 3 * x
