"""A stand-in for fleetmapd in tests: its own frame codec, a listening Unix socket, and real
zygote / worker processes running images/worker/fleetmap_worker.py.

The codec here is written independently of the worker module (plain ``struct``), so a bug in
the worker's codec cannot hide behind the same bug on the test side.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

WORKER_PY = Path(__file__).resolve().parent.parent / "fleetmap_worker.py"
TIMEOUT = 20.0
NO_INDEX = 2**64 - 1

FUNCTION = 0x02
INPUTS = 0x03
RESULTS = 0x10
FAILURE = 0x11
OUTPUT = 0x12
HELLO = 0x20
ASSIGN = 0x21
READY = 0x22
SHUTDOWN = 0x23

EXIT_UNAVAILABLE = 69
EXIT_PROTOCOL = 76


def frame(kind: int, body: bytes = b"") -> bytes:
    """Encode one frame: kind u8, body length u32 little-endian, body."""
    return struct.pack("<BI", kind, len(body)) + body


def item_batch(items) -> bytes:
    """Encode an item batch from ``(index, payload_bytes)`` pairs."""
    items = list(items)
    head = struct.pack("<I", len(items))
    indices = b"".join(struct.pack("<Q", index) for index, _ in items)
    lengths = b"".join(struct.pack("<I", len(payload)) for _, payload in items)
    return head + indices + lengths + b"".join(payload for _, payload in items)


def parse_item_batch(body: bytes) -> list:
    """Decode an item batch into ``(index, payload_bytes)`` pairs, checking its length."""
    (count,) = struct.unpack_from("<I", body, 0)
    indices = struct.unpack_from("<%dQ" % count, body, 4)
    lengths = struct.unpack_from("<%dI" % count, body, 4 + 8 * count)
    offset = 4 + 12 * count
    assert len(body) == offset + sum(lengths), "RESULTS body length does not match its table"
    items = []
    for index, length in zip(indices, lengths):
        items.append((index, body[offset:offset + length]))
        offset += length
    return items


def parse_failure(body: bytes):
    """Decode a FAILURE body into ``(index, info, exc_bytes)``."""
    index, json_len = struct.unpack_from("<QI", body, 0)
    info = json.loads(body[12:12 + json_len].decode("utf-8"))
    return index, info, body[12 + json_len:]


def parse_output(body: bytes):
    """Decode an OUTPUT body into ``(index, stream, text)``."""
    index, stream = struct.unpack_from("<QB", body, 0)
    return index, stream, body[9:].decode("utf-8")


def pickled(values, indices=None) -> list:
    """Return ``(index, pickle.dumps(value))`` pairs; indices default to 0, 1, 2, ..."""
    values = list(values)
    if indices is None:
        indices = range(len(values))
    return [(index, pickle.dumps(value, 5)) for index, value in zip(indices, values)]


def make_progress_file(directory) -> str:
    """Create a 16-byte zeroed progress file and return its path."""
    path = os.path.join(str(directory), "progress-%d" % time.monotonic_ns())
    with open(path, "wb") as handle:
        handle.write(bytes(16))
    return path


def read_progress(path: str):
    """Return ``(index_plus_one, start_ns)`` from a progress file."""
    with open(path, "rb") as handle:
        return struct.unpack("<QQ", handle.read(16))


class Collected:
    """What a worker sent for a set of inputs."""

    def __init__(self) -> None:
        self.results = {}
        self.failures = {}
        self.outputs = []
        self.kinds = []
        self.results_frames = 0

    def output_text(self, index: int, stream: int = 1) -> str:
        """All text sent for ``index`` on ``stream``, in order."""
        return "".join(text for i, s, text in self.outputs if i == index and s == stream)


class WorkerConn:
    """The daemon's end of one worker's socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.max_frame = 64 * 1024 * 1024
        self._file = sock.makefile("rb")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.peer_pid = struct.unpack("3i", creds)[0]
        kind, body = self.read_frame()
        assert kind == HELLO, "the first frame must be HELLO, got 0x%02x" % kind
        self.hello = json.loads(body)
        self.pid = self.hello["pid"]
        assert self.pid == self.peer_pid, "HELLO pid differs from the socket's peer pid"
        self.progress_path = None

    def send(self, kind: int, body: bytes = b"") -> None:
        """Send one frame."""
        self.sock.sendall(frame(kind, body))

    def send_raw(self, data: bytes) -> None:
        """Send arbitrary bytes."""
        self.sock.sendall(data)

    def read_frame(self):
        """Read one frame; None at EOF."""
        header = self._file.read(5)
        if not header:
            return None
        assert len(header) == 5, "the worker's stream ended inside a frame header"
        kind, length = struct.unpack("<BI", header)
        assert length <= self.max_frame, "the worker sent a %d-byte frame over the limit" % length
        body = self._file.read(length)
        assert len(body) == length, "the worker's stream ended inside a frame body"
        return kind, body

    def assign(self, function_bytes: bytes, directory, **extra) -> None:
        """Send ASSIGN (with a fresh progress file in ``directory``) and FUNCTION."""
        self.progress_path = make_progress_file(directory)
        assignment = {"job_id": "job-1", "slot_id": 1, "cpus": [0], "ram_bytes": 1 << 30,
                      "progress_path": self.progress_path}
        assignment.update(extra)
        self.send(ASSIGN, json.dumps(assignment).encode())
        self.send(FUNCTION, function_bytes)

    def expect_ready(self, outputs=None) -> dict:
        """Read frames up to READY (collecting OUTPUT frames into ``outputs``) and return it."""
        while True:
            kind, body = self.read_frame()
            if kind == OUTPUT and outputs is not None:
                outputs.append(parse_output(body))
                continue
            assert kind == READY, "expected READY, got 0x%02x %r" % (kind, body[:300])
            return json.loads(body)

    def start(self, function_bytes: bytes, directory) -> dict:
        """Assign a function and wait for READY."""
        self.assign(function_bytes, directory)
        return self.expect_ready()

    def send_inputs(self, items) -> None:
        """Send one INPUTS chunk."""
        self.send(INPUTS, item_batch(items))

    def collect(self, expected, collected: Collected = None) -> Collected:
        """Read frames until every index in ``expected`` has one result or one failure."""
        collected = collected or Collected()
        waiting = set(expected)
        while waiting:
            got = self.read_frame()
            assert got is not None, "the worker closed its socket with %d inputs pending" % len(waiting)
            kind, body = got
            collected.kinds.append(kind)
            if kind == RESULTS:
                collected.results_frames += 1
                for index, payload in parse_item_batch(body):
                    assert index in waiting, "unexpected or duplicate result for input %d" % index
                    waiting.discard(index)
                    collected.results[index] = pickle.loads(payload)
            elif kind == FAILURE:
                index, info, exc = parse_failure(body)
                assert index in waiting, "unexpected or duplicate failure for input %d" % index
                waiting.discard(index)
                collected.failures[index] = (info, exc)
            elif kind == OUTPUT:
                collected.outputs.append(parse_output(body))
            else:
                raise AssertionError("unexpected frame 0x%02x from the worker" % kind)
        return collected

    def run(self, items) -> Collected:
        """Send one chunk and collect everything it produced."""
        items = list(items)
        self.send_inputs(items)
        return self.collect([index for index, _ in items])

    def read_until_eof(self) -> list:
        """Read frames until the worker closes the socket; return them."""
        frames = []
        while True:
            got = self.read_frame()
            if got is None:
                return frames
            frames.append(got)

    def close(self) -> None:
        """Close the daemon's end."""
        self._file.close()
        self.sock.close()


