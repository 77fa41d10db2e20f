"""Hostile functions, end to end through the real binaries (process runtime, cgroups): a
function that forks children, spins every CPU, closes or scribbles on its socket to the daemon,
or sleeps past its timeout gets one clear per-input error; afterwards the node is healthy (a
following job works), its slots are free again, and no process or slot cgroup is left.

Plus the fault "daemon killed (-9) mid-job and restarted": the coordinator re-dispatches the
inputs of the lost node onto the restarted one and every input yields exactly one result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time

import pytest

import e2e_support
import hardening_support as hs
from fleetmap import InputTimeout, InstanceError, InstanceExited, InstanceKilled, remote_parallel_map

NODE_ID = "hostile"
# Each instance's scratch tmpfs on the module's node (small, so filling it is quick).
SCRATCH_MIB = 32


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """A coordinator and a node of this module's own (so its cgroups and processes are known)."""
    missing = e2e_support.binaries_missing()
    if missing:
        pytest.fail(f"the hostile-function suite runs the real binaries: {missing}")
    home = tmp_path_factory.mktemp("hostile")
    coord = hs.coordinator(home, "--node-wait-ms", "5000").start()
    node = hs.node(home, NODE_ID, coord.url, "--scratch-mib", str(SCRATCH_MIB)).start()
    saved = os.environ.get("FLEETMAP_COORDINATOR")
    os.environ["FLEETMAP_COORDINATOR"] = coord.url
    try:
        yield coord, node
    finally:
        if saved is None:
            os.environ.pop("FLEETMAP_COORDINATOR", None)
        else:
            os.environ["FLEETMAP_COORDINATOR"] = saved
        node.stop()
        coord.stop()
        hs.remove_cgroup_parent(NODE_ID)


def assert_node_clean(node, leftovers=()):
    """The node's slots are free, every process in its cgroups is a fleetmap worker or zygote,
    the given pids are gone, and a following job works."""
    info = {}

    def settled():
        info.update(node.get_json("/v1/node"))
        return info["instances"] == 0 and info["free_cpus"] == info["cpus"] and info["jobs"] == 0

    assert e2e_support.wait_until(settled, 10, 0.1), f"slots not restored: {info}"
    gone = e2e_support.wait_until(lambda: all(e2e_support.pid_gone(p) for p in leftovers), 10, 0.05)
    assert gone, f"processes left behind: {[p for p in leftovers if not e2e_support.pid_gone(p)]}"
    if e2e_support.cgroups_missing() is None:
        strangers = []

        def only_workers():
            strangers.clear()
            for pid in hs.cgroup_procs(NODE_ID):
                if e2e_support.pid_gone(pid):
                    continue  # a zombie the zygote has not reaped yet
                try:
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                except OSError:
                    continue
                if b"fleetmap_worker.py" not in cmdline:
                    strangers.append((pid, cmdline[:100]))
            return not strangers

        assert e2e_support.wait_until(only_workers, 10, 0.1), \
            f"foreign processes in the node's cgroups: {strangers}"
    assert remote_parallel_map(abs, [-1, -2, -3]) == [1, 2, 3]


# ---- functions that run on the node --------------------------------------------------------


def fork_children(x):
    """Leaves a double-forked, session-leading grandchild and a plain child sleeping."""
    import os
    import subprocess
    child = subprocess.Popen(["sleep", "1000"])
    grandchild = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & echo $!"], stdout=subprocess.PIPE, start_new_session=True)
    orphan = int(grandchild.stdout.readline())
    return [os.getpid(), child.pid, orphan]


