"""Zygote tests: the JSON-line control protocol on stdin/stdout (docs/protocol.md section 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import worker_harness as harness


def _state(pid: int) -> str:
    """The process state letter from /proc, or '' if the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def test_ready_event_names_the_zygote_and_its_python(zygote):
    assert zygote.ready == {"event": "ready", "pid": zygote.proc.pid,
                            "python": "%d.%d.%d" % sys.version_info[:3]}


def test_spawn_count_forks_that_many_workers_that_say_hello(zygote):
    pids = zygote.spawn(3)
    assert len(set(pids)) == 3 and zygote.proc.pid not in pids
    conns = [zygote.listener.accept() for _ in pids]
    assert sorted(conn.pid for conn in conns) == sorted(pids)
    for pid in pids:
        with open("/proc/%d/status" % pid) as handle:
            ppid = [line for line in handle if line.startswith("PPid:")][0].split()[1]
        assert int(ppid) == zygote.proc.pid


def test_spawn_zero_does_nothing_and_the_zygote_keeps_serving(zygote):
    zygote.command(b'{"cmd":"spawn","count":0}\n')
    conn = zygote.spawn_worker()
    assert conn.hello["version"] == 1
    assert [e["event"] for e in zygote._seen] == ["ready", "spawned"]


def test_bad_commands_are_logged_and_ignored(zygote):
    zygote.command(b"this is not json\n")
    zygote.command(b'{"cmd":"explode"}\n')
    zygote.command(b'{"cmd":"spawn","count":-1}\n')
    zygote.command(b'{"cmd":"spawn","count":"2"}\n')
    zygote.command(b'{"cmd":"spawn",' + b'"count":1}\n')  # a good one still works
    conn = zygote.listener.accept()
    assert zygote.wait_event(lambda e: e["event"] == "spawned")["pid"] == conn.pid
    errors = zygote.stderr_text()
    assert "ignoring a command that is not valid JSON" in errors
    assert 'ignoring an unknown command; the only command is {"cmd":"spawn","count":N}' in errors
    assert "ignoring spawn with count -1; count must be an integer from 0 to 4096" in errors
    assert "ignoring spawn with count '2'" in errors


def test_the_daemons_spawn_line_and_any_other_json_form_mean_the_same(capfd, monkeypatch):
    import fleetmap_worker as fw

    class Counting(fw.Zygote):
        def __init__(self) -> None:
            super().__init__("/nonexistent.sock")
            self.counts = []

        def _spawn(self, count: int) -> None:
            self.counts.append(count)

    zygote = Counting()

    def no_json(*_args):
        raise AssertionError("the daemon's own spawn line must not go through json")

    with monkeypatch.context() as patched:
        patched.setattr(fw.json, "loads", no_json)
        zygote._run_command(b'{"cmd":"spawn","count":2}')  # as fleetmapd writes it
    for line in (b' { "count": 3, "cmd": "spawn" } ',  # any other JSON form: read with json
                 b'{"cmd":"spawn","count":4096}',
                 b'{"cmd":"spawn","count":4097}',  # over the limit, on either path
                 b'{"cmd":"spawn","count":0123}',  # not JSON (a leading zero)
                 b'{"cmd":"spawn","count":0}'):
        zygote._run_command(line)
    assert zygote.counts == [2, 3, 4096, 0]
    errors = capfd.readouterr().err
    assert "ignoring spawn with count 4097; count must be an integer from 0 to 4096" in errors
    assert "ignoring a command that is not valid JSON" in errors


def test_commands_split_across_writes_are_joined(zygote):
    zygote.command(b'{"cmd":"sp')
    time.sleep(0.1)
    zygote.command(b'awn","count":2}\n')
    first = zygote.wait_event(lambda e: e["event"] == "spawned")
    second = zygote.wait_event(lambda e: e["event"] == "spawned" and e["pid"] != first["pid"])
    accepted = {zygote.listener.accept().pid for _ in range(2)}
    assert accepted == {first["pid"], second["pid"]}


def test_exited_children_are_reaped_and_reported(zygote):
    pids = zygote.spawn(2)
    conns = {conn.pid: conn for conn in (zygote.listener.accept() for _ in pids)}
    os.kill(pids[0], signal.SIGKILL)
    conns[pids[1]].send(harness.SHUTDOWN)
    assert zygote.wait_exit(pids[0]) == {"event": "exited", "pid": pids[0], "signal": 9}
    assert zygote.wait_exit(pids[1]) == {"event": "exited", "pid": pids[1], "exit_code": 0}
    spawned_at = [i for i, e in enumerate(zygote._seen) if e.get("pid") == pids[0]]
    assert [zygote._seen[i]["event"] for i in spawned_at] == ["spawned", "exited"]
    for pid in pids:
        assert _state(pid) in ("", "X"), "child %d was not reaped" % pid


def test_stdin_eof_makes_the_zygote_exit(zygote):
    zygote.proc.stdin.close()
    assert zygote.proc.wait(harness.TIMEOUT) == 0
    assert zygote.next_event() == {"event": "eof"}


def test_zygote_refuses_a_bad_command_line(sock_dir):
    result = subprocess.run([sys.executable, str(harness.WORKER_PY), "zygote"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert result.returncode == 2
    assert b"the following arguments are required: --socket" in result.stderr
    result = subprocess.run([sys.executable, str(harness.WORKER_PY), "worker", "--socket", "x",
                             "--max-frame-bytes", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert result.returncode == 2
    assert b"--max-frame-bytes must be at least 1024" in result.stderr
