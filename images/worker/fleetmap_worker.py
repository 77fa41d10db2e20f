"""fleetmap worker: runs a user's Python function over inputs sent by the node daemon.

The node daemon ``fleetmapd`` embeds this file and runs it as

    python -u fleetmap_worker.py zygote --socket PATH [--max-frame-bytes N]

The **zygote** imports everything a worker needs, then forks a fresh worker for every
``{"cmd":"spawn","count":N}`` line it reads on stdin and reports ``ready``, ``spawned`` and
``exited`` events as JSON lines on stdout (docs/protocol.md section 4).  It reaps its children
from a SIGCHLD wake-up pipe, and exits when stdin reaches EOF.

A **worker** (a forked child, or ``python fleetmap_worker.py worker --socket PATH`` for one
worker without a zygote) connects to the daemon's Unix socket and speaks the frame protocol of
docs/protocol.md section 1: HELLO; then ASSIGN + FUNCTION, answered by READY (or FAILURE
``function_load``); then INPUTS chunks, each answered by FAILURE frames as they happen and one
RESULTS frame; OUTPUT frames carry what the function prints, tagged with its input's index;
SHUTDOWN or the socket's EOF ends it with exit status 0.

Choices the protocol leaves open, made here:
- an input whose payload cannot be unpickled is a FAILURE ``exception`` ("input N could not be
  unpickled on the worker: ..."); the rest of its chunk still runs;
- ``sys.exit(code)`` inside the function ends the worker with that status (the daemon then
  reports ``exited``), after flushing the input's output;
- the pickled exception of a FAILURE is empty when it cannot be pickled *and unpickled back*
  (so the client never receives bytes it cannot rebuild), and the texts are shortened if the
  frame would pass the frame limit;
- a result that pickles to more than a frame can carry is FAILURE ``unpicklable_result``; a
  chunk whose successes exceed one frame is sent as several RESULTS frames;
- text written to the file descriptors directly (C extensions, subprocesses) is not captured:
  fd 1 is /dev/null in a forked worker and fd 2 is the daemon's log.

Exit statuses of a worker: 0 after SHUTDOWN, socket EOF, or a function that could not be
loaded; the function's own status when it calls ``sys.exit``/``os._exit``; 69 when the socket
cannot be reached; 70 on an internal error; 74 when the progress file cannot be mapped; 76 when
the daemon sends a malformed or unexpected frame.  Diagnostics go to file descriptor 2.

Only the standard library and cloudpickle (>= 2.0) are needed.
"""

from __future__ import annotations

import argparse
import array
import codecs
import errno
import gc
import io
import json
import mmap
import os
import pickle
import platform
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from itertools import accumulate, islice

import cloudpickle

try:
    import _signal as _raw_signal  # signal.signal minus the enum conversion of its result
except ImportError:  # pragma: no cover - every CPython has it
    _raw_signal = signal

PROTOCOL_VERSION = 1
_PYTHON_VERSION = platform.python_version()
NO_INDEX = 2**64 - 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

# Frame kinds (docs/protocol.md section 1).
SPEC = 0x01
FUNCTION = 0x02
INPUTS = 0x03
INPUTS_END = 0x04
RESULTS = 0x10
FAILURE = 0x11
OUTPUT = 0x12
STATUS = 0x13
END = 0x14
HELLO = 0x20
ASSIGN = 0x21
READY = 0x22
SHUTDOWN = 0x23

FRAME_NAMES = {
    SPEC: "SPEC",
    FUNCTION: "FUNCTION",
    INPUTS: "INPUTS",
    INPUTS_END: "INPUTS_END",
    RESULTS: "RESULTS",
    FAILURE: "FAILURE",
    OUTPUT: "OUTPUT",
    STATUS: "STATUS",
    END: "END",
    HELLO: "HELLO",
    ASSIGN: "ASSIGN",
    READY: "READY",
    SHUTDOWN: "SHUTDOWN",
}

STDOUT = 1
STDERR = 2

PROGRESS_SIZE = 16

EXIT_OK = 0
EXIT_UNAVAILABLE = 69
EXIT_INTERNAL = 70
EXIT_IOERR = 74
EXIT_PROTOCOL = 76

HEADER = struct.Struct("<BI")
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PROGRESS = struct.Struct("<QQ")
RESULTS_EVERY_NS = 50_000_000
"""Longest a success waits in a running chunk before its RESULTS frame goes out (the daemon
sizes chunks to about 100 ms of work; see its ``job/sizing.rs``)."""
_FAILURE_HEAD = struct.Struct("<QI")
_OUTPUT_HEAD = struct.Struct("<QB")
_BATCH_ENTRY_SIZE = 12
_LITTLE_ENDIAN = sys.byteorder == "little"
_SEND_COPY_LIMIT = 64 * 1024

if array.array("Q").itemsize != 8 or array.array("I").itemsize != 4:
    raise ImportError("fleetmap_worker needs array typecodes 'Q' of 8 bytes and 'I' of 4 bytes")


# --------------------------------------------------------------------------------------------
# Frame codec
# --------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A frame stream that breaks docs/protocol.md; ``code`` names the failure like agent-proto."""

    FRAME_TOO_LARGE = "FrameTooLarge"
    UNKNOWN_KIND = "UnknownKind"
    TRUNCATED = "Truncated"
    MALFORMED = "Malformed"
    UNEXPECTED = "Unexpected"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame_name(kind: int) -> str:
    """Return the protocol name of a frame kind, or its hex value when it is unknown."""
    return FRAME_NAMES.get(kind, "0x%02x" % kind)


