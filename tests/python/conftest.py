"""End-to-end fixtures: a private local cluster of the real ``fleetmap-coordinator`` and
``fleetmapd`` binaries (FLEETMAP_HOME in a temporary directory) shared by the session, and a
per-test deadline so a hang fails instead of stalling the suite."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_support  # noqa: E402


@pytest.fixture(autouse=True)
def deadline(request):
    """Fail a test that runs longer than its ``deadline`` marker (default 120 s)."""
    marker = request.node.get_closest_marker("deadline")
    seconds = int(marker.args[0]) if marker else 120

    def expired(signum, frame):
        raise TimeoutError(f"{request.node.name} ran past its {seconds} s deadline")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): per-test time limit of the e2e suite")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A coordinator and one node started through ``fleetmap.local_cluster`` for this session."""
    home = tmp_path_factory.mktemp("fleetmap-home")
    started = e2e_support.Cluster.start(home)
    saved = {k: os.environ.get(k) for k in ("FLEETMAP_COORDINATOR", "FLEETMAP_HOME")}
    os.environ["FLEETMAP_COORDINATOR"] = started.url
    os.environ["FLEETMAP_HOME"] = str(home)
    try:
        yield started
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        started.stop()


@pytest.fixture
def need_cgroups():
    """Skip (loudly, with the reason) where the host cannot enforce limits with cgroups."""
    reason = e2e_support.cgroups_missing()
    if reason:
        pytest.skip(f"needs root and cgroups: {reason}")
