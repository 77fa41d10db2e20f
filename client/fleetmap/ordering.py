"""Putting results back in input order, and checking that each index arrives exactly once.

Results arrive in completion order from many instances on many nodes.  ``ReorderBuffer``
holds the ones that came early until every lower index is in, so ``generator=True`` can
yield in order while holding at most the window of inputs in flight.  ``ResultList`` is the
list-mode equivalent: a list filled by index.  Both refuse an index seen twice and can say
which indices never arrived; the coordinator promises exactly one result or failure each.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List

from .errors import ProtocolError


class ReorderBuffer:
    """Accepts ``(index, value)`` in any order; ``pop_ready`` returns the in-order prefix."""

    __slots__ = ("next_index", "_pending")

    def __init__(self) -> None:
        self.next_index = 0
        self._pending: Dict[int, Any] = {}

    def push(self, index: int, value: Any) -> None:
        """Hold ``value`` until every index below ``index`` has been popped."""
        if index < self.next_index or index in self._pending:
            raise ProtocolError(f"input {index} got a second result; each input must yield exactly one")
        self._pending[index] = value

    def pop_ready(self) -> List[Any]:
        """Values ready in order (possibly none), advancing ``next_index`` past them."""
        pending = self._pending
        index = self.next_index
        if index not in pending:
            return []
        ready = []
        while index in pending:
            ready.append(pending.pop(index))
            index += 1
        self.next_index = index
        return ready

    def __len__(self) -> int:
        """How many values wait for a lower index."""
        return len(self._pending)

    def missing(self, total: int) -> List[int]:
        """Indices below ``total`` that have not arrived."""
        return [i for i in range(self.next_index, total) if i not in self._pending]


_MISSING = object()


class ResultList:
    """The list ``remote_parallel_map`` returns, filled by index as results arrive."""

    __slots__ = ("items", "count")

    def __init__(self, size_hint: int = 0) -> None:
        self.items: List[Any] = [_MISSING] * size_hint
        self.count = 0

    def put_many(self, indices: Iterable[int], values: List[Any]) -> None:
        """Store ``values[k]`` at ``indices[k]``; an index already filled is a protocol error."""
        items = self.items
        top = max(indices) if values else -1
        if top >= len(items):
            items.extend([_MISSING] * (top + 1 - len(items)))
        for index, value in zip(indices, values):
            if items[index] is not _MISSING:
                raise ProtocolError(f"input {index} got a second result; each input must yield exactly one")
            items[index] = value
        self.count += len(values)

    def missing(self, total: int) -> List[int]:
        """Indices below ``total`` that have not arrived."""
        items = self.items
        return [i for i in range(total) if i >= len(items) or items[i] is _MISSING]

    def finish(self, total: int) -> List[Any]:
        """The plain list of ``total`` results; ProtocolError if any is missing or extra."""
        if self.count != total or len(self.items) != total:
            missing = self.missing(total)
            raise ProtocolError(
                f"the job ended with {len(missing)} of {total} inputs without a result "
                f"(first: {missing[:5]}); each input must yield exactly one"
            )
        return self.items
