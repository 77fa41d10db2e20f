"""Frame codec: round trips, the exact-length rule, truncation, limits, and agreement with the
worker's independent implementation (images/worker/fleetmap_worker.py)."""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
from array import array
from pathlib import Path

import pytest

from fleetmap import frames
from fleetmap.errors import ProtocolError

WORKER = Path(__file__).resolve().parents[2] / "images" / "worker" / "fleetmap_worker.py"


def _reader(data: bytes, limit: int = frames.MAX_FRAME_BYTES) -> frames.FrameReader:
    return frames.FrameReader(io.BytesIO(data).read, limit)


def test_header_is_kind_then_little_endian_length():
    assert frames.encode(frames.INPUTS_END) == b"\x04\x00\x00\x00\x00"
    assert frames.encode(frames.FUNCTION, b"abc") == b"\x02\x03\x00\x00\x00abc"
    assert frames.header(frames.RESULTS, 0x01020304) == b"\x10\x04\x03\x02\x01"


@pytest.mark.parametrize("count", [0, 1, 7, 1024])
def test_item_batch_round_trip(count):
    payloads = [pickle.dumps(("x" * (i % 13), i), 5) for i in range(count)]
    indices = array("Q", range(1000, 1000 + count))
    frame = frames.encode_items(frames.INPUTS, indices, payloads)
    (kind, body), = list(frames.iter_frames(frame))
    assert kind == frames.INPUTS
    assert len(body) == 4 + 12 * count + sum(map(len, payloads))
    got_indices, got_payloads = frames.decode_items(body)
    assert list(got_indices) == list(indices)
    assert [bytes(p) for p in got_payloads] == payloads


def test_item_batch_layout_is_exact():
    frame = frames.encode_items(frames.RESULTS, array("Q", [5, 2**64 - 2]), [b"ab", b"c"])
    body = frame[5:]
    assert body == (
        struct.pack("<I", 2) + struct.pack("<QQ", 5, 2**64 - 2) + struct.pack("<II", 2, 1) + b"abc"
    )


def test_item_batch_non_contiguous_indices():
    indices, payloads = frames.decode_items(frames.encode_items(frames.INPUTS, array("Q", [9, 3, 7]), [b"a", b"", b"c"])[5:])
    assert list(indices) == [9, 3, 7]
    assert [bytes(p) for p in payloads] == [b"a", b"", b"c"]


@pytest.mark.parametrize("delta", [-1, 1])
def test_item_batch_wrong_length_is_malformed(delta):
    body = frames.encode_items(frames.INPUTS, array("Q", [0, 1]), [b"ab", b"cd"])[5:]
    bad = body[:-1] if delta < 0 else body + b"!"
    with pytest.raises(ProtocolError, match="should be"):
        frames.decode_items(bad)


def test_item_batch_count_larger_than_body():
    with pytest.raises(ProtocolError, match="claims 1000 items"):
        frames.decode_items(struct.pack("<I", 1000) + b"\0" * 20)
    with pytest.raises(ProtocolError, match="shorter than its count"):
        frames.decode_items(b"\x01\x00")


def test_encode_items_needs_one_index_per_payload():
    with pytest.raises(ValueError):
        frames.encode_items(frames.INPUTS, array("Q", [1, 2]), [b"x"])


def test_reader_reads_consecutive_frames_then_clean_eof():
    data = frames.encode(frames.FUNCTION, b"f") + frames.encode_json(frames.STATUS, {"done": 1}) + frames.encode(frames.INPUTS_END)
    reader = _reader(data)
    assert reader.next() == (frames.FUNCTION, b"f")
    kind, body = reader.next()
    assert kind == frames.STATUS and frames.decode_json_bytes(body, "STATUS") == {"done": 1}
    assert reader.next() == (frames.INPUTS_END, b"")
    assert reader.next() is None


@pytest.mark.parametrize("cut", [1, 4, 6, 9])
def test_reader_truncated_inside_a_frame(cut):
    data = frames.encode(frames.FUNCTION, b"12345")[:cut]
    with pytest.raises(ProtocolError, match="stream ended inside"):
        _reader(data).next()


def test_reader_refuses_unknown_kind_and_oversized_body():
    with pytest.raises(ProtocolError, match="unknown frame kind 0x7f"):
        _reader(b"\x7f\x00\x00\x00\x00").next()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        _reader(frames.header(frames.RESULTS, 101) + b"x" * 101, limit=100).next()


def test_reader_handles_short_reads():
    data = frames.encode(frames.FUNCTION, b"abcdefgh")
    pos = 0

    def read(n):
        nonlocal pos
        piece = data[pos : pos + min(n, 3)]
        pos += len(piece)
        return piece

    assert frames.FrameReader(read).next() == (frames.FUNCTION, b"abcdefgh")


def test_failure_and_output_round_trip():
    info = {"kind": "oom", "message": "input 3 was killed", "attempts": 1}
    (kind, body), = list(frames.iter_frames(frames.encode_failure(3, info, b"EXC")))
    assert kind == frames.FAILURE
    assert frames.decode_failure(body) == (3, info, b"EXC")
    (kind, body), = list(frames.iter_frames(frames.encode_output(frames.NO_INDEX, frames.STDERR, "héllo\n")))
    assert frames.decode_output(body) == (frames.NO_INDEX, frames.STDERR, "héllo\n")


def test_failure_with_bad_json_length():
    body = struct.pack("<QI", 1, 50) + b"{}"
    with pytest.raises(ProtocolError, match="claims 50 JSON bytes"):
        frames.decode_failure(body)
    with pytest.raises(ProtocolError, match="not JSON"):
        frames.decode_failure(struct.pack("<QI", 1, 3) + b"{x}")


@pytest.fixture(scope="module")
def worker_codec():
    if not WORKER.is_file():
        pytest.fail(f"the worker module {WORKER} is missing; the cross-implementation check needs it")
    spec = importlib.util.spec_from_file_location("fleetmap_worker_codec", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agrees_with_worker_implementation(worker_codec):
    payloads = [pickle.dumps(i * 3, 5) for i in range(50)]
    ours = frames.encode_items(frames.RESULTS, array("Q", range(50)), payloads)
    theirs = worker_codec.encode_frame(worker_codec.RESULTS, worker_codec.encode_item_batch(range(50), payloads))
    assert ours == theirs
    items = worker_codec.split_item_batch(ours[5:])
    assert items == list(zip(range(50), payloads))
    info = {"kind": "exception", "message": "m"}
    assert frames.encode_failure(7, info, b"e")[5:] == worker_codec.encode_failure(7, info, b"e")
    assert frames.encode_output(7, 1, "hi")[5:] == worker_codec.encode_output(7, 1, "hi")