def encode_frame(kind: int, body: bytes = b"") -> bytes:
    """Return one frame: the 5-byte header (kind, little-endian body length) then the body."""
    return HEADER.pack(kind, len(body)) + bytes(body)


def _le_bytes(values: array.array) -> bytes:
    """Return an array's items as little-endian bytes whatever the host's byte order."""
    if _LITTLE_ENDIAN:
        return values.tobytes()
    swapped = array.array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def encode_item_batch(indices, payloads) -> bytes:
    """Encode an item batch body: count, u64 indices, u32 lengths, concatenated payloads."""
    index_array = array.array("Q", indices)
    if len(index_array) != len(payloads):
        raise ValueError("an item batch needs one index per payload, got %d indices and %d payloads"
                         % (len(index_array), len(payloads)))
    length_array = array.array("I", [len(p) for p in payloads])
    parts = [_U32.pack(len(index_array)), _le_bytes(index_array), _le_bytes(length_array)]
    parts.extend(payloads)
    return b"".join(parts)


def decode_item_batch(body):
    """Check an item batch body and return ``(indices, lengths, payload_start)``.

    ``indices`` is an ``array('Q')``, ``lengths`` an ``array('I')``; payload ``i`` starts at
    ``payload_start + sum(lengths[:i])``.  Raises ProtocolError (Malformed) unless the body
    length is exactly ``4 + 12*count + sum(lengths)``.
    """
    size = len(body)
    if size < 4:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "item batch is %d bytes, shorter than its 4-byte count" % size)
    count = _U32.unpack_from(body, 0)[0]
    lengths_at = 4 + 8 * count
    payload_start = lengths_at + 4 * count
    if payload_start > size:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "item batch declares %d items but its %d-byte body cannot hold their "
                            "%d-byte index and length table" % (count, size, payload_start - 4))
    indices = array.array("Q")
    indices.frombytes(body[4:lengths_at])
    lengths = array.array("I")
    lengths.frombytes(body[lengths_at:payload_start])
    if not _LITTLE_ENDIAN:
        indices.byteswap()
        lengths.byteswap()
    expected = payload_start + sum(lengths)
    if expected != size:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "item batch with count %d must be %d bytes but is %d bytes"
                            % (count, expected, size))
    return indices, lengths, payload_start


def split_item_batch(body) -> list:
    """Decode an item batch body into a list of ``(index, payload_bytes)`` pairs."""
    indices, lengths, offset = decode_item_batch(body)
    view = memoryview(body)
    items = []
    for index, length in zip(indices, lengths):
        items.append((index, bytes(view[offset:offset + length])))
        offset += length
    return items


def encode_failure(index: int, info: dict, exc: bytes = b"") -> bytes:
    """Encode a FAILURE body: index, JSON FailureInfo length and text, pickled exception bytes."""
    text = json.dumps(info, separators=(",", ":")).encode("utf-8")
    return _FAILURE_HEAD.pack(index, len(text)) + text + exc


def decode_failure(body):
    """Decode a FAILURE body into ``(index, info_dict, exc_bytes)``; raises ProtocolError."""
    if len(body) < _FAILURE_HEAD.size:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "FAILURE body is %d bytes, shorter than its 12-byte head" % len(body))
    index, json_len = _FAILURE_HEAD.unpack_from(body, 0)
    end = _FAILURE_HEAD.size + json_len
    if end > len(body):
        raise ProtocolError(ProtocolError.MALFORMED,
                            "FAILURE body declares %d bytes of JSON but has %d"
                            % (json_len, len(body) - _FAILURE_HEAD.size))
    info = decode_json_object(bytes(body[_FAILURE_HEAD.size:end]), "FAILURE")
    return index, info, bytes(body[end:])


def encode_output(index: int, stream: int, text: str) -> bytes:
    """Encode an OUTPUT body: index, stream (1 stdout, 2 stderr), UTF-8 text."""
    return _OUTPUT_HEAD.pack(index, stream) + text.encode("utf-8", "replace")


def decode_output(body):
    """Decode an OUTPUT body into ``(index, stream, text)``; raises ProtocolError."""
    if len(body) < _OUTPUT_HEAD.size:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "OUTPUT body is %d bytes, shorter than its 9-byte head" % len(body))
    index, stream = _OUTPUT_HEAD.unpack_from(body, 0)
    if stream not in (STDOUT, STDERR):
        raise ProtocolError(ProtocolError.MALFORMED, "OUTPUT stream must be 1 or 2, got %d" % stream)
    return index, stream, bytes(body[_OUTPUT_HEAD.size:]).decode("utf-8", "replace")


