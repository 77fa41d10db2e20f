"""Helpers of the hardening suites: a coordinator and node daemon started from the release
binaries with chosen flags (so they can be killed, restarted and limited per test), and
inspection of the processes and cgroups a node leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

from fleetmap import local_cluster

import e2e_support

CGROUP_ROOT = Path("/sys/fs/cgroup")


class Service:
    """One running binary that writes its base URL to an address file."""

    def __init__(self, argv: List[str], home: Path, name: str) -> None:
        self.argv = argv
        self.home = home
        self.name = name
        self.log = home / f"{name}.log"
        self.addr_file = home / f"{name}.addr"
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> "Service":
        self.addr_file.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv + ["--addr-file", str(self.addr_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.addr_file.exists() and self.addr_file.read_text().strip():
                self.url = self.addr_file.read_text().strip()
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL the binary (no cleanup of its own) and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def get_json(self, path: str, timeout: float = 5.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())


def coordinator(home: Path, *flags: str) -> Service:
    binary = local_cluster.find_binary(local_cluster.COORDINATOR_BIN)
    argv = [str(binary), "--listen", "127.0.0.1:0", "--db", str(home / "jobs.db"), *flags]
    return Service(argv, home, "coordinator")


def node(home: Path, node_id: str, coordinator_url: Optional[str], *flags: str) -> Service:
    """A process-runtime daemon with cgroups required where the host has them, else off."""
    binary = local_cluster.find_binary(local_cluster.NODE_BIN)
    mode = "required" if e2e_support.cgroups_missing() is None else "off"
    state = home / f"state-{node_id}"
    state.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary), "--listen", "127.0.0.1:0", "--node-id", node_id,
        "--state-dir", str(state), "--worker-python", os.path.realpath(sys.executable),
        "--cgroup-parent", cgroup_parent(node_id), "--cgroups", mode, "--pool-size", "2",
        *flags,
    ]
    if coordinator_url:
        argv += ["--coordinator", coordinator_url]
    return Service(argv, home, f"node-{node_id}")


def cgroup_parent(node_id: str) -> str:
    return f"fleetmap-harden/{node_id}"


def slot_cgroups(node_id: str) -> List[Path]:
    """Every cgroup directory below the node's parent, in every mounted v1 controller (or v2)."""
    found = []
    roots = [CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.controllers").exists() else [
        CGROUP_ROOT / c for c in ("cpuset", "memory", "pids", "cpu,cpuacct")]
    for root in roots:
        parent = root / cgroup_parent(node_id)
        if parent.is_dir():
            found += [Path(d) / n for d, dirs, _ in os.walk(parent) for n in dirs]
    return found


def cgroup_procs(node_id: str) -> List[int]:
    """Pids in any cgroup at or below the node's parent."""
    pids = set()
    roots = [CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.controllers").exists() else [
        CGROUP_ROOT / "memory", CGROUP_ROOT / "cpuset"]
    for root in roots:
        parent = root / cgroup_parent(node_id)
        if not parent.is_dir():
            continue
        # os.walk ignores directories removed while it walks (slots come and go).
        for directory, _dirs, _files in os.walk(parent):
            procs = Path(directory) / "cgroup.procs"
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except (OSError, ValueError):
                pass
    return sorted(pids)


def processes_with(marker: str) -> List[int]:
    """Pids whose command line contains ``marker`` (the process table, not cgroups)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry))
    return found


def remove_cgroup_parent(node_id: str) -> None:
    """Remove the node's (empty) cgroup parent directories after a test, deepest first."""
    roots = [CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.controllers").exists() else [
        p for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    for root in roots:
        parent = root / cgroup_parent(node_id)
        if not parent.is_dir():
            continue
        for path in sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                try:
                    path.rmdir()
                except OSError:
                    pass
        try:
            parent.rmdir()
            parent.parent.rmdir()
        except OSError:
            pass
