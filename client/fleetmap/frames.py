"""The data-plane frame codec of docs/protocol.md section 1, in pure Python.

``frame := kind:u8 len:u32-LE body[len]``; item batches are
``count:u32 indices:u64[count] lengths:u32[count] payloads``.  Encoding works on
``array('Q')`` / ``array('I')`` and ``b"".join`` so a 1,024-item batch costs a handful of C
calls, not a Python loop over bytes.  No I/O beyond the ``read`` method handed to
``FrameReader``.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from .errors import ProtocolError

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

KNOWN_KINDS = frozenset(
    (SPEC, FUNCTION, INPUTS, INPUTS_END, RESULTS, FAILURE, OUTPUT, STATUS, END, HELLO, ASSIGN, READY, SHUTDOWN)
)

NO_INDEX = 2**64 - 1
"""Index of output or failures not attributed to any input (e.g. while loading the function)."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Default body limit of every receiver; a sender keeps each frame under it."""

CONTENT_TYPE = "application/vnd.fleetmap.frames"

STDOUT = 1
STDERR = 2
BUILD = 3
"""OUTPUT stream of a node's environment build log (index NO_INDEX)."""

_HEADER = struct.Struct("<BI")
_U32 = struct.Struct("<I")
_FAILURE_HEAD = struct.Struct("<QI")
_OUTPUT_HEAD = struct.Struct("<QB")
_LITTLE = sys.byteorder == "little"
HEADER_LEN = _HEADER.size


def header(kind: int, length: int) -> bytes:
    """The 5-byte header of a frame of ``kind`` whose body is ``length`` bytes."""
    return _HEADER.pack(kind, length)


def encode(kind: int, body: bytes = b"") -> bytes:
    """One whole frame."""
    return _HEADER.pack(kind, len(body)) + body


def encode_json(kind: int, obj: Any) -> bytes:
    """A frame whose body is ``obj`` as compact UTF-8 JSON (SPEC, STATUS, END, ...)."""
    return encode(kind, json.dumps(obj, separators=(",", ":")).encode())


def _le(arr: array) -> bytes:
    if not _LITTLE:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def encode_items(kind: int, indices: array, payloads: Sequence[bytes]) -> bytes:
    """An INPUTS or RESULTS frame: ``indices`` is an ``array('Q')`` parallel to ``payloads``."""
    count = len(payloads)
    if len(indices) != count:
        raise ValueError(f"{len(indices)} indices for {count} payloads")
    lengths = array("I", map(len, payloads))
    body_len = 4 + 12 * count + sum(lengths)
    return b"".join(
        (_HEADER.pack(kind, body_len), _U32.pack(count), _le(indices), _le(lengths), *payloads)
    )


def decode_items(body: bytes) -> Tuple[array, List[memoryview]]:
    """Split an item batch into its indices and payload views; ``Malformed`` as ProtocolError."""
    view = memoryview(body)
    size = len(view)
    if size < 4:
        raise ProtocolError(f"item batch of {size} bytes is shorter than its count field")
    (count,) = _U32.unpack_from(view, 0)
    head_end = 4 + 12 * count
    if size < head_end:
        raise ProtocolError(f"item batch claims {count} items but has only {size} bytes")
    indices = array("Q")
    indices.frombytes(view[4 : 4 + 8 * count])
    lengths = array("I")
    lengths.frombytes(view[4 + 8 * count : head_end])
    if not _LITTLE:
        indices.byteswap()
        lengths.byteswap()
    if head_end + sum(lengths) != size:
        raise ProtocolError(
            f"item batch of {count} items should be {head_end + sum(lengths)} bytes, got {size}"
        )
    payloads = []
    pos = head_end
    for length in lengths:
        end = pos + length
        payloads.append(view[pos:end])
        pos = end
    return indices, payloads


def encode_failure(index: int, info: dict, exc: bytes = b"") -> bytes:
    """A FAILURE frame (used by tests and tools; the worker is the real producer)."""
    info_bytes = json.dumps(info, separators=(",", ":")).encode()
    return encode(FAILURE, _FAILURE_HEAD.pack(index, len(info_bytes)) + info_bytes + exc)


def decode_failure(body: bytes) -> Tuple[int, dict, bytes]:
    """``index``, the FailureInfo dict and the pickled exception bytes (may be empty)."""
    if len(body) < _FAILURE_HEAD.size:
        raise ProtocolError(f"FAILURE frame of {len(body)} bytes is shorter than its header")
    index, json_len = _FAILURE_HEAD.unpack_from(body, 0)
    start = _FAILURE_HEAD.size
    if start + json_len > len(body):
        raise ProtocolError(f"FAILURE frame claims {json_len} JSON bytes but has {len(body) - start}")
    info = decode_json_bytes(body[start : start + json_len], "FailureInfo")
    return index, info, bytes(body[start + json_len :])


def encode_output(index: int, stream: int, text: str) -> bytes:
    """An OUTPUT frame (used by tests and tools; the worker is the real producer)."""
    return encode(OUTPUT, _OUTPUT_HEAD.pack(index, stream) + text.encode())


def decode_output(body: bytes) -> Tuple[int, int, str]:
    """``index``, ``stream`` (1 stdout, 2 stderr) and the text of an OUTPUT frame."""
    if len(body) < _OUTPUT_HEAD.size:
        raise ProtocolError(f"OUTPUT frame of {len(body)} bytes is shorter than its header")
    index, stream = _OUTPUT_HEAD.unpack_from(body, 0)
    return index, stream, bytes(body[_OUTPUT_HEAD.size :]).decode("utf-8", "replace")


def decode_json_bytes(body: bytes, what: str) -> dict:
    """Parse a JSON frame body, naming ``what`` in the error if it is not a JSON object."""
    try:
        obj = json.loads(bytes(body))
    except ValueError as err:
        raise ProtocolError(f"{what} frame body is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} frame body is not a JSON object")
    return obj


class FrameReader:
    """Reads frames from anything with ``read(n)`` (an ``http.client.HTTPResponse``)."""

    __slots__ = ("_read", "limit")

    def __init__(self, read: Callable[[int], bytes], limit: int = MAX_FRAME_BYTES) -> None:
        self._read = read
        self.limit = limit

    def next(self) -> Optional[Tuple[int, bytes]]:
        """The next ``(kind, body)``, or ``None`` at a clean end of stream between frames."""
        head = self._read(HEADER_LEN)
        if not head:
            return None
        if len(head) < HEADER_LEN:
            head += self._exactly(HEADER_LEN - len(head), "frame header")
        kind, length = _HEADER.unpack(head)
        if kind not in KNOWN_KINDS:
            raise ProtocolError(f"unknown frame kind 0x{kind:02x}")
        if length > self.limit:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.limit} bytes")
        body = self._exactly(length, "frame body") if length else b""
        return kind, body

    def _exactly(self, n: int, what: str) -> bytes:
        data = self._read(n)
        while len(data) < n:
            more = self._read(n - len(data))
            if not more:
                raise ProtocolError(f"stream ended inside a {what} ({len(data)} of {n} bytes)")
            data += more
        return data


def iter_frames(data: bytes) -> Iterable[Tuple[int, bytes]]:
    """Every frame of an in-memory byte string (for tests and tools)."""
    pos = 0
    view = memoryview(data)

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + n])
        pos += len(chunk)
        return chunk

    reader = FrameReader(read)
    while True:
        frame = reader.next()
        if frame is None:
            return
        yield frame