def encode_json(value: dict) -> bytes:
    """Encode a JSON frame body compactly as UTF-8."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def decode_json_object(body, what: str) -> dict:
    """Decode a JSON object frame body, raising ProtocolError (Malformed) naming the frame."""
    try:
        value = json.loads(bytes(body).decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError(ProtocolError.MALFORMED, "%s body is not valid JSON: %s" % (what, exc))
    except RecursionError:
        # json.loads recurses per nesting level: a deeply nested body is malformed, not a crash.
        raise ProtocolError(ProtocolError.MALFORMED,
                            "%s body nests JSON deeper than this interpreter can parse" % what)
    if not isinstance(value, dict):
        raise ProtocolError(ProtocolError.MALFORMED,
                            "%s body must be a JSON object, got %s" % (what, type(value).__name__))
    return value


class FrameReader:
    """Reads whole frames from a buffered binary stream, enforcing the body size limit."""

    def __init__(self, stream, max_body: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._read = stream.read
        self.max_body = max_body

    def read_frame(self):
        """Return the next ``(kind, body)``, or None at a clean EOF between frames.

        Raises ProtocolError for an unknown kind, a body over the limit, or a stream that ends
        inside a frame.
        """
        header = self._read(HEADER_SIZE)
        if not header:
            return None
        if len(header) < HEADER_SIZE:
            raise ProtocolError(ProtocolError.TRUNCATED,
                                "the stream ended inside a frame header after %d of %d bytes"
                                % (len(header), HEADER_SIZE))
        kind, length = HEADER.unpack(header)
        if kind not in FRAME_NAMES:
            raise ProtocolError(ProtocolError.UNKNOWN_KIND, "unknown frame kind 0x%02x" % kind)
        if length > self.max_body:
            raise ProtocolError(ProtocolError.FRAME_TOO_LARGE,
                                "%s frame of %d bytes is too large; the limit is %d bytes"
                                % (frame_name(kind), length, self.max_body))
        body = self._read(length) if length else b""
        if len(body) != length:
            raise ProtocolError(ProtocolError.TRUNCATED,
                                "the stream ended inside a %s frame after %d of %d body bytes"
                                % (frame_name(kind), len(body), length))
        return kind, body


# --------------------------------------------------------------------------------------------
# Connection and output capture
# --------------------------------------------------------------------------------------------


class Connection:
    """A worker's socket to the daemon: frame reads, and writes that are safe from any thread.

    One re-entrant lock serialises every write (the worker loop's and the captured streams').
    A write re-entered from the same thread (a ``__del__`` or signal handler that prints while
    a frame is being sent) is deferred until the frame in progress is complete, so frames are
    never interleaved.
    """

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self.lock = threading.RLock()
        self._busy = False
        self._deferred = []
        self._reader = FrameReader(sock.makefile("rb", buffering=256 * 1024), max_frame)

    def read_frame(self):
        """Return the next ``(kind, body)`` from the daemon, or None at EOF."""
        return self._reader.read_frame()

    def send_parts(self, parts) -> None:
        """Send already-encoded bytes (one or more whole frames) atomically with respect to
        other writers."""
        with self.lock:
            if self._busy:
                self._deferred.append(b"".join(parts))
                return
            self._busy = True
            try:
                sendall = self.sock.sendall
                for part in parts:
                    sendall(part)
                while self._deferred:
                    sendall(self._deferred.pop(0))
            finally:
                self._busy = False

    def send(self, kind: int, body: bytes = b"") -> None:
        """Send one frame; the body must fit the frame limit."""
        if len(body) > self.max_frame:
            raise ValueError("%s frame of %d bytes exceeds the %d-byte frame limit"
                             % (frame_name(kind), len(body), self.max_frame))
        header = HEADER.pack(kind, len(body))
        if len(body) <= _SEND_COPY_LIMIT:
            self.send_parts((header + body,))
        else:
            self.send_parts((header, body))


class Attribution:
    """The input index that output written right now belongs to (NO_INDEX between inputs)."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = NO_INDEX


class CapturedOutput(io.TextIOBase):
    """A text stream that sends what is written as OUTPUT frames tagged with an input index.

    Text is sent at every newline (up to the last newline written), whenever ``flush`` is
    called, and when an unfinished line grows past MAX_PENDING_CHARS (so memory stays bounded);
    the worker flushes at the end of every input.  Text is tagged with the index that
    was current when it was written, so a partial line left over from one input is sent before
    text written for the next.  Safe to use from several threads.
    """

    MAX_PENDING_CHARS = 64 * 1024

    encoding = "utf-8"
    errors = "replace"
    line_buffering = True
    newlines = None

    def __init__(self, conn: Connection, stream: int, attribution: Attribution, name: str) -> None:
        super().__init__()
        self._conn = conn
        self._stream = stream
        self._attribution = attribution
        self._name = name
        self._lock = conn.lock
        self._busy = False
        self._pending = []
        self._pending_chars = 0
        self._pending_index = NO_INDEX
        self.buffer = CapturedBytes(self)

    @property
    def name(self) -> str:
        """The stream's display name."""
        return self._name

    def writable(self) -> bool:
        """Captured streams are always writable."""
        return True

    def isatty(self) -> bool:
        """Captured streams are never terminals."""
        return False

    def write(self, text: str) -> int:
        """Buffer ``text`` and send every complete line; return the number of characters."""
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        if not text:
            return 0
        with self._lock:
            if self._busy:
                self._pending.append(text)
                self._pending_chars += len(text)
                return len(text)
            self._busy = True
            try:
                index = self._attribution.index
                if self._pending and self._pending_index != index:
                    self._send_pending()
                self._pending_index = index
                self._pending.append(text)
                self._pending_chars += len(text)
                if "\n" in text:
                    self._send_lines()
                elif self._pending_chars > self.MAX_PENDING_CHARS:
                    self._send_pending()
            finally:
                self._busy = False
        return len(text)

    def flush(self) -> None:
        """Send any buffered partial line now."""
        if not self._pending:
            return
        with self._lock:
            if self._busy or not self._pending:
                return
            self._busy = True
            try:
                self._send_pending()
            finally:
                self._busy = False

    def _send_pending(self) -> None:
        """Send everything buffered under its index; the caller holds the lock."""
        parts, self._pending = self._pending, []
        self._pending_chars = 0
        self._send_text(self._pending_index, "".join(parts))

    def _send_lines(self) -> None:
        """Send the buffer up to its last newline and keep the rest; the caller holds the lock."""
        parts, self._pending = self._pending, []
        text = "".join(parts)
        cut = text.rfind("\n") + 1
        self._pending_chars = len(text) - cut
        if cut < len(text):
            self._pending.insert(0, text[cut:])
        self._send_text(self._pending_index, text[:cut])

    def _send_text(self, index: int, text: str) -> None:
        """Send text as one or more OUTPUT frames, each within the frame limit."""
        data = text.encode("utf-8", "replace")
        limit = self._conn.max_frame - _OUTPUT_HEAD.size
        head = _OUTPUT_HEAD.pack(index, self._stream)
        start = 0
        while start < len(data):
            end = min(start + limit, len(data))
            while end < len(data) and end > start + 1 and (data[end] & 0xC0) == 0x80:
                end -= 1
            piece = data[start:end]
            self._conn.send_parts((HEADER.pack(OUTPUT, len(head) + len(piece)) + head + piece,))
            start = end


