"""Fixtures: a short temporary directory (Unix socket paths are limited to 108 bytes), a running
zygote acting for fleetmapd, and one-off worker processes."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import worker_harness as harness  # noqa: E402


@pytest.fixture
def sock_dir():
    """A fresh directory under /tmp with a short path, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="fmw-", dir="/tmp")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def zygote(sock_dir):
    """A running zygote process with the daemon's listening socket."""
    process = harness.ZygoteProcess(sock_dir)
    yield process
    process.close()


@pytest.fixture
def make_zygote(sock_dir):
    """Start a zygote with extra command-line arguments (closed at the end of the test)."""
    started = []

    def start(*extra_args):
        directory = sock_dir / ("z%d" % len(started))
        directory.mkdir()
        process = harness.ZygoteProcess(directory, extra_args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def make_worker(sock_dir):
    """Start one worker-mode process (killed at the end of the test if still running)."""
    started = []

    def start(*extra_args, socket_path=None):
        directory = sock_dir / ("w%d" % len(started))
        directory.mkdir()
        process = harness.WorkerProcess(directory, extra_args, socket_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
