"""Reordering and exactly-once checks."""

from __future__ import annotations

import random

import pytest

from fleetmap.errors import ProtocolError
from fleetmap.ordering import ReorderBuffer, ResultList


@pytest.mark.parametrize("seed", range(5))
def test_reorder_yields_input_order_from_any_arrival_order(seed):
    rng = random.Random(seed)
    order = list(range(500))
    rng.shuffle(order)
    buffer = ReorderBuffer()
    out = []
    peak = 0
    for index in order:
        buffer.push(index, f"v{index}")
        peak = max(peak, len(buffer))
        out.extend(buffer.pop_ready())
    assert out == [f"v{i}" for i in range(500)]
    assert len(buffer) == 0 and buffer.next_index == 500
    assert buffer.missing(500) == []


def test_reorder_holds_only_what_waits_for_a_gap():
    buffer = ReorderBuffer()
    for index in range(1, 100):
        buffer.push(index, index)
        assert buffer.pop_ready() == []
    assert len(buffer) == 99
    assert buffer.missing(100) == [0]
    buffer.push(0, 0)
    assert buffer.pop_ready() == list(range(100))
    assert len(buffer) == 0


def test_reorder_refuses_duplicates():
    buffer = ReorderBuffer()
    buffer.push(0, "a")
    buffer.pop_ready()
    with pytest.raises(ProtocolError, match="input 0 got a second result"):
        buffer.push(0, "again")
    buffer.push(5, "x")
    with pytest.raises(ProtocolError, match="input 5 got a second result"):
        buffer.push(5, "y")


def test_result_list_fills_by_index_and_checks_completeness():
    table = ResultList(4)
    table.put_many([2, 0], ["c", "a"])
    table.put_many([3], [None])
    assert table.missing(4) == [1]
    with pytest.raises(ProtocolError, match="1 of 4 inputs without a result"):
        table.finish(4)
    table.put_many([1], ["b"])
    assert table.finish(4) == ["a", "b", "c", None]


def test_result_list_grows_without_a_size_hint_and_refuses_duplicates():
    table = ResultList()
    table.put_many([5, 1], [5, 1])
    with pytest.raises(ProtocolError, match="input 5 got a second result"):
        table.put_many([5], [5])
    table.put_many([0, 2, 3, 4], [0, 2, 3, 4])
    assert table.finish(6) == [0, 1, 2, 3, 4, 5]


def test_result_list_detects_extra_results():
    table = ResultList()
    table.put_many([0, 1, 2], [0, 1, 2])
    with pytest.raises(ProtocolError):
        table.finish(2)
