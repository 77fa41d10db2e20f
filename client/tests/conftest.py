"""Shared fixtures of the client unit tests: a scripted coordinator on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripted_coordinator import ScriptedCoordinator  # noqa: E402


@pytest.fixture
def scripted(monkeypatch):
    """A ScriptedCoordinator that FLEETMAP_COORDINATOR points at for the test."""
    server = ScriptedCoordinator()
    monkeypatch.setenv("FLEETMAP_COORDINATOR", server.url)
    yield server
    server.close()
