"""The zero-configuration local cluster: one coordinator and one node on this machine.

With ``FLEETMAP_COORDINATOR`` unset the first ``remote_parallel_map`` starts
``fleetmap-coordinator`` and ``fleetmapd`` in the background (their own sessions, logs to
files) and later calls — in this process or any other — reuse them.  State lives in
``$FLEETMAP_HOME/local/``: address files written by the binaries, pid files, logs, the
coordinator's database and the node's state directory.  A file lock makes two concurrent
first calls start one cluster.  Start-up polls files and ``GET /v1/nodes`` with short sleeps
that grow from 1 ms; nothing sleeps a fixed time.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import config, errors, transport

COORDINATOR_BIN = "fleetmap-coordinator"
NODE_BIN = "fleetmapd"
ENV_BIN_DIR = "FLEETMAP_BIN_DIR"
CGROUP_MODES = ("auto", "required", "off")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

_children: Dict[int, subprocess.Popen] = {}
"""Processes this interpreter started, kept so they can be reaped (and raise no ResourceWarning)."""


class Paths:
    """The files of one local cluster under ``<home>/local``."""

    def __init__(self, home: Optional[Path] = None) -> None:
        self.home = Path(home) if home is not None else config.home()
        self.dir = self.home / "local"
        self.lock = self.dir / "lock"
        self.coordinator_addr = self.dir / "coordinator.addr"
        self.coordinator_pid = self.dir / "coordinator.pid"
        self.coordinator_log = self.dir / "coordinator.log"
        self.db = self.dir / "coordinator.db"
        self.node_addr = self.dir / "node.addr"
        self.node_pid = self.dir / "node.pid"
        self.node_log = self.dir / "node.log"
        self.state_dir = self.dir / "node-state"

    @property
    def node_id(self) -> str:
        """A node id unique to this home, so two local clusters never share cgroups."""
        digest = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:8]
        return f"local-{digest}"

    @property
    def cgroup_parent(self) -> str:
        """The cgroup (relative to each controller's root) the node puts its instances under."""
        return f"fleetmap/{self.node_id}"


def find_binary(name: str) -> Path:
    """``$FLEETMAP_BIN_DIR``, next to ``sys.executable``, ``PATH``, then ``<repo>/target/release``."""
    candidates: List[Path] = []
    bin_dir = os.environ.get(ENV_BIN_DIR)
    if bin_dir:
        candidates.append(Path(bin_dir) / name)
    candidates.append(Path(sys.executable).parent / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    repo_release = Path(__file__).resolve().parents[2] / "target" / "release"
    candidates.append(repo_release / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise errors.LocalClusterError(
        f"{name} was not found in $FLEETMAP_BIN_DIR, next to {sys.executable}, on PATH or in "
        f"{repo_release}; build it with `cargo build --release` or set FLEETMAP_COORDINATOR"
    )


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_pid(path: Path) -> Optional[int]:
    text = _read(path)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def pid_alive(pid: Optional[int], name: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process running the binary ``name``."""
    if not pid:
        return False
    _reap(pid)
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        state = stat.rpartition(")")[2].split()[:1]
        if state and state[0] in ("Z", "X"):
            return False
        argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
        return os.path.basename(argv0) == name
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True


def running_url(home: Optional[Path] = None) -> Optional[str]:
    """The coordinator URL if both local processes are alive, without touching the network."""
    paths = Paths(home)
    url = _read(paths.coordinator_addr)
    if not url:
        return None
    if not pid_alive(_read_pid(paths.coordinator_pid), COORDINATOR_BIN):
        return None
    if not pid_alive(_read_pid(paths.node_pid), NODE_BIN):
        return None
    return url


def not_running_error() -> errors.LocalClusterError:
    """The error for commands that need a running local cluster and found none."""
    return errors.LocalClusterError(
        "no local cluster is running and FLEETMAP_COORDINATOR is not set; "
        "start one with `fleetmap local up` or point FLEETMAP_COORDINATOR at a coordinator"
    )


class _Lock:
    """An exclusive ``flock`` on the cluster's lock file, held while starting or stopping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_Lock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _spawn(argv: List[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc


class _Backoff:
    """Sleeps of 1, 2, 4 … 50 ms until a deadline."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.delay = 0.001

    def wait(self) -> bool:
        """Sleep once; False when the deadline has passed."""
        now = time.monotonic()
        if now >= self.deadline:
            return False
        time.sleep(min(self.delay, self.deadline - now))
        self.delay = min(self.delay * 2, 0.05)
        return True


def _died(proc: subprocess.Popen, what: str, log: Path) -> errors.LocalClusterError:
    tail = _log_tail(log)
    return errors.LocalClusterError(
        f"the local {what} exited with status {proc.returncode} while starting; see {log}"
        + (f":\n{tail}" if tail else "")
    )


def _start_coordinator(paths: Paths, timeout: float) -> str:
    binary = find_binary(COORDINATOR_BIN)
    for stale in (paths.coordinator_addr, paths.coordinator_pid):
        stale.unlink(missing_ok=True)
    argv = [
        str(binary),
        "--listen", "127.0.0.1:0",
        "--addr-file", str(paths.coordinator_addr),
        "--db", str(paths.db),
        "--log-format", "text",
    ]
    proc = _spawn(argv, paths.coordinator_log)
    _write_atomic(paths.coordinator_pid, str(proc.pid))
    backoff = _Backoff(timeout)
    while True:
        url = _read(paths.coordinator_addr)
        if url:
            return url
        if proc.poll() is not None:
            raise _died(proc, "coordinator", paths.coordinator_log)
        if not backoff.wait():
            raise errors.LocalClusterError(
                f"the local coordinator did not write {paths.coordinator_addr} within {timeout:.0f} s; "
                f"see {paths.coordinator_log}"
            )


def _start_node(paths: Paths, coordinator_url: str, cgroups: str, pool_size: Optional[int]) -> subprocess.Popen:
    binary = find_binary(NODE_BIN)
    for stale in (paths.node_addr, paths.node_pid):
        stale.unlink(missing_ok=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--listen", "127.0.0.1:0",
        "--addr-file", str(paths.node_addr),
        "--coordinator", coordinator_url,
        "--node-id", paths.node_id,
        "--state-dir", str(paths.state_dir),
        "--worker-python", sys.executable,
        "--cgroup-parent", paths.cgroup_parent,
        "--cgroups", cgroups,
        "--log-format", "text",
    ]
    if pool_size is not None:
        argv += ["--pool-size", str(pool_size)]
    runtime = os.environ.get("FLEETMAP_LOCAL_RUNTIME", "").strip()
    if runtime:
        # `docker`: the node runs each instance in a container of fleetmap/base:1 (or of the
        # job's environment image) instead of a forked process.
        argv += ["--runtime", runtime]
    ca_bundle = os.environ.get("FLEETMAP_BUILD_CA_BUNDLE")
    if ca_bundle:
        # Environment builds (pip in venvs) trust it: networks that intercept TLS need it.
        argv += ["--build-ca-bundle", ca_bundle]
    proc = _spawn(argv, paths.node_log)
    _write_atomic(paths.node_pid, str(proc.pid))
    return proc


def _wait_node(paths: Paths, url: str, node: Optional[subprocess.Popen], timeout: float) -> None:
    endpoint = transport.Endpoint(url)
    backoff = _Backoff(timeout)
    last_error = ""
    while True:
        # The node's own address tells this daemon's registration from a stale one of a
        # daemon that died (which the coordinator still lists until its heartbeat times out).
        address = _read(paths.node_addr)
        if address:
            try:
                nodes = transport.request_json(endpoint, "GET", "/v1/nodes", timeout=2.0)
                if any(
                    n.get("node_id") == paths.node_id and n.get("address") == address and n.get("alive", True)
                    for n in nodes or ()
                ):
                    return
            except errors.FleetmapError as err:
                last_error = str(err)
        if node is not None and node.poll() is not None:
            raise _died(node, "node (fleetmapd)", paths.node_log)
        if not backoff.wait():
            raise errors.LocalClusterError(
                f"the local node {paths.node_id} did not register with {url} within {timeout:.0f} s"
                + (f" ({last_error})" if last_error else "")
                + f"; see {paths.node_log}"
            )


def ensure_running(
    home: Optional[Path] = None,
    cgroups: str = "auto",
    pool_size: Optional[int] = None,
    timeout: float = START_TIMEOUT_S,
) -> str:
    """The local coordinator's URL, starting the coordinator and/or node if they are not running."""
    if cgroups not in CGROUP_MODES:
        raise errors.InvalidArgument(f"cgroups must be one of {', '.join(CGROUP_MODES)}, got {cgroups!r}")
    url = running_url(home)
    if url:
        return url
    paths = Paths(home)
    paths.dir.mkdir(parents=True, exist_ok=True)
    with _Lock(paths.lock):
        url = running_url(home)  # another process may have started it while we waited
        if url:
            return url
        coordinator_alive = pid_alive(_read_pid(paths.coordinator_pid), COORDINATOR_BIN)
        url = _read(paths.coordinator_addr) if coordinator_alive else None
        if not url:
            # A node registered with a coordinator that is gone points at a stale port.
            _stop(paths.node_pid, NODE_BIN, STOP_TIMEOUT_S)
            url = _start_coordinator(paths, timeout)
        node = _start_node(paths, url, cgroups, pool_size)
        _wait_node(paths, url, node, timeout)
        return url


def down(home: Optional[Path] = None, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local node, then the coordinator (SIGTERM, SIGKILL after ``timeout``); True if any ran."""
    paths = Paths(home)
    if not paths.dir.is_dir():
        return False
    with _Lock(paths.lock):
        stopped_node = _stop(paths.node_pid, NODE_BIN, timeout)
        stopped_coordinator = _stop(paths.coordinator_pid, COORDINATOR_BIN, timeout)
        for path in (paths.node_addr, paths.coordinator_addr):
            path.unlink(missing_ok=True)
    config.forget_local()
    transport.POOL.clear()
    return stopped_node or stopped_coordinator


def _stop(pid_file: Path, name: str, timeout: float) -> bool:
    pid = _read_pid(pid_file)
    if not pid_alive(pid, name):
        pid_file.unlink(missing_ok=True)
        return False
    assert pid is not None
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        backoff = _Backoff(wait_s)
        while pid_alive(pid, name) and backoff.wait():
            pass
        if not pid_alive(pid, name):
            break
    else:
        raise errors.LocalClusterError(f"{name} (pid {pid}) did not exit after SIGKILL")
    pid_file.unlink(missing_ok=True)
    return True


def status(home: Optional[Path] = None) -> dict:
    """What runs: pids, liveness and addresses of the local coordinator and node."""
    paths = Paths(home)
    coordinator_pid = _read_pid(paths.coordinator_pid)
    node_pid = _read_pid(paths.node_pid)
    return {
        "home": str(paths.home),
        "node_id": paths.node_id,
        "coordinator": {
            "pid": coordinator_pid,
            "alive": pid_alive(coordinator_pid, COORDINATOR_BIN),
            "url": _read(paths.coordinator_addr),
            "log": str(paths.coordinator_log),
        },
        "node": {
            "pid": node_pid,
            "alive": pid_alive(node_pid, NODE_BIN),
            "url": _read(paths.node_addr),
            "log": str(paths.node_log),
        },
    }