class CapturedBytes(io.RawIOBase):
    """The ``.buffer`` of a captured stream: decodes UTF-8 bytes and writes the text."""

    def __init__(self, text_stream: CapturedOutput) -> None:
        super().__init__()
        self._text = text_stream
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self) -> bool:
        """Always writable."""
        return True

    def write(self, data) -> int:
        """Decode ``data`` (keeping an incomplete UTF-8 sequence for later) and write it."""
        data = bytes(data)
        with self._text._lock:
            text = self._decoder.decode(data)
        if text:
            self._text.write(text)
        return len(data)

    def flush(self) -> None:
        """Flush the text stream."""
        self._text.flush()


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------


def describe_exception(exc: BaseException) -> str:
    """Return ``TypeName: message`` (or just the name), even when ``str(exc)`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "<str() of the exception failed>"
    name = type(exc).__qualname__
    return "%s: %s" % (name, text) if text else name


def format_traceback(exc: BaseException, skip_caller: bool = True) -> str:
    """Format an exception with its chain; ``skip_caller`` drops the worker's own frame."""
    tb = exc.__traceback__
    if skip_caller and tb is not None:
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        return "%s\n(formatting the traceback failed)\n" % describe_exception(exc)


def pickle_exception(exc: BaseException, limit: int) -> bytes:
    """Cloudpickle an exception, or return b"" if it cannot be pickled and unpickled back or
    is larger than ``limit`` bytes."""
    try:
        data = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
    except Exception:
        return b""
    return data if len(data) <= limit else b""


def _clean_text(text: str) -> str:
    """Replace lone surrogates so the text is valid UTF-8 for the Rust side's JSON parser."""
    return text.encode("utf-8", "replace").decode("utf-8")


def failure_info(kind: str, message: str, exc: BaseException = None, tb: str = None) -> dict:
    """Build a FailureInfo object (null fields where there is no exception or traceback); the
    daemon fills in ``node`` and the final ``attempts``."""
    return {
        "kind": kind,
        "message": _clean_text(message),
        "type_name": type(exc).__qualname__ if exc is not None else None,
        "module": type(exc).__module__ if exc is not None else None,
        "traceback": _clean_text(tb) if tb is not None else None,
        "attempts": 1,
        "exit_code": None,
        "signal": None,
    }


# --------------------------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------------------------


