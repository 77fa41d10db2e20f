"""fleetmap scale benchmark: a coordinator and many fleetmapd daemons on this machine.

Usage: python3 benches/bench_fleet.py [--nodes 20] [--slots 50] [--million 1000000] [--json FILE]

Scenarios (each prints its figure next to the issue's target; this reports, it does not assert):

1. fleet latency: ``--nodes`` daemons, each advertising ``--slots`` *simulated* slots through the
   test-only flag ``--test-only-simulated-slots`` (instances share the real CPUs, cgroups off),
   with warm pools of that many workers each; a print-only job of nodes*slots inputs end to end,
   best and median of several warm runs (target: 1,000 inputs over 1,000 slots < 1 s), next to
   ``multiprocessing.Pool`` with the same number of processes doing the same;
2. coordinator CPU per node heartbeat: the coordinator's CPU time (utime+stime from /proc) while
   the fleet idles and heartbeats, per heartbeat received;
3. one large job through 3 real-capacity daemons: ``--million`` trivial inputs end to end, the
   coordinator's peak RSS (VmHWM; target <= 200 MB) and its CPU time per input.
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetmap import remote_parallel_map
from fleetmap import local_cluster

TICKS = os.sysconf("SC_CLK_TCK")


def print_only(x):
    print(x)


def trivial(x):
    return x + 1


def bin_dir() -> Path:
    return Path(local_cluster.find_binary(local_cluster.COORDINATOR_BIN)).parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_file(path: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().startswith("http://"):
            return path.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"no address in {path} after {timeout} s")


class Fleet:
    """A coordinator and daemons in a temporary directory; stopped on exit."""

    def __init__(self, nodes: int, slots: int, pool: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fleetmap-bench-"))
        self.procs = []
        bins = bin_dir()
        addr = self.dir / "coordinator.addr"
        log = open(self.dir / "coordinator.log", "w")
        self.coordinator = subprocess.Popen(
            [str(bins / "fleetmap-coordinator"), "--listen", "127.0.0.1:0", "--addr-file", str(addr), "--db", str(self.dir / "c.db")],
            stdout=log, stderr=log,
        )
        self.procs.append(self.coordinator)
        self.url = wait_file(addr, self.coordinator, 10)
        for i in range(nodes):
            state = self.dir / f"node{i}"
            state.mkdir()
            command = [
                str(bins / "fleetmapd"), "--listen", "127.0.0.1:0", "--addr-file", str(state / "addr"),
                "--coordinator", self.url, "--node-id", f"bench-{os.getpid()}-{i}",
                "--state-dir", str(state / "state"), "--worker-python", sys.executable,
                "--pool-size", str(pool),
            ]
            if slots:
                command += ["--cgroups", "off", "--test-only-simulated-slots", str(slots)]
            log = open(state / "daemon.log", "w")
            proc = subprocess.Popen(command, stdout=log, stderr=log)
            self.procs.append(proc)
            wait_file(state / "addr", proc, 120)
        os.environ["FLEETMAP_COORDINATOR"] = self.url

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def scenario_fleet_latency(args, out):
    fleet = Fleet(args.nodes, args.slots, args.pool or args.slots)
    try:
        n = args.nodes * args.slots
        time.sleep(2)  # pools fill, heartbeats settle
        runs = []
        for _ in range(args.runs + 1):
            t0 = time.perf_counter()
            remote_parallel_map(print_only, range(n))
            runs.append(time.perf_counter() - t0)
        warm = runs[1:]
        out["fleet_print_job_s"] = {"inputs": n, "nodes": args.nodes, "slots": n, "best": min(warm), "median": statistics.median(warm), "first": runs[0]}
        print(f"print-only job, {n} inputs over {args.nodes} daemons x {args.slots} simulated slots: best {min(warm):.3f} s, median {statistics.median(warm):.3f} s (first {runs[0]:.3f} s); target < 1 s")
        # Heartbeat cost: the fleet idles, every daemon heartbeats once a second.
        before = cpu_seconds(fleet.coordinator.pid)
        idle = args.idle_s
        time.sleep(idle)
        spent = cpu_seconds(fleet.coordinator.pid) - before
        beats = args.nodes * idle
        out["coordinator_cpu_per_heartbeat_us"] = spent / beats * 1e6
        print(f"coordinator CPU per node heartbeat: {spent / beats * 1e6:.1f} us ({spent:.3f} s over {beats} heartbeats)")
    finally:
        fleet.stop()
    with mp.Pool(min(n, args.pool_procs)) as pool:
        pool.map(print_only, range(pool._processes))
        t0 = time.perf_counter()
        pool.map(print_only, range(n))
        t = time.perf_counter() - t0
    out["pool_print_job_s"] = t
    print(f"multiprocessing.Pool({min(n, args.pool_procs)}) same job: {t:.3f} s")


def scenario_million(args, out):
    fleet = Fleet(3, 0, 2)
    try:
        time.sleep(1)
        n = args.million
        cpu0 = cpu_seconds(fleet.coordinator.pid)
        t0 = time.perf_counter()
        count = 0
        for value in remote_parallel_map(trivial, range(n), generator=True):
            count += 1
        took = time.perf_counter() - t0
        cpu = cpu_seconds(fleet.coordinator.pid) - cpu0
        rss = peak_rss_mb(fleet.coordinator.pid)
        assert count == n
        out["million"] = {"inputs": n, "seconds": took, "coordinator_peak_rss_mb": rss, "coordinator_cpu_per_input_us": cpu / n * 1e6}
        print(f"{n} trivial inputs through 3 daemons: {took:.1f} s ({n / took:,.0f}/s); coordinator peak RSS {rss:.0f} MB (target <= 200 MB); coordinator CPU {cpu / n * 1e6:.2f} us per input")
    finally:
        fleet.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--slots", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-s", type=int, default=60)
    parser.add_argument("--pool", type=int, default=None, help="warm workers per daemon (default: --slots)")
    parser.add_argument("--pool-procs", type=int, default=1000)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = {}
    if not args.skip_fleet:
        scenario_fleet_latency(args, out)
    if not args.skip_million:
        scenario_million(args, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