def spin_everything(seconds):
    """Forks one spinner per host CPU, asks for every CPU, and reports what it got."""
    import os
    import time
    wanted = set(range(os.cpu_count()))
    try:
        os.sched_setaffinity(0, wanted)
    except OSError:
        pass
    pids = []
    for _ in range(os.cpu_count()):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + 1000
            while time.monotonic() < end:
                pass
            os._exit(0)
        pids.append(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return {"affinity": sorted(os.sched_getaffinity(0)),
            "children": [sorted(os.sched_getaffinity(p)) for p in pids], "pids": pids}


def close_socket(x):
    import os
    if x == 1:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    os.close(int(fd))
            except OSError:
                pass
    return x


def write_garbage(x):
    import os
    if x == 1:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    os.write(int(fd), b"\x7f\xff\xff\xff\xff garbage from the function")
            except OSError:
                pass
        import time
        time.sleep(5)
    return x


def sleep_forever(x):
    import time
    if x == 1:
        while True:
            time.sleep(3600)
    return x


def fill_scratch(x):
    """Input 1 writes into its cwd until the disk is full; the others look at their scratch."""
    import os
    import tempfile
    if x == 1:
        chunk = b"\1" * (1 << 20)
        with open("fill.bin", "wb") as out:
            while True:
                out.write(chunk)
                out.flush()
    stat = os.statvfs(".")
    return {"cwd": os.getcwd(), "tmp": tempfile.gettempdir(), "entries": os.listdir("."),
            "bytes": stat.f_blocks * stat.f_frsize}


def slow(x):
    import time
    time.sleep(0.3)
    return x * 2


# ---- tests ---------------------------------------------------------------------------------


@pytest.mark.deadline(120)
def test_forked_children_are_killed_when_the_instance_ends(private, need_cgroups):
    _, node = private
    (pids,) = remote_parallel_map(fork_children, [0])
    assert len(pids) == 3
    # The worker itself returns to the pool or exits; its children must not outlive the job.
    assert_node_clean(node, leftovers=pids[1:])


@pytest.mark.deadline(120)
def test_a_cpu_spinner_stays_in_its_cpuset_and_others_keep_running(private, need_cgroups):
    _, node = private
    cpus = node.get_json("/v1/node")["cpus"]
    if cpus < 2:
        pytest.skip("needs 2 CPUs to run a spinner beside another job")
    import threading
    box = {}
    spinner = threading.Thread(
        target=lambda: box.update(r=remote_parallel_map(spin_everything, [3.0], func_cpu=1)[0]))
    spinner.start()
    time.sleep(1.0)
    started = time.monotonic()
    assert remote_parallel_map(slow, [1, 2, 3], func_cpu=1) == [2, 4, 6]
    beside = time.monotonic() - started
    spinner.join(60)
    report = box["r"]
    assert len(report["affinity"]) == 1, report
    assert all(child == report["affinity"] for child in report["children"]), report
    # Three 0.3 s inputs on the free CPU: not starved by the spinner (generous bound).
    assert beside < 20, beside
    assert_node_clean(node, leftovers=report["pids"])


@pytest.mark.deadline(120)
def test_a_function_closing_its_socket_fails_only_its_input(private):
    _, node = private
    with pytest.raises(InstanceError) as caught:
        remote_parallel_map(close_socket, [0, 1, 2])
    err = caught.value
    assert isinstance(err, (InstanceExited, InstanceKilled)), repr(err)
    assert err.index == 1 and "input 1" in str(err), str(err)
    assert err.results[0] == 0 and err.results[2] == 2
    assert_node_clean(node)


@pytest.mark.deadline(120)
def test_garbage_on_the_socket_fails_only_its_input(private):
    _, node = private
    with pytest.raises(InstanceError) as caught:
        remote_parallel_map(write_garbage, [0, 1, 2])
    err = caught.value
    assert err.index == 1 and "input 1" in str(err), str(err)
    assert err.results[0] == 0 and err.results[2] == 2
    assert_node_clean(node)


@pytest.mark.deadline(120)
def test_sleeping_forever_with_a_timeout_fails_only_its_input(private):
    _, node = private
    started = time.monotonic()
    with pytest.raises(InputTimeout) as caught:
        remote_parallel_map(sleep_forever, [0, 1, 2], timeout=1)
    assert time.monotonic() - started < 30
    err = caught.value
    assert err.index == 1 and "timeout=1" in str(err), str(err)
    assert err.results[0] == 0 and err.results[2] == 2
    assert_node_clean(node)


def scratch_mounts(state_dir):
    """Mount points below the node's scratch root (from this process's mountinfo)."""
    root = os.path.join(os.path.realpath(state_dir), "scratch")
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    return [p for p in points if p == root or p.startswith(root + "/")]


@pytest.mark.deadline(120)
def test_a_function_filling_its_disk_gets_enospc_and_leaves_nothing(private):
    _, node = private
    if os.geteuid() != 0:
        pytest.skip("SKIPPED: bounded scratch spaces are tmpfs mounts, which need root; "
                    "as another user the daemon gives unbounded scratch directories")
    state = node.argv[node.argv.index("--state-dir") + 1]
    with pytest.raises(OSError) as caught:
        remote_parallel_map(fill_scratch, [0, 1, 2])
    err = caught.value
    assert err.errno == 28, repr(err)  # ENOSPC, the function's own exception
    assert err.fleetmap_index == 1, err.fleetmap_index
    notes = "\n".join(getattr(err, "__notes__", []))
    assert f"is full at its {SCRATCH_MIB} MiB limit" in notes and "--scratch-mib" in notes, notes
    assert "raised by input 1" in notes, notes
    assert_node_clean(node)
    # Nothing of the job is left on any disk: what remains are the homes' scratch spaces
    # (made ahead of need for idle workers, emptied when a worker leaves for the next one),
    # each an empty tmpfs named like its home.
    root = os.path.join(os.path.realpath(state), "scratch")

    def only_idle_workers_scratch():
        names = os.listdir(root)
        mounts = {os.path.basename(p) for p in scratch_mounts(state)}
        return set(names) == mounts and all(
            re.fullmatch(r"h\d+-\d+", name)
            and not os.listdir(os.path.join(root, name)) for name in names)

    assert e2e_support.wait_until(only_idle_workers_scratch, 10, 0.05), \
        (os.listdir(root), scratch_mounts(state))
    # The next job on the node's slots finds an empty scratch of the configured size.
    (seen,) = remote_parallel_map(fill_scratch, [0])
    assert seen["entries"] == [] and seen["cwd"] == seen["tmp"], seen
    assert seen["cwd"].startswith(os.path.join(os.path.realpath(state), "scratch") + "/"), seen
    assert seen["bytes"] == SCRATCH_MIB << 20, seen


FAULT_CLIENT = textwrap.dedent(
    """
    import json, time
    from fleetmap import remote_parallel_map

    def nap(x):
        import time
        time.sleep(0.2)
        return x * x

    results = remote_parallel_map(nap, range(60))
    print(json.dumps(results))
    """
)


@pytest.mark.deadline(240)
def test_daemon_killed_mid_job_and_restarted_loses_nothing(tmp_path, need_cgroups):
    missing = e2e_support.binaries_missing()
    if missing:
        pytest.fail(missing)
    coord = hs.coordinator(tmp_path, "--node-timeout-ms", "1500", "--redispatch-wait-ms", "60000").start()
    node = hs.node(tmp_path, "killed", coord.url).start()
    client = None
    try:
        env = dict(os.environ, FLEETMAP_COORDINATOR=coord.url)
        import subprocess
        import sys
        client = subprocess.Popen([sys.executable, "-c", FAULT_CLIENT], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        state = str(tmp_path / "state-killed")
        assert e2e_support.wait_until(
            lambda: node.get_json("/v1/node")["instances"] > 0, 30, 0.05), "the job never started"
        time.sleep(1.0)
        workers = hs.processes_with(state)
        assert workers, "no worker process of the node found"
        node.kill9()
        # The killed daemon's workers and cgroups are orphans until the restart removes them.
        node.start()
        gone = e2e_support.wait_until(lambda: all(e2e_support.pid_gone(p) for p in workers), 15, 0.05)
        assert gone, f"workers of the killed daemon still alive: {[p for p in workers if not e2e_support.pid_gone(p)]}"
        out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err[-3000:]
        results = json.loads(out.strip().splitlines()[-1])
        assert results == [x * x for x in range(60)], "every input exactly once, in order"
        jobs = coord.get_json("/v1/jobs")
        assert jobs[0]["state"] == "completed" and jobs[0]["done"] == 60, jobs[0]
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        node.stop()
        coord.stop()
        hs.remove_cgroup_parent("killed")
