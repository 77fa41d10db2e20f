"""Unit tests of the worker module's frame codec and output capture, checked against the
independent encoder in harness.py and hand-written bytes."""

from __future__ import annotations

import io
import os
import socket
import struct
import sys
import threading

import pytest

import fleetmap_worker as fw
import worker_harness as harness


def test_frame_header_is_kind_then_little_endian_length():
    assert fw.encode_frame(fw.INPUTS, b"abc") == b"\x03\x03\x00\x00\x00abc"
    assert fw.encode_frame(fw.SHUTDOWN) == b"\x23\x00\x00\x00\x00"


def test_item_batch_layout_matches_protocol():
    body = fw.encode_item_batch([7, 2**40], [b"xy", b"z"])
    assert body == (struct.pack("<I", 2) + struct.pack("<QQ", 7, 2**40) + struct.pack("<II", 2, 1)
                    + b"xyz")
    assert body == harness.item_batch([(7, b"xy"), (2**40, b"z")])
    assert fw.split_item_batch(body) == [(7, b"xy"), (2**40, b"z")]


def test_empty_item_batch_round_trips():
    body = fw.encode_item_batch([], [])
    assert body == b"\x00\x00\x00\x00"
    assert fw.split_item_batch(body) == []


@pytest.mark.parametrize("body, fragment", [
    (b"\x01\x00", "shorter than its 4-byte count"),
    (struct.pack("<I", 1000) + bytes(20), "cannot hold"),
    (harness.item_batch([(1, b"ab")]) + b"!", "count 1 must be 18 bytes but is 19"),
    (harness.item_batch([(1, b"ab")])[:-1], "must be 18 bytes but is 17"),
], ids=["short", "table-overflow", "trailing-byte", "missing-byte"])
def test_malformed_item_batches_are_refused(body, fragment):
    with pytest.raises(fw.ProtocolError) as caught:
        fw.decode_item_batch(body)
    assert caught.value.code == "Malformed"
    assert fragment in str(caught.value)


def test_failure_and_output_bodies_round_trip():
    info = {"kind": "exception", "message": "input 3 raised ValueError: x"}
    body = fw.encode_failure(3, info, b"EXC")
    assert harness.parse_failure(body) == (3, info, b"EXC")
    assert fw.decode_failure(body) == (3, info, b"EXC")
    out = fw.encode_output(fw.NO_INDEX, fw.STDERR, "h\u00e9llo\n")
    assert harness.parse_output(out) == (fw.NO_INDEX, 2, "h\u00e9llo\n")
    assert fw.decode_output(out) == (fw.NO_INDEX, 2, "h\u00e9llo\n")


def test_decoders_refuse_short_or_inconsistent_bodies():
    with pytest.raises(fw.ProtocolError, match="shorter than its 12-byte head"):
        fw.decode_failure(b"\x00" * 5)
    with pytest.raises(fw.ProtocolError, match="declares 100 bytes of JSON"):
        fw.decode_failure(struct.pack("<QI", 1, 100) + b"{}")
    with pytest.raises(fw.ProtocolError, match="stream must be 1 or 2"):
        fw.decode_output(struct.pack("<QB", 1, 3) + b"x")
    with pytest.raises(fw.ProtocolError, match="must be a JSON object"):
        fw.decode_json_object(b"[1]", "ASSIGN")
    with pytest.raises(fw.ProtocolError, match="ASSIGN body is not valid JSON"):
        fw.decode_json_object(b"{nope", "ASSIGN")


def _reader(data: bytes, limit: int = 1024) -> fw.FrameReader:
    return fw.FrameReader(io.BufferedReader(io.BytesIO(data)), limit)


def test_frame_reader_reads_frames_then_none_at_clean_eof():
    reader = _reader(harness.frame(fw.ASSIGN, b"{}") + harness.frame(fw.SHUTDOWN))
    assert reader.read_frame() == (fw.ASSIGN, b"{}")
    assert reader.read_frame() == (fw.SHUTDOWN, b"")
    assert reader.read_frame() is None


@pytest.mark.parametrize("data, code, fragment", [
    (b"\x21\x05\x00", "Truncated", "inside a frame header after 3 of 5 bytes"),
    (harness.frame(fw.INPUTS, b"abcdef")[:-2], "Truncated", "after 4 of 6 body bytes"),
    (harness.frame(0x7E, b""), "UnknownKind", "unknown frame kind 0x7e"),
    (struct.pack("<BI", fw.INPUTS, 1025), "FrameTooLarge", "1025 bytes is too large"),
], ids=["short-header", "short-body", "unknown-kind", "too-large"])
def test_frame_reader_errors(data, code, fragment):
    with pytest.raises(fw.ProtocolError) as caught:
        _reader(data).read_frame()
    assert caught.value.code == code
    assert fragment in str(caught.value)


