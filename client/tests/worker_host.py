"""Runs the real Python worker (images/worker/fleetmap_worker.py) over a Unix socket, acting
as the daemon for the few frames needed, so client tests can check the payload contract —
what the client pickles, the worker runs, and what the worker sends back, the client
rebuilds — without the Rust binaries."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from fleetmap import frames

WORKER = Path(__file__).resolve().parents[2] / "images" / "worker" / "fleetmap_worker.py"


def run_in_worker(function_bytes: bytes, payloads: Sequence[bytes], timeout: float = 30.0) -> List[Tuple[int, bytes]]:
    """Every frame the worker sends after READY for one chunk of ``payloads`` (indices 0..n-1)."""
    with tempfile.TemporaryDirectory(prefix="fmc-", dir="/tmp") as tmp:
        sock_path = os.path.join(tmp, "w.sock")
        progress = os.path.join(tmp, "progress")
        with open(progress, "wb") as fh:
            fh.write(b"\0" * 16)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(1)
        listener.settimeout(timeout)
        proc = subprocess.Popen([sys.executable, str(WORKER), "worker", "--socket", sock_path], cwd=tmp)
        try:
            conn, _ = listener.accept()
            conn.settimeout(timeout)
            reader = frames.FrameReader(conn.makefile("rb").read)
            kind, _ = reader.next()
            assert kind == frames.HELLO
            assign = {"job_id": "t", "slot_id": "s", "cpus": [0], "ram_bytes": 2**30, "progress_path": progress}
            conn.sendall(frames.encode_json(frames.ASSIGN, assign) + frames.encode(frames.FUNCTION, function_bytes))
            kind, body = reader.next()
            if kind == frames.FAILURE:
                return [(kind, body)]
            assert kind == frames.READY, kind
            conn.sendall(frames.encode_items(frames.INPUTS, array("Q", range(len(payloads))), list(payloads)))
            out: List[Tuple[int, bytes]] = []
            accounted = 0
            while accounted < len(payloads):
                frame = reader.next()
                if frame is None:
                    break
                out.append(frame)
                if frame[0] == frames.RESULTS:
                    accounted += len(frames.decode_items(frame[1])[0])
                elif frame[0] == frames.FAILURE:
                    accounted += 1
            conn.sendall(frames.encode(frames.SHUTDOWN))
            conn.close()
            return out
        finally:
            listener.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def failures(out: List[Tuple[int, bytes]]) -> List[Tuple[int, dict, bytes]]:
    """The decoded FAILURE frames of ``run_in_worker``'s answer."""
    return [frames.decode_failure(body) for kind, body in out if kind == frames.FAILURE]


def results(out: List[Tuple[int, bytes]]) -> List[Tuple[int, Any]]:
    """``(index, payload bytes)`` of every RESULTS entry."""
    items = []
    for kind, body in out:
        if kind == frames.RESULTS:
            indices, payloads = frames.decode_items(body)
            items.extend(zip(indices, (bytes(p) for p in payloads)))
    return items


def outputs(out: List[Tuple[int, bytes]]) -> List[Tuple[int, int, str]]:
    """The decoded OUTPUT frames."""
    return [frames.decode_output(body) for kind, body in out if kind == frames.OUTPUT]


