"""Lazy consumption of the inputs iterable into pickled, indexed batches.

``InputSource.take`` pulls items until a batch is full by count, by bytes, by time (so a slow
generator still streams promptly) or by the window limit the caller passes (so memory stays
bounded however long the iterable is).  Each item is pickled as it is pulled; a batch is an
``array('Q')`` of indices plus the list of payloads, ready for ``frames.encode_items``.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Iterable, List, Optional, Tuple

from .errors import PayloadTooLarge
from .frames import MAX_FRAME_BYTES
from .pickling import dumps_input

BATCH_MAX_ITEMS = 1024
BATCH_MAX_BYTES = 1024 * 1024
_ITEM_OVERHEAD = 12
_FRAME_ROOM = MAX_FRAME_BYTES - 4


class InputSource:
    """The job's inputs, numbered from 0 in iteration order and pickled on the way."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._it = iter(iterable)
        self.next_index = 0
        self.exhausted = False
        self._held: Optional[bytes] = None

    def take(
        self,
        max_items: int = BATCH_MAX_ITEMS,
        max_bytes: int = BATCH_MAX_BYTES,
        max_seconds: float = 0.02,
        limit: Optional[int] = None,
    ) -> Tuple[array, List[bytes]]:
        """The next batch: at most ``max_items`` and never an index >= ``limit``."""
        start_index = self.next_index
        stop = start_index + max_items
        if limit is not None and limit < stop:
            stop = limit
        payloads: List[bytes] = []
        size = 0
        index = start_index
        if self._held is not None and index < stop:
            payloads.append(self._held)
            size = len(self._held) + _ITEM_OVERHEAD
            self._held = None
            index += 1
        if not self.exhausted:
            it = self._it
            deadline = time.perf_counter() + max_seconds
            perf = time.perf_counter
            while index < stop and size < max_bytes:
                try:
                    value = next(it)
                except StopIteration:
                    self.exhausted = True
                    break
                payload = dumps_input(value, index)
                cost = len(payload) + _ITEM_OVERHEAD
                if cost > _FRAME_ROOM:
                    raise PayloadTooLarge(
                        f"input {index} is {len(payload) / 1e6:.1f} MB pickled, over the "
                        f"{MAX_FRAME_BYTES // 2**20} MiB a frame may carry; pass a path or URL "
                        "and load the data inside the function"
                    )
                if payloads and size + cost > _FRAME_ROOM:
                    self._held = payload  # would overflow this frame: first of the next batch
                    break
                payloads.append(payload)
                size += cost
                index += 1
                if perf() > deadline:
                    break
        self.next_index = start_index + len(payloads)
        return array("Q", range(start_index, self.next_index)), payloads

    @property
    def done(self) -> bool:
        """Every input has been taken."""
        return self.exhausted and self._held is None