class ExitNow(Exception):
    """Raised to end the worker with ``status`` (the function called ``sys.exit``)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ProgressFileError(Exception):
    """The progress file named by ASSIGN could not be opened and mapped."""


class Worker:
    """One function instance: the protocol state machine and the per-item loop."""

    def __init__(self, conn: Connection, warm_after_hello: bool = False) -> None:
        self.conn = conn
        self.warm_after_hello = warm_after_hello
        self.attribution = Attribution()
        self.stdout = CapturedOutput(conn, STDOUT, self.attribution, "<fleetmap stdout>")
        self.stderr = CapturedOutput(conn, STDERR, self.attribution, "<fleetmap stderr>")
        self.function = None
        self.progress = None
        self.scratch = None
        self.scratch_bytes = 0
        # A RESULTS body holds 4 bytes of count plus 12 bytes per item besides its payloads.
        self.max_payload = conn.max_frame - 4 - _BATCH_ENTRY_SIZE

    def serve(self) -> int:
        """Run the worker protocol until SHUTDOWN or EOF and return the exit status."""
        self.conn.send(HELLO, encode_json(
            {"version": PROTOCOL_VERSION, "pid": os.getpid(), "python": _PYTHON_VERSION}))
        sys.stdout, sys.stderr = self.stdout, self.stderr
        if self.warm_after_hello:
            warm_child()
        frame = self._next_frame((ASSIGN, SHUTDOWN))
        if frame is None or frame[0] == SHUTDOWN:
            return EXIT_OK
        assignment = decode_json_object(frame[1], "ASSIGN")
        frame = self._next_frame((FUNCTION, SHUTDOWN))
        if frame is None or frame[0] == SHUTDOWN:
            return EXIT_OK
        self.progress = open_progress(assignment)
        apply_environment(assignment)
        self.scratch, self.scratch_bytes = apply_scratch(assignment)
        if not self._load_function(frame[1]):
            return EXIT_OK
        # Only the pid: see agent-proto's WorkerReady for why no CPUs or cgroup.
        self.conn.send(READY, encode_json({"pid": os.getpid()}))
        while True:
            frame = self._next_frame((INPUTS, SHUTDOWN))
            if frame is None or frame[0] == SHUTDOWN:
                return EXIT_OK
            self.run_chunk(frame[1])

    def _next_frame(self, allowed):
        """Read the next frame, or None at EOF; any kind not in ``allowed`` is a ProtocolError."""
        frame = self.conn.read_frame()
        if frame is not None and frame[0] not in allowed:
            raise ProtocolError(ProtocolError.UNEXPECTED,
                                "expected %s but the daemon sent %s"
                                % (" or ".join(frame_name(k) for k in allowed), frame_name(frame[0])))
        return frame

    def _load_function(self, payload: bytes) -> bool:
        """Unpickle the function; on failure send FAILURE ``function_load`` and return False."""
        try:
            function = cloudpickle.loads(payload)
            if not callable(function):
                raise TypeError("the FUNCTION payload unpickled to a %s object, which is not callable"
                                % type(function).__qualname__)
        except BaseException as exc:  # unpickling runs arbitrary code: anything it raises counts
            self.flush_output()
            message = ("the function could not be loaded on the worker: %s; make sure every module "
                       "it needs is installed in the function's environment"
                       % describe_exception(exc))
            self._send_failure(NO_INDEX, failure_info("function_load", message, exc,
                                                      format_traceback(exc)), exc)
            return False
        self.flush_output()
        self.function = function
        return True

    def run_chunk(self, body) -> None:
        """Run the function over one INPUTS chunk, send FAILUREs at once and RESULTS as they
        accumulate: at the end of the chunk, and before an item starts once
        ``RESULTS_EVERY_NS`` has passed since the last RESULTS (a chunk holds about 100 ms of
        work; its first results do not wait for its last).

        The loop is the worker's hot path: everything is bound to locals and a success only
        appends its index and its pickled bytes.
        """
        indices, lengths, start = decode_item_batch(body)
        offsets = list(accumulate(lengths, initial=start))
        function = self.function
        loads = pickle.loads
        dumps = pickle.dumps
        mark = _PROGRESS.pack_into
        progress = self.progress
        now = time.monotonic_ns
        attribution = self.attribution
        stdout = self.stdout
        stderr = self.stderr
        max_payload = self.max_payload
        send_results = self._send_results
        ok = array.array("Q")
        payloads = []
        keep = ok.append
        add = payloads.append
        send_by = now() + RESULTS_EVERY_NS
        for index, start, end in zip(indices, offsets, islice(offsets, 1, None)):
            attribution.index = index
            started = now()
            if started >= send_by and payloads:
                send_results(ok, payloads)
                ok = array.array("Q")
                payloads = []
                keep = ok.append
                add = payloads.append
                send_by = started + RESULTS_EVERY_NS
            mark(progress, 0, index + 1, started)
            try:
                argument = loads(body[start:end])
            except BaseException as exc:
                self._input_failed(index, exc, "could not be unpickled on the worker: ")
                continue
            try:
                result = function(argument)
            except SystemExit as exc:
                self._function_exited(exc)
            except BaseException as exc:
                self._input_failed(index, exc, "raised ")
                continue
            try:
                data = dumps(result, 5)
            except Exception:
                data = self._dump_fallback(index, result)
                if data is None:
                    continue
            if len(data) > max_payload:
                self._result_too_large(index, result, len(data))
                continue
            keep(index)
            add(data)
            if stdout._pending or stderr._pending:
                self.flush_output()
        attribution.index = NO_INDEX
        _U64.pack_into(progress, 0, 0)
        if payloads:
            send_results(ok, payloads)

    def _send_results(self, indices: array.array, payloads: list) -> None:
        """Send a chunk's successes as one RESULTS frame, split only if over the frame limit."""
        lengths = array.array("I", map(len, payloads))
        count = len(indices)
        body_len = 4 + _BATCH_ENTRY_SIZE * count + sum(lengths)
        if body_len <= self.conn.max_frame:
            parts = [HEADER.pack(RESULTS, body_len) + _U32.pack(count), _le_bytes(indices),
                     _le_bytes(lengths)]
            parts += payloads
            self.conn.send_parts((b"".join(parts),))
            return
        start = 0
        while start < count:
            stop = start
            size = 4
            while stop < count and size + _BATCH_ENTRY_SIZE + lengths[stop] <= self.conn.max_frame:
                size += _BATCH_ENTRY_SIZE + lengths[stop]
                stop += 1
            self.conn.send(RESULTS, encode_item_batch(indices[start:stop], payloads[start:stop]))
            start = stop

    def _input_failed(self, index: int, exc: BaseException, verb: str) -> None:
        """Send FAILURE ``exception`` for an input whose unpickling or function call raised."""
        self.flush_output()
        message = "input %d %s%s" % (index, verb, describe_exception(exc))
        if self.scratch is not None and isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            hint = scratch_full_hint(self.scratch, self.scratch_bytes)
            message += "; " + hint
            if hasattr(exc, "add_note"):  # the client raises this very exception: say it there
                exc.add_note("fleetmap: " + hint)
        tb = format_traceback(exc)
        self._send_failure(index, failure_info("exception", message, exc, tb), exc)

    def _dump_fallback(self, index: int, result):
        """Cloudpickle a result pickle refused; on failure send ``unpicklable_result``, return None."""
        try:
            return cloudpickle.dumps(result, protocol=5)
        except Exception as exc:
            self.flush_output()
            message = ("input %d returned an unpicklable %s (%s); return a value that pickle or "
                       "cloudpickle can serialize" % (index, type(result).__qualname__,
                                                      describe_exception(exc)))
            info = failure_info("unpicklable_result", message, exc, format_traceback(exc, False))
            self._send_failure(index, info, exc)
            return None

    def _result_too_large(self, index: int, result, size: int) -> None:
        """Send ``unpicklable_result`` for a result too large for any RESULTS frame."""
        self.flush_output()
        message = ("input %d returned a %s that pickles to %d bytes, more than the %d bytes a "
                   "frame can carry; return less data per input"
                   % (index, type(result).__qualname__, size, self.max_payload))
        self._send_failure(index, failure_info("unpicklable_result", message))

    def _function_exited(self, exc: SystemExit) -> None:
        """The function called ``sys.exit``: flush its output and end the process like Python."""
        self.flush_output()
        code = exc.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code & 0xFF
        else:
            self.stderr.write("%s\n" % (code,))
            self.flush_output()
            status = 1
        raise ExitNow(status)

    def _send_failure(self, index: int, info: dict, exc: BaseException = None) -> None:
        """Send a FAILURE frame; shorten the texts and drop the pickled exception if needed to
        fit the frame limit."""
        text = encode_json(info)
        room = self.conn.max_frame - _FAILURE_HEAD.size - len(text)
        message, tb = info["message"], info["traceback"] or ""
        cap = max(len(message), len(tb))
        while room < 0 and cap > 0:
            cap //= 2
            info["message"] = message[:cap]
            info["traceback"] = "(traceback shortened)\n" + tb[-cap:] if cap and tb else None
            text = encode_json(info)
            room = self.conn.max_frame - _FAILURE_HEAD.size - len(text)
        exc_bytes = pickle_exception(exc, room) if exc is not None and room > 0 else b""
        self.conn.send(FAILURE, _FAILURE_HEAD.pack(index, len(text)) + text + exc_bytes)

    def flush_output(self) -> None:
        """Send whatever the function left in the captured stdout and stderr."""
        self.stdout.flush()
        self.stderr.flush()


