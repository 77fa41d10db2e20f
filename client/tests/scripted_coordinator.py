"""A scripted HTTP/1.1 server speaking the coordinator's job routes, for client unit tests.

It exists for what the real coordinator cannot be made to do on demand: break a result
stream before END, send a duplicate index, hold a request to watch the client's window, or
close an idle keep-alive connection.  Happy paths are tested through the real binaries in
``tests/python``.  The server runs submitted functions in-process (it is a test tool, so it
unpickles) unless a test installs its own ``on_job`` script.
"""

from __future__ import annotations

import json
import pickle
import queue
import socket
import socketserver
import threading
from array import array
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import cloudpickle

from fleetmap import frames

Request = Tuple[str, str, Dict[str, str], bytes]


def read_request(rfile) -> Optional[Request]:
    """One request (method, path, lower-cased headers, body); None at EOF."""
    line = rfile.readline()
    if not line:
        return None
    method, path, _version = line.decode().split(" ", 2)
    headers: Dict[str, str] = {}
    while True:
        header = rfile.readline().decode()
        if header in ("\r\n", "\n", ""):
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers, b""


def read_body(rfile, headers: Dict[str, str]) -> Iterator[bytes]:
    """The request body in pieces as they arrive (chunked or Content-Length)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(rfile.readline().split(b";")[0], 16)
            if size == 0:
                rfile.readline()
                return
            data = rfile.read(size)
            rfile.readline()
            yield data
    else:
        length = int(headers.get("content-length", "0"))
        if length:
            yield rfile.read(length)


def frames_of(pieces: Iterator[bytes]) -> Iterator[Tuple[int, bytes]]:
    """Frames parsed from body pieces as soon as each is complete."""
    buf = b""
    for piece in pieces:
        buf += piece
        while len(buf) >= 5:
            kind = buf[0]
            length = int.from_bytes(buf[1:5], "little")
            if len(buf) < 5 + length:
                break
            yield kind, buf[5 : 5 + length]
            buf = buf[5 + length :]


class JobState:
    """What the server saw of one job."""

    def __init__(self, spec: dict, function: bytes) -> None:
        self.spec = spec
        self.function = function
        self.inputs: "queue.Queue[Optional[Tuple[int, bytes]]]" = queue.Queue()
        self.received: List[int] = []
        self.deleted = threading.Event()

    def add_inputs(self, kind: int, body: bytes) -> None:
        if kind == frames.INPUTS:
            indices, payloads = frames.decode_items(body)
            for index, payload in zip(indices, payloads):
                self.received.append(index)
                self.inputs.put((index, bytes(payload)))
        elif kind == frames.INPUTS_END:
            self.inputs.put(None)


def run_inputs(job: JobState) -> Iterator[bytes]:
    """The default script: run the function on each input as it arrives, one result per frame."""
    fn = cloudpickle.loads(job.function)
    while True:
        item = job.inputs.get()
        if item is None:
            break
        index, payload = item
        value = fn(pickle.loads(payload))
        yield frames.encode_items(frames.RESULTS, array("Q", [index]), [pickle.dumps(value, 5)])
    yield frames.encode_json(frames.END, {"state": "completed", "done": len(job.received), "failed": 0})


class ScriptedCoordinator:
    """Serve on 127.0.0.1:<free port>; ``url`` is the address, ``jobs`` what was submitted."""

    def __init__(self, on_job: Callable[[JobState], Iterator[bytes]] = run_inputs) -> None:
        self.on_job = on_job
        self.jobs: Dict[str, JobState] = {}
        self.deletes: List[str] = []
        self.requests: List[Tuple[str, str]] = []
        self.reject: Optional[Tuple[int, dict]] = None
        self.connections = 0
        self.sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with outer._lock:
                    outer.connections += 1
                    outer.sockets.append(self.connection)
                while True:
                    request = read_request(self.rfile)
                    if request is None:
                        return
                    if not outer.serve(self.rfile, self.wfile, request):
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address) -> None:
                """Scripts that end in a closed connection are expected; stay quiet."""

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def drop_connections(self) -> None:
        """Close every accepted connection from the server side (as a restart would)."""
        with self._lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _json(wfile, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        wfile.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        wfile.flush()

    def serve(self, rfile, wfile, request: Request) -> bool:
        method, path, headers, _ = request
        self.requests.append((method, path))
        if method == "POST" and path == "/v1/jobs":
            parsed = frames_of(read_body(rfile, headers))
            kind, spec_body = next(parsed)
            spec = json.loads(spec_body)
            _, function = next(parsed)
            if self.reject is not None:
                for _ in parsed:
                    pass
                self._json(wfile, self.reject[0], self.reject[1])
                return True
            job = self.jobs[spec["job_id"]] = JobState(spec, bytes(function))
            for kind, body in parsed:
                job.add_inputs(kind, body)
            wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % frames.CONTENT_TYPE.encode())
            wfile.flush()
            try:
                for frame in self.on_job(job):
                    if frame is None:  # the script asks to cut the stream here
                        return False
                    wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                    wfile.flush()
                wfile.write(b"0\r\n\r\n")
                wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return False
            return True
        if method == "POST" and path.endswith("/inputs"):
            job_id = path.split("/")[3]
            job = self.jobs[job_id]
            for kind, body in frames_of(read_body(rfile, headers)):
                job.add_inputs(kind, body)
            wfile.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            wfile.flush()
            return True
        if method == "DELETE":
            job_id = path.rsplit("/", 1)[1]
            self.deletes.append(job_id)
            job = self.jobs.get(job_id)
            if job is not None:
                job.deleted.set()
                job.inputs.put(None)
            self._json(wfile, 202, {"job_id": job_id, "state": "cancelled"})
            return True
        if method == "GET" and path == "/v1/health":
            self._json(wfile, 200, {"status": "ok", "version": "test"})
            return True
        self._json(wfile, 404, {"error": {"code": "not_found", "message": f"no route {method} {path}"}})
        return True


