"""Local-cluster plumbing that needs no binaries: binary lookup order, liveness checks with
real processes, per-home node ids, and the CLI against a home with nothing running."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from fleetmap import cli, config, errors, local_cluster


def _exe(path):
    path.write_text("#!/bin/sh\nexec sleep 30\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_bin_dir_wins_over_the_rest(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = _exe(bin_dir / "fleetmapd")
    monkeypatch.setenv("FLEETMAP_BIN_DIR", str(bin_dir))
    assert local_cluster.find_binary("fleetmapd") == exe


def test_path_is_searched_and_missing_binary_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETMAP_BIN_DIR", raising=False)
    on_path = tmp_path / "p"
    on_path.mkdir()
    exe = _exe(on_path / "fleetmap-test-binary")
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{os.environ['PATH']}")
    assert local_cluster.find_binary("fleetmap-test-binary") == exe
    with pytest.raises(errors.LocalClusterError, match="cargo build --release"):
        local_cluster.find_binary("fleetmap-no-such-binary")


def test_pid_alive_checks_the_binary_name_and_zombies(tmp_path):
    exe = _exe(tmp_path / "fleetmapd")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5  # until the child has exec'd, /proc shows python
        while not local_cluster.pid_alive(proc.pid, "sleep") and time.monotonic() < deadline:
            time.sleep(0.005)
        assert local_cluster.pid_alive(proc.pid, "sleep")
        assert not local_cluster.pid_alive(proc.pid, "fleetmapd")  # a reused pid is not ours
        proc.kill()
        time.sleep(0.05)  # now a zombie until reaped
        assert not local_cluster.pid_alive(proc.pid, "sleep")
    finally:
        proc.kill()
        proc.wait()
    assert not local_cluster.pid_alive(None, "sleep")
    assert exe.exists()


def test_node_id_is_stable_per_home_and_distinct_across_homes(tmp_path):
    a = local_cluster.Paths(tmp_path / "a")
    b = local_cluster.Paths(tmp_path / "b")
    assert a.node_id == local_cluster.Paths(tmp_path / "a").node_id
    assert a.node_id != b.node_id
    assert a.cgroup_parent == f"fleetmap/{a.node_id}"
    assert a.coordinator_addr == tmp_path / "a" / "local" / "coordinator.addr"


def test_nothing_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEETMAP_HOME", str(tmp_path))
    monkeypatch.delenv("FLEETMAP_COORDINATOR", raising=False)
    assert local_cluster.running_url() is None
    assert cli.main(["local", "status"]) == 3
    assert "stopped" in capsys.readouterr().out
    assert cli.main(["status"]) == 1
    assert "no local cluster is running" in capsys.readouterr().err
    assert cli.main(["local", "down"]) == 0
    assert capsys.readouterr().out.strip() == "not running"


def test_stale_pid_files_are_not_trusted(tmp_path, monkeypatch):
    paths = local_cluster.Paths(tmp_path)
    paths.dir.mkdir(parents=True)
    paths.coordinator_addr.write_text("http://127.0.0.1:1\n")
    paths.coordinator_pid.write_text(str(os.getpid()))  # alive, but it is python, not the coordinator
    paths.node_pid.write_text("999999999")
    assert local_cluster.running_url(tmp_path) is None


def test_bad_cgroups_mode_refused(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="cgroups must be one of auto, required, off"):
        local_cluster.ensure_running(tmp_path, cgroups="sometimes")


def test_login_writes_a_private_key_file_that_is_then_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEETMAP_HOME", str(tmp_path))
    monkeypatch.delenv("FLEETMAP_API_KEY", raising=False)
    assert config.resolve_api_key(None) is None
    assert cli.main(["login", "--api-key", "sekrit"]) == 0
    path = tmp_path / "api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.resolve_api_key(None) == "sekrit"
    assert config.resolve_api_key("explicit") == "explicit"
    monkeypatch.setenv("FLEETMAP_API_KEY", "from-env")
    assert config.resolve_api_key(None) == "from-env"


def test_cli_talks_to_the_configured_coordinator(scripted, capsys):
    assert cli.main(["cancel", "abc123"]) == 0
    assert scripted.deletes == ["abc123"]
    assert "abc123: cancelled" in capsys.readouterr().out
    assert cli.main(["jobs"]) == 1  # the scripted server has no job list: the 404 is reported
    assert "no route GET /v1/jobs" in capsys.readouterr().err


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "fleetmap", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "local" in out.stdout and "jobs" in out.stdout
