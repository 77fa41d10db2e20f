"""Coverage-guided fuzzing (atheris) of the worker's daemon-facing parsing.

The first input byte picks what is fuzzed, the rest is the data:

- 0: ``FrameReader`` over a byte stream: every frame it returns re-encodes to exactly the bytes
  it was read from, and the only error is ``ProtocolError``;
- 1: item batches (``decode_item_batch`` / ``split_item_batch``): a body that decodes
  re-encodes to itself;
- 2: FAILURE bodies, 3: OUTPUT bodies, 4: JSON object bodies (ASSIGN and friends): decoded
  values round-trip, the only error is ``ProtocolError``;
- 5: the zygote's command lines: never raise, never spawn a count outside 0..MAX_SPAWN_COUNT.

``check_one`` is plain Python so the regression test (tests/test_worker_fuzz_seeds.py) runs the
kept seeds and every crash found without atheris.  Run the fuzzer with
``python fuzz_worker_frames.py [corpus dirs] -max_total_time=N`` (``scripts/fuzz`` does).
"""

from __future__ import annotations

import io
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports():
        import fleetmap_worker as fw
else:
    import fleetmap_worker as fw

# A small frame limit so that FrameTooLarge is reached as often as everything else.
MAX_BODY = 4096


def _frames(data: bytes) -> None:
    reader = fw.FrameReader(io.BytesIO(data), MAX_BODY)
    consumed = b""
    while True:
        try:
            frame = reader.read_frame()
        except fw.ProtocolError as exc:
            assert exc.code in (fw.ProtocolError.TRUNCATED, fw.ProtocolError.UNKNOWN_KIND,
                                fw.ProtocolError.FRAME_TOO_LARGE), exc.code
            break
        if frame is None:
            assert consumed == data, "a clean end comes only after every byte"
            break
        kind, body = frame
        assert kind in fw.FRAME_NAMES and len(body) <= MAX_BODY
        consumed += fw.encode_frame(kind, body)
        assert data.startswith(consumed), "frames re-encode to the bytes they came from"


def _batch(data: bytes) -> None:
    try:
        items = fw.split_item_batch(data)
    except fw.ProtocolError as exc:
        assert exc.code == fw.ProtocolError.MALFORMED
        return
    indices, lengths, start = fw.decode_item_batch(data)
    assert len(indices) == len(lengths) == len(items)
    assert start == 4 + 12 * len(items)
    body = fw.encode_item_batch([i for i, _ in items], [p for _, p in items])
    assert body == data, "decode then encode is the identity"


def _failure(data: bytes) -> None:
    try:
        index, info, exc = fw.decode_failure(data)
    except fw.ProtocolError as err:
        assert err.code == fw.ProtocolError.MALFORMED
        return
    assert isinstance(info, dict) and 0 <= index < 2**64
    again = fw.decode_failure(fw.encode_failure(index, info, exc))
    assert again == (index, info, exc) or _has_nan(info), "a decoded failure round-trips"


def _has_nan(value) -> bool:
    """JSON NaN never equals itself, so such values cannot be compared after a round trip."""
    return "NaN" in repr(value)


def _output(data: bytes) -> None:
    try:
        index, stream, text = fw.decode_output(data)
    except fw.ProtocolError as err:
        assert err.code == fw.ProtocolError.MALFORMED
        return
    assert stream in (fw.STDOUT, fw.STDERR)
    assert fw.decode_output(fw.encode_output(index, stream, text)) == (index, stream, text)


def _json(data: bytes) -> None:
    try:
        value = fw.decode_json_object(data, "ASSIGN")
    except fw.ProtocolError as err:
        assert err.code == fw.ProtocolError.MALFORMED
        return
    assert isinstance(value, dict)
    again = fw.decode_json_object(fw.encode_json(value), "ASSIGN")
    assert again == value or _has_nan(value)
    if "progress_path" in value:
        # The one field the worker acts on: anything but a usable path is a clean refusal.
        try:
            fw.open_progress(value if not isinstance(value.get("progress_path"), str)
                             else {"progress_path": ""})
        except fw.ProtocolError:
            pass


class _CountingZygote(fw.Zygote):
    """A zygote whose spawns are only counted (nothing is forked)."""

    def __init__(self) -> None:
        super().__init__("/nonexistent.sock")
        self.spawned = 0

    def _spawn(self, count: int) -> None:
        self.spawned += count


def _zygote(data: bytes) -> None:
    zygote = _CountingZygote()
    stderr = sys.stderr
    devnull = open(os.devnull, "w")
    old = os.dup(2)
    os.dup2(devnull.fileno(), 2)
    try:
        for line in data.split(b"\n"):
            zygote._run_command(line)
    finally:
        os.dup2(old, 2)
        os.close(old)
        devnull.close()
        sys.stderr = stderr
    assert zygote.spawned <= fw.Zygote.MAX_SPAWN_COUNT * (data.count(b"\n") + 1)


CHECKS = (_frames, _batch, _failure, _output, _json, _zygote)


def check_one(data: bytes) -> None:
    """Run the check the first byte selects on the rest; raises AssertionError on a bug."""
    if not data:
        return
    CHECKS[data[0] % len(CHECKS)](bytes(data[1:]))


def main() -> None:
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
