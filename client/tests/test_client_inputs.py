"""Lazy batching of the inputs iterable."""

from __future__ import annotations

import pickle
import time

import pytest

from fleetmap import frames, inputs
from fleetmap.errors import PayloadTooLarge
from fleetmap.inputs import InputSource


def test_batches_by_count_and_indices_continue():
    source = InputSource(range(10))
    idx, payloads = source.take(max_items=4)
    assert list(idx) == [0, 1, 2, 3] and [pickle.loads(p) for p in payloads] == [0, 1, 2, 3]
    idx, payloads = source.take(max_items=4)
    assert list(idx) == [4, 5, 6, 7]
    idx, payloads = source.take(max_items=4)
    assert list(idx) == [8, 9] and source.done
    assert source.take() == (idx[:0], [])


def test_never_crosses_the_window_limit_and_pulls_nothing_beyond_it():
    pulled = []

    def gen():
        for i in range(100):
            pulled.append(i)
            yield i

    source = InputSource(gen())
    idx, _ = source.take(max_items=50, limit=10)
    assert list(idx) == list(range(10))
    assert pulled == list(range(10))
    idx, _ = source.take(max_items=50, limit=10)
    assert len(idx) == 0 and pulled == list(range(10))


def test_byte_bound():
    source = InputSource([b"x" * 1000] * 100)
    idx, payloads = source.take(max_items=1000, max_bytes=5000)
    assert 4 <= len(idx) <= 5


def test_time_bound_sends_a_slow_generator_promptly():
    def slow():
        for i in range(100):
            time.sleep(0.01)
            yield i

    source = InputSource(slow())
    start = time.perf_counter()
    idx, _ = source.take(max_items=1000, max_seconds=0.03)
    assert time.perf_counter() - start < 0.2
    assert 1 <= len(idx) <= 10


def test_item_that_would_overflow_the_frame_starts_the_next_batch(monkeypatch):
    monkeypatch.setattr(inputs, "_FRAME_ROOM", 3000)
    source = InputSource([b"a" * 1000, b"b" * 1000, b"c" * 1500, b"d"])
    idx, payloads = source.take(max_items=10, max_bytes=10**9)
    assert list(idx) == [0, 1]
    idx, payloads = source.take(max_items=10, max_bytes=10**9)
    assert list(idx) == [2, 3] and pickle.loads(payloads[0]) == b"c" * 1500
    assert source.done


def test_single_input_larger_than_a_frame_is_refused(monkeypatch):
    monkeypatch.setattr(inputs, "_FRAME_ROOM", 100)
    with pytest.raises(PayloadTooLarge, match=r"^input 1 is .* MB pickled"):
        InputSource([1, b"x" * 200]).take()


def test_iterable_errors_propagate():
    def broken():
        yield 1
        raise KeyError("from the generator")

    with pytest.raises(KeyError, match="from the generator"):
        InputSource(broken()).take()


def test_batch_encodes_as_a_valid_frame():
    source = InputSource(["a", None, 3.5])
    idx, payloads = source.take()
    frame = frames.encode_items(frames.INPUTS, idx, payloads)
    (_, body), = list(frames.iter_frames(frame))
    got_idx, got = frames.decode_items(body)
    assert [pickle.loads(p) for p in got] == ["a", None, 3.5]