class Listener:
    """The daemon's listening Unix socket."""

    def __init__(self, directory) -> None:
        self.path = os.path.join(str(directory), "worker.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self.sock.settimeout(TIMEOUT)

    def accept(self) -> WorkerConn:
        """Accept one worker connection and read its HELLO."""
        conn, _ = self.sock.accept()
        return WorkerConn(conn)

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def _worker_env() -> dict:
    """Environment for worker processes: no faulthandler, so a segfault is a plain signal."""
    env = dict(os.environ)
    env.pop("PYTHONFAULTHANDLER", None)
    return env


class ZygoteProcess:
    """A real zygote subprocess plus the daemon's socket; events are read on a thread."""

    def __init__(self, directory, extra_args=()) -> None:
        self.directory = str(directory)
        self.listener = Listener(directory)
        self.stderr_path = os.path.join(self.directory, "zygote.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(WORKER_PY), "zygote", "--socket", self.listener.path,
             *extra_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=_worker_env())
        self._events = queue.Queue()
        self._seen = []
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()
        self.children = []
        self.ready = self.next_event()
        assert self.ready["event"] == "ready", self.ready

    def _read_events(self) -> None:
        """Parse every stdout line as a JSON event (a non-JSON line becomes an error entry)."""
        for line in self.proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                self._events.put({"event": "invalid", "line": line})
        self._events.put({"event": "eof"})

    def next_event(self, timeout: float = TIMEOUT) -> dict:
        """Return the next event not yet consumed."""
        event = self._events.get(timeout=timeout)
        assert event["event"] != "invalid", "the zygote wrote a non-JSON line: %r" % event["line"]
        self._seen.append(event)
        return event

    def wait_event(self, predicate, timeout: float = TIMEOUT) -> dict:
        """Return the first event (seen before or arriving) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        for event in self._seen:
            if predicate(event):
                return event
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no matching zygote event within %.0f s" % timeout
            event = self.next_event(remaining)
            if predicate(event):
                return event

    def command(self, line: bytes) -> None:
        """Write raw bytes to the zygote's stdin."""
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def spawn(self, count: int = 1) -> list:
        """Ask for ``count`` workers and return their pids from the ``spawned`` events."""
        already = {e["pid"] for e in self._seen if e["event"] == "spawned"}
        self.command(json.dumps({"cmd": "spawn", "count": count}).encode() + b"\n")
        pids = []
        while len(pids) < count:
            event = self.wait_event(lambda e: e["event"] == "spawned" and e["pid"] not in already
                                    and e["pid"] not in pids)
            pids.append(event["pid"])
        self.children.extend(pids)
        return pids

    def spawn_worker(self) -> WorkerConn:
        """Spawn one worker and accept its connection."""
        (pid,) = self.spawn(1)
        conn = self.listener.accept()
        assert conn.pid == pid, "the connected worker is not the one just spawned"
        return conn

    def wait_exit(self, pid: int, timeout: float = TIMEOUT) -> dict:
        """Return the ``exited`` event of ``pid``."""
        return self.wait_event(lambda e: e["event"] == "exited" and e["pid"] == pid, timeout)

    def stderr_text(self) -> str:
        """Everything the zygote and its workers wrote on stderr so far."""
        with open(self.stderr_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def close(self) -> None:
        """Kill leftover workers, close stdin and wait for the zygote to exit."""
        exited = {e["pid"] for e in self._seen if e["event"] == "exited"}
        for pid in self.children:
            if pid not in exited:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        self.listener.close()


class WorkerProcess:
    """One ``fleetmap_worker.py worker --socket PATH`` subprocess (no zygote)."""

    def __init__(self, directory, extra_args=(), socket_path=None) -> None:
        self.listener = Listener(directory) if socket_path is None else None
        path = socket_path if socket_path is not None else self.listener.path
        self.stderr_path = os.path.join(str(directory), "worker.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(WORKER_PY), "worker", "--socket", path, *extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=_worker_env())

    def accept(self) -> WorkerConn:
        """Accept the worker's connection."""
        conn = self.listener.accept()
        assert conn.pid == self.proc.pid, "HELLO pid is not the worker process's pid"
        return conn

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the worker to exit and return its exit status."""
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        """What the worker wrote on stderr."""
        with open(self.stderr_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def close(self) -> None:
        """Kill the worker if still running and release its resources."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        if self.listener is not None:
            self.listener.close()
