"""Per-instance limits and instance failures, checked from inside the workload: CPU affinity,
the cgroup memory limit, OOM kills, exits, timeouts, retries, and refusals before any input
runs."""

from __future__ import annotations

import os
import time

import pytest

import e2e_support
from fleetmap import (
    InputTimeout,
    InstanceExited,
    InvalidArgument,
    NoCapacity,
    OutOfMemory,
    remote_parallel_map,
)

GIB = 1024**3


def test_func_cpu_pins_each_instance(cluster, need_cgroups):
    cpus = remote_parallel_map(e2e_support.affinity, range(6), func_cpu=1)
    assert all(len(c) == 1 for c in cpus), cpus
    if os.cpu_count() and os.cpu_count() >= 2:
        both = remote_parallel_map(e2e_support.affinity, range(2), func_cpu=2)
        assert all(len(c) == 2 for c in both), both


def test_instances_wake_when_their_timers_ask(cluster, need_cgroups):
    # The daemon (root) gives the zygote, and so every worker it forks, 1 ns of timer slack
    # instead of Linux's 50 µs: an instance's sleeps and timeouts end when asked.
    assert remote_parallel_map(e2e_support.timer_slack_ns, range(3)) == [1, 1, 1]


def test_func_ram_is_the_cgroup_memory_limit(cluster, need_cgroups):
    assert remote_parallel_map(e2e_support.memory_limit_bytes, range(2), func_ram=1) == [GIB, GIB]
    assert remote_parallel_map(e2e_support.memory_limit_bytes, [0], func_ram=2) == [2 * GIB]
    # Emptied homes keep the last job's memory limit and a job rewrites only what differs:
    # whatever home a job's worker comes from, up or down, it has the job's limit and CPUs.
    for func_ram in (1, 1, 2, 2, 1, 3, 1):
        assert remote_parallel_map(e2e_support.memory_limit_bytes, [0], func_ram=func_ram) == [
            func_ram * GIB
        ], func_ram
        assert len(remote_parallel_map(e2e_support.affinity, [0], func_ram=func_ram)[0]) == 1


def test_instances_live_under_the_node_cgroup_parent(cluster, need_cgroups):
    (paths,) = remote_parallel_map(e2e_support.cgroup_paths, [0])
    memory = paths.get("memory") or paths.get("unified")
    assert memory.startswith("/" + cluster.paths.cgroup_parent + "/"), (memory, cluster.paths.cgroup_parent)


def hog(x):
    if x == 1:
        block = b"x" * (2 * GIB)
        return len(block)
    return x


def test_exceeding_func_ram_is_out_of_memory_and_the_rest_completes(cluster, need_cgroups):
    with pytest.raises(OutOfMemory) as info:
        remote_parallel_map(hog, range(4), func_ram=1)
    exc = info.value
    assert exc.index == 1
    assert "input 1" in str(exc) and "func_ram=1 GB" in str(exc), str(exc)
    assert exc.results[0] == 0 and exc.results[2] == 2 and exc.results[3] == 3
    assert exc.results[1] is exc


def exit_on_two(x):
    if x == 2:
        os._exit(3)
    return x


def test_worker_exit_is_instance_exited_without_hanging(cluster):
    start = time.monotonic()
    with pytest.raises(InstanceExited) as info:
        remote_parallel_map(exit_on_two, range(5))
    assert time.monotonic() - start < 30
    exc = info.value
    assert exc.index == 2 and exc.exit_code == 3
    assert [r for i, r in enumerate(exc.results) if i != 2] == [0, 1, 3, 4]


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_timeout_kills_the_slow_input_only(cluster):
    start = time.monotonic()
    with pytest.raises(InputTimeout) as info:
        remote_parallel_map(nap, [0, 30, 0.1], timeout=0.5)
    assert time.monotonic() - start < 15
    assert info.value.index == 1
    assert info.value.results[0] == 0 and info.value.results[2] == 0.1


def flaky(marker_path):
    if not os.path.exists(marker_path):
        with open(marker_path, "w"):
            pass
        os._exit(1)
    return "ok"


def test_retries_rerun_an_input_whose_instance_died(cluster, tmp_path):
    assert remote_parallel_map(flaky, [str(tmp_path / "a"), str(tmp_path / "b")], retries=1) == ["ok", "ok"]
    with pytest.raises(InstanceExited):
        remote_parallel_map(flaky, [str(tmp_path / "c")], retries=0)


def touch(path):
    with open(path, "w"):
        pass
    return path


def test_nothing_fits_is_no_capacity_before_any_input_runs(cluster, tmp_path):
    marker = tmp_path / "ran"
    jobs_before = len(cluster.jobs())
    with pytest.raises(NoCapacity) as info:
        remote_parallel_map(touch, [str(marker)], func_cpu=96)
    message = str(info.value)
    assert "\n" not in message and "96" in message, message
    assert not marker.exists()
    assert len(cluster.jobs()) <= jobs_before + 1


def test_argument_errors_before_any_input_runs(cluster, tmp_path):
    marker = tmp_path / "ran"
    jobs_before = [j["job_id"] for j in cluster.jobs()]
    for kwargs in ({"func_cpu": 0}, {"func_ram": 400}, {"parallelism": 0}, {"retries": -1}, {"timeout": -1}):
        with pytest.raises(InvalidArgument):
            remote_parallel_map(touch, [str(marker)], **kwargs)
    assert not marker.exists()
    assert [j["job_id"] for j in cluster.jobs()] == jobs_before