def open_progress(assignment: dict) -> mmap.mmap:
    """Map the 16-byte progress file named by the ASSIGN frame's ``progress_path``."""
    path = assignment.get("progress_path")
    if not isinstance(path, str) or not path:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "ASSIGN must name the progress file in a string field progress_path")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # no buffered file object: on the job's path
        try:
            return mmap.mmap(fd, PROGRESS_SIZE)
        finally:
            os.close(fd)
    except (OSError, ValueError) as exc:
        raise ProgressFileError("cannot map the %d-byte progress file %s: %s"
                                % (PROGRESS_SIZE, path, exc))


def apply_environment(assignment: dict) -> None:
    """Set the ASSIGN frame's ``env`` variables (e.g. ``CUDA_VISIBLE_DEVICES`` for the slot's GPU).

    This runs after the fork from the zygote and before the function is unpickled, so every
    library the function imports (CUDA initialises lazily, on first use) sees them.
    """
    env = assignment.get("env")
    if env is None:
        return
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError(ProtocolError.MALFORMED,
                            "ASSIGN field env must map strings to strings")
    os.environ.update(env)


def apply_scratch(assignment: dict):
    """Make the ASSIGN frame's ``scratch`` directory the cwd and ``TMPDIR`` (and ``TMP``,
    ``TEMP``) of the function; return it and its size limit (None, 0 when there is none)."""
    path = assignment.get("scratch")
    if path is None:
        return None, 0
    size = assignment.get("scratch_bytes", 0)
    if not isinstance(path, str) or not path or not isinstance(size, int) or size < 0:
        raise ProtocolError(ProtocolError.MALFORMED,
                            "ASSIGN field scratch must be a path and scratch_bytes a byte count")
    os.chdir(path)
    for name in _SCRATCH_VARIABLES:
        os.environ[name] = path
    import tempfile
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    return path, size


_SCRATCH_VARIABLES = ("TMPDIR", "TMP", "TEMP")
"""The variables ``apply_scratch`` points at the scratch directory."""


def scratch_full_hint(path: str, size: int) -> str:
    """The sentence added to an ENOSPC error raised while the worker has a scratch space."""
    bound = "its %d MiB limit" % (size >> 20) if size else "its filesystem's limit"
    return ("the instance's scratch space %s (cwd and TMPDIR) is full at %s: write less per "
            "input, delete files you no longer need, or ask the operator for a larger "
            "fleetmapd --scratch-mib (at most half of func_ram is used)" % (path, bound))


def log(message: str) -> None:
    """Write one diagnostic line to file descriptor 2 (the daemon's log), ignoring errors."""
    line = "fleetmap worker[%d]: %s\n" % (os.getpid(), message)
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass


def run_worker(socket_path: str, max_frame: int = DEFAULT_MAX_FRAME_BYTES,
               warm_after_hello: bool = False) -> int:
    """Connect to the daemon, serve one job, and return the process exit status.

    ``warm_after_hello``: run the job path once on throwaway objects after HELLO (see
    ``warm_child``), for a worker forked from the zygote."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        log("cannot connect to the daemon socket %s: %s" % (socket_path, exc))
        return EXIT_UNAVAILABLE
    worker = Worker(Connection(sock, max_frame), warm_after_hello)
    try:
        status = worker.serve()
    except ExitNow as exc:
        return exc.status
    except ProtocolError as exc:
        log("protocol error (%s): %s; exiting" % (exc.code, exc))
        return EXIT_PROTOCOL
    except ProgressFileError as exc:
        log("%s; exiting" % exc)
        return EXIT_IOERR
    except (BrokenPipeError, ConnectionResetError):
        return EXIT_OK
    except BaseException:
        log("internal error, exiting:\n%s" % traceback.format_exc())
        return EXIT_INTERNAL
    try:
        worker.flush_output()
    except OSError:
        pass
    return status


# --------------------------------------------------------------------------------------------
# Zygote
# --------------------------------------------------------------------------------------------


def _on_sigchld(signum, frame) -> None:
    """SIGCHLD handler: the wake-up fd does the work, this only makes the signal delivered."""


_SPAWN_LINE = re.compile(rb'\s*\{"cmd":"spawn","count":(0|[1-9][0-9]{0,3})\}\s*').fullmatch
"""The spawn command exactly as fleetmapd writes it, read without the json module; any other
form of a line goes through ``json.loads`` (``Zygote._run_command``)."""


class Zygote:
    """Forks workers on request and reports their lives as JSON lines (protocol section 4).

    After every fork the zygote shares all of its memory with its newest child, so each page
    it writes before the next fork is copied again (a page fault of a few microseconds): the
    loop between forks is kept to C calls on locals -- ``poll``, ``read``, a compiled pattern
    for the daemon's spawn line, ``fork``, event lines formatted as bytes -- instead of
    selectors, json and the signal module's enum wrappers. On a 2-CPU VM that halved the
    zygote's page faults per fork (about 170 to 90) and cut its CPU per worker by a fifth.
    """

    MAX_COMMAND_BYTES = 1024 * 1024
    MAX_SPAWN_COUNT = 4096

    def __init__(self, socket_path: str, max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.socket_path = socket_path
        self.max_frame = max_frame
        self._wake_r = -1
        self._wake_w = -1
        self._devnull = -1
        self._commands = b""

    def run(self) -> int:
        """Serve spawn commands until stdin reaches EOF; return the exit status."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Opened once: every child makes it its stdin and stdout, then closes it.
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _on_sigchld)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        _warm_up()
        gc.collect()
        try:
            self._emit({"event": "ready", "pid": os.getpid(), "python": _PYTHON_VERSION})
            return self._serve()
        except BrokenPipeError:
            return EXIT_OK

    def _serve(self) -> int:
        """The loop: reap children when SIGCHLD's wake-up pipe is readable, run commands when
        stdin is; return at stdin's EOF."""
        poller = select.poll()
        poller.register(0, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        poll = poller.poll
        wake = self._wake_r
        while True:
            for fd, _events in poll():
                if fd == wake:
                    self._drain_wakeups()
                    self._reap()
                elif not self._read_commands():
                    return EXIT_OK

    def _read_commands(self) -> bool:
        """Read available stdin bytes and run every complete line; False at EOF."""
        data = os.read(0, 65536)
        if not data:
            return False
        commands = self._commands + data
        while True:
            newline = commands.find(b"\n")
            if newline < 0:
                break
            line = commands[:newline]
            commands = commands[newline + 1:]
            self._run_command(line)
        if len(commands) > self.MAX_COMMAND_BYTES:
            zlog("dropping a %d-byte command line with no newline" % len(commands))
            commands = b""
        self._commands = commands
        return True

    def _run_command(self, line: bytes) -> None:
        """Parse and run one command line; a bad one is logged and ignored."""
        spawn = _SPAWN_LINE(line)
        if spawn is not None:
            count = int(spawn.group(1))
            if count <= self.MAX_SPAWN_COUNT:
                self._spawn(count)
                return
        line = line.strip()
        if not line:
            return
        try:
            command = json.loads(line.decode("utf-8"))
        except ValueError as exc:
            zlog("ignoring a command that is not valid JSON (%s): %r" % (exc, line[:200]))
            return
        except RecursionError:
            # json.loads recurses per nesting level: a deeply nested line is garbage, not a crash.
            zlog("ignoring a command that nests JSON too deeply: %r" % (line[:200],))
            return
        if not isinstance(command, dict) or command.get("cmd") != "spawn":
            zlog("ignoring an unknown command; the only command is {\"cmd\":\"spawn\",\"count\":N}: %r"
                 % (line[:200],))
            return
        count = command.get("count")
        if type(count) is not int or not 0 <= count <= self.MAX_SPAWN_COUNT:
            zlog("ignoring spawn with count %r; count must be an integer from 0 to %d"
                 % (count, self.MAX_SPAWN_COUNT))
            return
        self._spawn(count)

    def _spawn(self, count: int) -> None:
        """Fork ``count`` workers and report each; stop at the first failed fork."""
        gc.freeze()
        fork = os.fork
        write = _write_stdout
        for _ in range(count):
            try:
                pid = fork()
            except OSError as exc:
                zlog("cannot fork a worker: %s" % exc)
                return
            if pid == 0:
                self._child()
            write(b'{"event":"spawned","pid":%d}\n' % pid)

    def _child(self) -> None:
        """Become a worker in the forked child; never returns."""
        status = EXIT_INTERNAL
        try:
            self._detach()
            status = run_worker(self.socket_path, self.max_frame, warm_after_hello=True)
        except BaseException:
            log("internal error in a forked worker:\n%s" % traceback.format_exc())
        finally:
            os._exit(status)

    def _detach(self) -> None:
        """Drop everything the child inherited from the zygote: signals, wake-up pipe, and the
        daemon's stdin/stdout pipes (replaced by /dev/null)."""
        signal.set_wakeup_fd(-1)
        _raw_signal.signal(signal.SIGCHLD, _raw_signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        os.dup2(self._devnull, 0)
        os.dup2(self._devnull, 1)
        os.close(self._devnull)

    def _drain_wakeups(self) -> None:
        """Empty the signal wake-up pipe."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        """Collect every finished child and report its exit status or signal."""
        write = _write_stdout
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if os.WIFSIGNALED(status):
                write(b'{"event":"exited","pid":%d,"signal":%d}\n' % (pid, os.WTERMSIG(status)))
            elif os.WIFEXITED(status):
                write(b'{"event":"exited","pid":%d,"exit_code":%d}\n' % (pid, os.WEXITSTATUS(status)))

    @staticmethod
    def _emit(event: dict) -> None:
        """Write one event as a JSON line on stdout."""
        _write_stdout((json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8"))


def _write_stdout(data: bytes) -> None:
    """Write all of ``data`` to file descriptor 1."""
    while data:
        data = data[os.write(1, data):]


def zlog(message: str) -> None:
    """Write one zygote diagnostic line to file descriptor 2."""
    try:
        os.write(2, ("fleetmap zygote[%d]: %s\n" % (os.getpid(), message)).encode("utf-8", "replace"))
    except OSError:
        pass


def _warm_up() -> None:
    """Exercise the cloudpickle, pickle and traceback paths once so forked children find them
    ready (lazy imports and caches filled in the zygote, shared copy-on-write), and make the
    frames ``warm_child`` replays."""
    global _WARM_JOB
    _WARM_JOB = _warm_job()
    function = cloudpickle.loads(_WARM_JOB[1])
    pickle.dumps(function(pickle.loads(pickle.dumps(21, 5))), 5)
    try:
        raise ValueError("warm-up")
    except ValueError as exc:
        format_traceback(exc)
        pickle_exception(exc, DEFAULT_MAX_FRAME_BYTES)


def _warm_job():
    """The ASSIGN, FUNCTION and INPUTS bodies of ``warm_child``'s throwaway job: a closure
    pickled by value, as a user's ``__main__`` function is, over one input."""
    scale = 2
    return (encode_json({"job_id": "warm-up", "slot_id": "warm-up", "cpus": [0], "env": {},
                         "scratch": None, "scratch_bytes": 0}),
            cloudpickle.dumps(lambda value: value * scale),
            encode_item_batch(array.array("Q", [0]), [pickle.dumps(21, 5)]))


_WARM_JOB = None
"""``_warm_job()`` made once in the zygote: a child replays it without pickling anything
(``cloudpickle.dumps`` alone touches about a hundred pages a job never does)."""


class _DiscardingConnection:
    """What ``warm_child``'s throwaway worker writes to: frames are built, then dropped."""

    max_frame = DEFAULT_MAX_FRAME_BYTES

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def send_parts(self, parts) -> None:
        b"".join(parts)

    def send(self, kind: int, body: bytes = b"") -> None:
        self.send_parts((HEADER.pack(kind, len(body)), body))


def warm_child() -> None:
    """Run a job's path once on throwaway objects in a worker forked from the zygote, while it
    idles in the pool.

    Its first writes to objects it shares with the zygote (reference counts, caches) each
    take a copy-on-write page fault; ``_warm_up`` in the zygote cannot take them for the
    child. Taken here, they no longer delay the job that gets this worker: on a 2-CPU VM the
    ASSIGN-to-first-result path went from about 1 ms to 0.65 ms.
    """
    assign, function, inputs = _WARM_JOB or _warm_job()
    worker = Worker(_DiscardingConnection())
    worker.progress = bytearray(PROGRESS_SIZE)
    _rehearse_placement(decode_json_object(assign, "ASSIGN"))
    worker.function = cloudpickle.loads(function)
    worker.run_chunk(inputs)
    worker.flush_output()


def _rehearse_placement(assignment: dict) -> None:
    """Go through a job's placement -- map a progress file, set the environment, enter a
    scratch -- on throwaway values, and put the worker's cwd and variables back after.

    Their code touches pages of the os, mmap and tempfile modules a bare run of the function
    does not: about 0.1 ms of the job's way to its first input on a 2-CPU VM.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the zygote's cwd is gone: nothing to rehearse in
        return
    saved = [(name, os.environ.get(name)) for name in _SCRATCH_VARIABLES]
    try:
        open_progress(dict(assignment, progress_path="/dev/zero")).close()
        apply_environment(assignment)
        apply_scratch(dict(assignment, scratch=cwd))
    except (OSError, ProtocolError, ProgressFileError):
        pass
    finally:
        for name, value in saved:
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            os.chdir(cwd)
        except OSError:  # removed meanwhile: a job without a scratch runs wherever it is
            pass
        import tempfile
        tempfile.tempdir = None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    """Parse ``zygote|worker --socket PATH [--max-frame-bytes N]``."""
    parser = argparse.ArgumentParser(prog="fleetmap_worker.py",
                                     description="fleetmap worker process (run by fleetmapd)")
    parser.add_argument("mode", choices=("zygote", "worker"),
                        help="zygote: fork workers on request; worker: run one worker directly")
    parser.add_argument("--socket", required=True, help="the daemon's Unix socket path")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                        help="largest frame body accepted or sent (default 64 MiB)")
    args = parser.parse_args(argv)
    if args.max_frame_bytes < 1024:
        parser.error("--max-frame-bytes must be at least 1024")
    return args


def main(argv=None) -> int:
    """Run the zygote (returning its exit status) or one worker (exiting the process)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == "zygote":
        try:
            return Zygote(args.socket, args.max_frame_bytes).run()
        except KeyboardInterrupt:
            return 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(run_worker(args.socket, args.max_frame_bytes))


if __name__ == "__main__":
    sys.exit(main())
