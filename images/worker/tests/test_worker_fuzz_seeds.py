"""Replays the atheris harness (fuzz/fuzz_worker_frames.py) over its kept seeds and over the
inputs that once broke the worker, without atheris: each must pass the harness's checks."""

from __future__ import annotations

import os
import sys

import pytest

import fleetmap_worker as fw

FUZZ_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
sys.path.insert(0, FUZZ_DIR)

import fuzz_worker_frames as harness  # noqa: E402

SEEDS = sorted(os.listdir(os.path.join(FUZZ_DIR, "seeds")))


@pytest.mark.parametrize("name", SEEDS)
def test_seed_passes_the_harness(name):
    with open(os.path.join(FUZZ_DIR, "seeds", name), "rb") as handle:
        harness.check_one(handle.read())


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_a_protocol_error_not_a_crash(body):
    # Found while hardening: json.loads raised RecursionError, so a hostile ASSIGN or FAILURE
    # body ended the worker as an internal error (exit 70) instead of a protocol error (76).
    with pytest.raises(fw.ProtocolError) as caught:
        fw.decode_json_object(body, "ASSIGN")
    assert caught.value.code == fw.ProtocolError.MALFORMED
    assert "nests JSON deeper" in str(caught.value)


def test_a_deeply_nested_zygote_command_is_ignored_and_the_next_one_runs(capfd):
    # Found by CI's fuzz run: the zygote's command parser let RecursionError escape, so one
    # hostile line from the daemon's pipe would have ended the zygote (and the node's warm pool).
    zygote = harness._CountingZygote()
    zygote._run_command(b"[" * 100_000)
    zygote._run_command(b'{"cmd":"spawn","count":2}')
    assert zygote.spawned == 2
    assert "nests JSON too deeply" in capfd.readouterr().err
