"""Benchmark one fleetmap worker: items/s of ``x * 2`` through a real Unix socket.

This script plays the daemon: it listens on a Unix socket, starts one worker process
(``fleetmap_worker.py worker``, or a zygote that forks it with ``--zygote``), assigns it the
function, pre-encodes every INPUTS chunk, then times sending them with at most ``--in-flight``
chunks outstanding (like fleetmapd) until every RESULTS item is back.  Results are checked
after the clock stops.  For reference it also times ``multiprocessing.Pool(1).map`` with the
same chunk size on the same machine, and (with ``--zygote``) the spawn-to-HELLO latency.

    python3 images/worker/bench_worker.py [--items 2000000] [--chunk 1024] [--zygote]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cloudpickle  # noqa: E402

import fleetmap_worker as fw  # noqa: E402

WORKER_PATH = os.path.join(HERE, "fleetmap_worker.py")


def double(x):
    """The benchmarked function."""
    return x * 2


def encode_chunks(items: int, chunk: int) -> list:
    """Pre-encode INPUTS frames for ``range(items)`` in chunks of ``chunk`` items."""
    frames = []
    for start in range(0, items, chunk):
        indices = range(start, min(start + chunk, items))
        payloads = [pickle.dumps(i, 5) for i in indices]
        frames.append(fw.encode_frame(fw.INPUTS, fw.encode_item_batch(indices, payloads)))
    return frames


class BenchDaemon:
    """The daemon side: a listening socket and the worker (or zygote) process."""

    def __init__(self, directory: str, use_zygote: bool) -> None:
        self.path = os.path.join(directory, "worker.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.progress = os.path.join(directory, "progress")
        with open(self.progress, "wb") as handle:
            handle.write(bytes(fw.PROGRESS_SIZE))
        mode = "zygote" if use_zygote else "worker"
        self.proc = subprocess.Popen([sys.executable, "-u", WORKER_PATH, mode, "--socket", self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.zygote = use_zygote
        if use_zygote:
            ready = json.loads(self.proc.stdout.readline())
            assert ready["event"] == "ready", ready

    def spawn(self):
        """Spawn (with a zygote) and accept one worker; return (socket, reader, seconds taken)."""
        started = time.perf_counter()
        if self.zygote:
            self.proc.stdin.write(b'{"cmd":"spawn","count":1}\n')
            self.proc.stdin.flush()
        conn, _ = self.listener.accept()
        reader = fw.FrameReader(conn.makefile("rb", buffering=1 << 20))
        kind, _body = reader.read_frame()
        elapsed = time.perf_counter() - started
        assert kind == fw.HELLO, kind
        return conn, reader, elapsed

    def close(self) -> None:
        """Stop the worker or zygote."""
        self.proc.stdin.close()
        self.proc.wait(10)
        self.listener.close()


def run_job(conn, reader, frames: list, in_flight: int, progress: str) -> tuple:
    """Assign ``double`` and stream the frames; return (seconds, RESULTS bodies)."""
    assignment = {"job_id": "bench", "slot_id": 0, "cpus": [0], "ram_bytes": 1 << 30,
                  "progress_path": progress}
    conn.sendall(fw.encode_frame(fw.ASSIGN, fw.encode_json(assignment)))
    conn.sendall(fw.encode_frame(fw.FUNCTION, cloudpickle.dumps(double)))
    kind, _body = reader.read_frame()
    assert kind == fw.READY, fw.frame_name(kind)
    bodies = []
    started = time.perf_counter()
    sent = 0
    while sent < min(in_flight, len(frames)):
        conn.sendall(frames[sent])
        sent += 1
    received = 0
    while received < len(frames):
        kind, body = reader.read_frame()
        if kind != fw.RESULTS:
            raise RuntimeError("unexpected %s frame: %r" % (fw.frame_name(kind), body[:200]))
        bodies.append(body)
        received += 1
        if sent < len(frames):
            conn.sendall(frames[sent])
            sent += 1
    elapsed = time.perf_counter() - started
    conn.sendall(fw.encode_frame(fw.SHUTDOWN))
    return elapsed, bodies


def check_results(bodies: list, items: int) -> None:
    """Check that every input came back exactly once as ``2 * x``."""
    seen = 0
    for body in bodies:
        for index, payload in fw.split_item_batch(body):
            if pickle.loads(payload) != 2 * index:
                raise AssertionError("input %d came back wrong" % index)
            seen += 1
    if seen != items:
        raise AssertionError("%d results for %d inputs" % (seen, items))


def bench_pool(items: int, chunk: int) -> float:
    """Items/s of multiprocessing.Pool(1).map over the same function and chunk size."""
    with multiprocessing.Pool(1) as pool:
        pool.map(double, range(chunk))
        started = time.perf_counter()
        pool.map(double, range(items), chunksize=chunk)
        return items / (time.perf_counter() - started)


def main() -> None:
    """Run the benchmark and print items/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2_000_000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--zygote", action="store_true", help="fork the workers from a zygote")
    parser.add_argument("--no-pool", action="store_true", help="skip the multiprocessing.Pool run")
    args = parser.parse_args()

    frames = encode_chunks(args.items, args.chunk)
    rates = []
    spawn_times = []
    with tempfile.TemporaryDirectory(prefix="fm-bench-") as directory:
        daemon = None
        for run in range(args.repeat):
            if daemon is None or not args.zygote:
                if daemon is not None:
                    daemon.close()
                directory_n = os.path.join(directory, str(run))
                os.mkdir(directory_n)
                daemon = BenchDaemon(directory_n, args.zygote)
            conn, reader, spawn_s = daemon.spawn()
            spawn_times.append(spawn_s)
            elapsed, bodies = run_job(conn, reader, frames, args.in_flight, daemon.progress)
            conn.close()
            check_results(bodies, args.items)
            rates.append(args.items / elapsed)
        daemon.close()

    print("fleetmap worker (%s): %d items of x*2 in %d-item chunks, %d in flight"
          % ("forked by zygote" if args.zygote else "worker mode", args.items, args.chunk,
             args.in_flight))
    print("  items/s: best %.0f, runs %s" % (max(rates), ", ".join("%.0f" % r for r in rates)))
    if args.zygote:
        print("  spawn -> HELLO: median %.2f ms" % (statistics.median(spawn_times) * 1000))
    if not args.no_pool:
        print("  multiprocessing.Pool(1).map, chunksize %d: %.0f items/s"
              % (args.chunk, bench_pool(args.items, args.chunk)))


if __name__ == "__main__":
    main()