class _Pair:
    """A Connection on one end of a socketpair, and a frame reader on the other."""

    def __init__(self, max_frame: int = fw.DEFAULT_MAX_FRAME_BYTES) -> None:
        self.near, self.far = socket.socketpair()
        self.far.settimeout(5)
        self.conn = fw.Connection(self.near, max_frame)
        self.reader = fw.FrameReader(self.far.makefile("rb"), fw.DEFAULT_MAX_FRAME_BYTES)
        self.attribution = fw.Attribution()
        self.stdout = fw.CapturedOutput(self.conn, fw.STDOUT, self.attribution, "<out>")

    def outputs(self, count: int) -> list:
        frames = [self.reader.read_frame() for _ in range(count)]
        assert all(kind == fw.OUTPUT for kind, _ in frames)
        return [fw.decode_output(body) for _, body in frames]

    def nothing_pending(self) -> bool:
        self.far.setblocking(False)
        try:
            self.far.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.far.settimeout(5)
        return False


def test_captured_output_sends_complete_lines_and_keeps_the_rest():
    pair = _Pair()
    pair.attribution.index = 4
    pair.stdout.write("abc")
    assert pair.nothing_pending()
    pair.stdout.write("def\nghi\njk")
    assert pair.outputs(1) == [(4, 1, "abcdef\nghi\n")]
    pair.stdout.flush()
    assert pair.outputs(1) == [(4, 1, "jk")]
    pair.stdout.flush()
    assert pair.nothing_pending()


def test_captured_output_tags_partial_lines_with_the_index_they_were_written_under():
    pair = _Pair()
    pair.attribution.index = 1
    pair.stdout.write("from one")
    pair.attribution.index = 2
    pair.stdout.write("from two\n")
    assert pair.outputs(2) == [(1, 1, "from one"), (2, 1, "from two\n")]


def test_captured_output_refuses_bytes_and_decodes_its_buffer():
    pair = _Pair()
    with pytest.raises(TypeError, match="must be str, not bytes"):
        pair.stdout.write(b"x")
    encoded = "caf\u00e9\n".encode("utf-8")
    pair.stdout.buffer.write(encoded[:4])
    pair.stdout.buffer.write(encoded[4:])
    assert pair.outputs(1) == [(fw.NO_INDEX, 1, "caf\u00e9\n")]


def test_captured_output_splits_text_larger_than_a_frame():
    pair = _Pair(max_frame=1024)
    text = "\u00e9" * 1000 + "\n"
    pair.stdout.write(text)
    received = ""
    while received != text:
        kind, body = pair.reader.read_frame()
        assert kind == fw.OUTPUT and len(body) <= 1024
        received += fw.decode_output(body)[2]


def test_captured_output_keeps_lines_whole_across_threads():
    pair = _Pair()
    pair.attribution.index = 9
    lines = []

    def drain():
        while len(lines) < 800:
            index, stream, text = pair.outputs(1)[0]
            assert index == 9 and stream == 1
            lines.extend(text.splitlines())

    def chatter(name):
        for i in range(200):
            pair.stdout.write("%s line %d\n" % (name, i))

    reader = threading.Thread(target=drain)
    reader.start()
    threads = [threading.Thread(target=chatter, args=("t%d" % n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.join(10)
    assert not reader.is_alive()
    assert sorted(lines) == sorted("t%d line %d" % (n, i) for n in range(4) for i in range(200))


def test_captured_output_sends_an_endless_line_in_bounded_pieces():
    pair = _Pair()
    limit = fw.CapturedOutput.MAX_PENDING_CHARS
    for _ in range(limit // 1000 + 1):
        pair.stdout.write("x" * 1000)
    (index, stream, text), = pair.outputs(1)
    assert text == "x" * 1000 * (limit // 1000 + 1)
    assert pair.nothing_pending()


def test_warm_child_runs_the_job_path_without_touching_the_process(monkeypatch):
    sent = []
    monkeypatch.setattr(fw._DiscardingConnection, "send_parts", lambda self, parts: sent.append(b"".join(parts)))
    before = (sys.stdout, sys.stderr, os.getcwd(), dict(os.environ))
    fw.warm_child()
    assert (sys.stdout, sys.stderr, os.getcwd(), dict(os.environ)) == before
    # The throwaway worker built one RESULTS frame (the warm-up input's result) and no other.
    assert len(sent) == 1
    kind, length = fw.HEADER.unpack(sent[0][:fw.HEADER_SIZE])
    assert kind == fw.RESULTS
    assert fw.split_item_batch(sent[0][fw.HEADER_SIZE:]) == [(0, fw.pickle.dumps(42, 5))]
