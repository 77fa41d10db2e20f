"""Worker protocol tests: this test acts as fleetmapd over a real Unix socket, with workers
forked by a real zygote process (or started in ``worker`` mode), and checks every frame."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import worker_harness as harness
from worker_harness import FAILURE, NO_INDEX, RESULTS, SHUTDOWN, pickled

# Functions and classes below travel to the worker by value, like a user's __main__ code.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(x):
    return x * 2


class BadValue(Exception):
    """An exception class the worker cannot import: it must travel by value."""


def raise_on_five(x):
    if x == 5:
        raise BadValue("bad value %d" % x)
    return x


class LockedError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """An exception that pickles but cannot be unpickled (its __init__ needs two arguments)."""

    def __init__(self, a, b):
        super().__init__("%s/%s" % (a, b))


class BadStrError(Exception):
    """An exception whose str() raises."""

    def __str__(self):
        raise RuntimeError("no str for you")


def raise_awkward(x):
    if x == 0:
        raise LockedError("locked")
    if x == 1:
        raise TwoArgError("a", "b")
    raise BadStrError()


def chatty(x):
    print("out %d" % x)
    print("err %d" % x, file=sys.stderr)
    thread = threading.Thread(target=lambda: print("thread %d" % x))
    thread.start()
    thread.join()
    sys.stdout.write("partial %d" % x)
    return x


def exit_on_seven(x):
    if x == 7:
        print("about to exit")
        os._exit(3)
    return x


def segfault_on_two(x):
    if x == 2:
        import ctypes
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.string_at(0)
    return x


def sys_exit_with(x):
    sys.stdout.write("leaving")  # a partial line: it must still be sent before the exit
    sys.exit(x)


def unpicklable_on_two(x):
    if x == 2:
        return threading.Lock()
    if x == 3:
        return lambda: x + 100
    return x


def sized_result(n):
    if n < 0:
        raise ValueError("v" * -n)
    return b"r" * n


def _noisy_loader():
    print("loading the function")
    return double


class NoisyFunction:
    """Unpickles (through _noisy_loader) into ``double`` after printing a line."""

    def __reduce__(self):
        return (_noisy_loader, ())


def leave_traces(x):
    import builtins
    import json as json_module
    builtins.fleetmap_leak = "job one"
    json_module.fleetmap_leak = "job one"
    os.environ["FLEETMAP_LEAK"] = "job one"
    return os.getpid()


def look_for_traces(x):
    import builtins
    import json as json_module
    return {"builtins": hasattr(builtins, "fleetmap_leak"),
            "json": hasattr(json_module, "fleetmap_leak"),
            "environ": "FLEETMAP_LEAK" in os.environ,
            "pid": os.getpid()}


def inherited_state(x):
    import signal
    previous = signal.set_wakeup_fd(-1)
    return {"sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
            "wakeup_fd": previous,
            "stdout_is_captured": type(sys.stdout).__name__}


MISSING_MODULE_FUNCTION = b"cfleetmap_no_such_module\nfunction\n."


# ---------------------------------------------------------------------------------------------


def test_hello_and_ready_describe_the_worker(zygote, sock_dir):
    conn = zygote.spawn_worker()
    assert conn.hello["version"] == 1
    assert conn.hello["python"] == "%d.%d.%d" % sys.version_info[:3]
    ready = conn.start(cloudpickle.dumps(double), sock_dir)
    assert ready == {"pid": conn.pid}


def test_ten_thousand_inputs_in_chunks_with_two_in_flight(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(double), sock_dir)
    values = list(range(10_000))
    indices = [3 * v + 11 for v in values]  # not contiguous, like re-dispatched inputs
    items = pickled(values, indices)
    chunks = [items[i:i + 1024] for i in range(0, len(items), 1024)]
    collected = harness.Collected()
    conn.send_inputs(chunks[0])
    conn.send_inputs(chunks[1])
    for number, chunk in enumerate(chunks):
        conn.collect([index for index, _ in chunk], collected)
        if number + 2 < len(chunks):
            conn.send_inputs(chunks[number + 2])
    assert collected.results == {3 * v + 11: 2 * v for v in values}
    assert collected.results_frames == len(chunks)
    assert not collected.failures and not collected.outputs
    assert harness.read_progress(conn.progress_path)[0] == 0


def sleep_30ms(x):
    time.sleep(0.03)
    return x


def test_a_chunk_of_slow_items_sends_results_as_they_accumulate(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(sleep_30ms), sock_dir)
    conn.send_inputs(pickled([0, 1, 2, 3]))
    # Items 0 and 1 took 60 ms, past the 50 ms a success may wait: they go out in a RESULTS
    # frame of their own before item 2 starts (collect refuses a result it did not expect).
    first = conn.collect([0, 1])
    assert first.results == {0: 0, 1: 1} and first.results_frames == 1
    rest = conn.collect([2, 3])
    assert rest.results == {2: 2, 3: 3} and rest.results_frames == 1


def test_exception_comes_back_by_value_with_traceback(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(raise_on_five), sock_dir)
    collected = conn.run(pickled(range(10)))
    assert collected.results == {i: i for i in range(10) if i != 5}
    assert collected.kinds.index(FAILURE) < collected.kinds.index(RESULTS)
    info, exc_bytes = collected.failures[5]
    assert info["kind"] == "exception"
    assert info["message"] == "input 5 raised BadValue: bad value 5"
    assert info["type_name"] == "BadValue"
    assert info["module"] == __name__
    assert info["traceback"].startswith("Traceback (most recent call last):")
    assert "in raise_on_five" in info["traceback"]
    assert "_run_chunk" not in info["traceback"] and "run_chunk" not in info["traceback"]
    assert info["traceback"].rstrip().endswith("BadValue: bad value 5")
    exc = pickle.loads(exc_bytes)
    assert isinstance(exc, BadValue)
    assert exc.args == ("bad value 5",)


def test_exceptions_that_cannot_travel_still_report_type_message_and_traceback(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(raise_awkward), sock_dir)
    collected = conn.run(pickled(range(3)))
    locked, locked_exc = collected.failures[0]
    assert locked["message"] == "input 0 raised LockedError: locked"
    assert locked_exc == b""
    two, two_exc = collected.failures[1]
    assert two["message"] == "input 1 raised TwoArgError: a/b"
    assert two_exc == b""
    bad_str, _ = collected.failures[2]
    assert bad_str["message"] == "input 2 raised BadStrError: <str() of the exception failed>"
    assert bad_str["type_name"] == "BadStrError"
    assert "in raise_awkward" in bad_str["traceback"]


def test_output_is_attributed_to_its_input_including_threads_and_partial_lines(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(chatty), sock_dir)
    collected = conn.run(pickled([10, 20, 30], indices=[4, 5, 6]))
    assert collected.results == {4: 10, 5: 20, 6: 30}
    for index, x in [(4, 10), (5, 20), (6, 30)]:
        assert collected.output_text(index, 1) == "out %d\nthread %d\npartial %d" % (x, x, x)
        assert collected.output_text(index, 2) == "err %d\n" % x
    assert collected.kinds[-1] == RESULTS
    assert {index for index, _, _ in collected.outputs} == {4, 5, 6}


def test_output_while_loading_the_function_has_no_index(zygote, sock_dir):
    conn = zygote.spawn_worker()
    outputs = []
    conn.assign(cloudpickle.dumps(NoisyFunction()), sock_dir)
    conn.expect_ready(outputs)
    assert outputs == [(NO_INDEX, 1, "loading the function\n")]
    assert conn.run(pickled([21])).results == {0: 42}


def test_os_exit_is_reported_by_the_zygote_and_the_progress_file_names_the_input(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(exit_on_seven), sock_dir)
    before = time.monotonic_ns()
    conn.send_inputs(pickled(range(10), indices=range(100, 110)))
    frames = conn.read_until_eof()
    assert [harness.parse_output(body) for kind, body in frames] == [(107, 1, "about to exit\n")]
    assert zygote.wait_exit(conn.pid) == {"event": "exited", "pid": conn.pid, "exit_code": 3}
    index_plus_one, started_ns = harness.read_progress(conn.progress_path)
    assert index_plus_one == 108
    assert before <= started_ns <= time.monotonic_ns()


def test_segfault_is_reported_as_signal_11(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(segfault_on_two), sock_dir)
    conn.send_inputs(pickled(range(5)))
    assert conn.read_until_eof() == []
    assert zygote.wait_exit(conn.pid) == {"event": "exited", "pid": conn.pid, "signal": 11}
    assert harness.read_progress(conn.progress_path)[0] == 3


def test_sys_exit_ends_the_worker_with_its_status(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(sys_exit_with), sock_dir)
    conn.send_inputs(pickled([4]))
    frames = conn.read_until_eof()
    assert [harness.parse_output(body) for _, body in frames] == [(0, 1, "leaving")]
    assert zygote.wait_exit(conn.pid)["exit_code"] == 4

    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(sys_exit_with), sock_dir)
    conn.send_inputs(pickled(["giving up"], indices=[8]))
    frames = conn.read_until_eof()
    outputs = [harness.parse_output(body) for _, body in frames]
    assert outputs == [(8, 1, "leaving"), (8, 2, "giving up\n")]
    assert zygote.wait_exit(conn.pid)["exit_code"] == 1


def test_function_that_fails_to_unpickle_is_a_function_load_failure(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.assign(MISSING_MODULE_FUNCTION, sock_dir)
    frames = conn.read_until_eof()
    assert [kind for kind, _ in frames] == [FAILURE]
    index, info, exc_bytes = harness.parse_failure(frames[0][1])
    assert index == NO_INDEX
    assert info["kind"] == "function_load"
    assert info["type_name"] == "ModuleNotFoundError"
    assert "fleetmap_no_such_module" in info["message"]
    assert info["message"].startswith("the function could not be loaded on the worker: ")
    assert isinstance(pickle.loads(exc_bytes), ModuleNotFoundError)
    assert zygote.wait_exit(conn.pid)["exit_code"] == 0


class EnvAtLoad:
    """A callable that records, while it is unpickled, what CUDA_VISIBLE_DEVICES was then."""

    def __init__(self):
        self.seen_at_load = None

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.seen_at_load = os.environ.get("CUDA_VISIBLE_DEVICES")

    def __call__(self, name):
        return (self.seen_at_load, os.environ.get(name))


def test_assignment_env_is_set_before_the_function_loads(zygote, sock_dir):
    conn = zygote.spawn_worker()
    uuid = "GPU-6c7bd1bd-1d5f-4a8c-a5a4-0b4bb3c2f2a1"
    conn.assign(cloudpickle.dumps(EnvAtLoad()), sock_dir,
                env={"CUDA_VISIBLE_DEVICES": uuid, "NVIDIA_VISIBLE_DEVICES": uuid})
    conn.expect_ready()
    got = conn.run(pickled(["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"])).results
    assert got == {0: (uuid, uuid), 1: (uuid, uuid)}
    # The zygote's environment is untouched: the next worker starts without the variable.
    other = zygote.spawn_worker()
    other.start(cloudpickle.dumps(EnvAtLoad()), sock_dir)
    assert other.run(pickled(["CUDA_VISIBLE_DEVICES"])).results == {0: (None, None)}


def where_it_writes(x):
    import tempfile
    with tempfile.NamedTemporaryFile(delete=False) as handle:
        handle.write(b"x")
    return os.getcwd(), os.environ.get("TMPDIR"), os.path.dirname(handle.name)


def where_it_is(x):
    return os.getcwd(), [os.environ.get(name) for name in ("TMPDIR", "TMP", "TEMP")]


def test_a_job_without_scratch_runs_where_the_zygote_does_with_its_variables(zygote, sock_dir):
    # The idle worker rehearses a placement with a scratch in its warm-up; it puts its cwd and
    # the scratch variables back, so a job without a scratch sees the zygote's.
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(where_it_is), sock_dir)
    expected = (os.getcwd(), [os.environ.get(name) for name in ("TMPDIR", "TMP", "TEMP")])
    assert conn.run(pickled([0])).results == {0: expected}


def raise_enospc(x):
    raise OSError(28, "No space left on device")


def test_assignment_scratch_is_the_cwd_and_tmpdir_and_enospc_names_it(zygote, sock_dir, tmp_path):
    scratch = str(tmp_path / "scratch")
    os.mkdir(scratch)
    conn = zygote.spawn_worker()
    conn.assign(cloudpickle.dumps(where_it_writes), sock_dir, scratch=scratch,
                scratch_bytes=64 << 20)
    conn.expect_ready()
    assert conn.run(pickled([0])).results == {0: (scratch, scratch, scratch)}
    full = zygote.spawn_worker()
    full.assign(cloudpickle.dumps(raise_enospc), sock_dir, scratch=scratch, scratch_bytes=64 << 20)
    full.expect_ready()
    info, exc = full.run(pickled([3])).failures[0]
    assert info["type_name"] == "OSError"
    if sys.version_info >= (3, 11):
        notes = pickle.loads(exc).__notes__
        assert any("--scratch-mib" in note for note in notes), notes
    assert "input 0 raised OSError" in info["message"]
    assert "scratch space %s (cwd and TMPDIR) is full at its 64 MiB limit" % scratch \
        in info["message"]
    assert "--scratch-mib" in info["message"]


def test_assignment_scratch_that_is_not_a_path_is_a_protocol_error(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.assign(cloudpickle.dumps(double), sock_dir, scratch=7)
    assert conn.read_until_eof() == []
    assert zygote.wait_exit(conn.pid)["exit_code"] == harness.EXIT_PROTOCOL
    assert "ASSIGN field scratch must be a path" in zygote.stderr_text()


def test_assignment_env_that_is_not_strings_is_a_protocol_error(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.assign(cloudpickle.dumps(double), sock_dir, env={"CUDA_VISIBLE_DEVICES": 0})
    assert conn.read_until_eof() == []
    assert zygote.wait_exit(conn.pid)["exit_code"] == harness.EXIT_PROTOCOL
    assert "ASSIGN field env must map strings to strings" in zygote.stderr_text()


def test_payload_that_is_not_callable_is_a_function_load_failure(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.assign(cloudpickle.dumps([1, 2, 3]), sock_dir)
    (kind, body), = conn.read_until_eof()
    index, info, _ = harness.parse_failure(body)
    assert (kind, index, info["kind"], info["type_name"]) == (FAILURE, NO_INDEX, "function_load",
                                                              "TypeError")
    assert "unpickled to a list object, which is not callable" in info["message"]
    assert zygote.wait_exit(conn.pid)["exit_code"] == 0


def test_unpicklable_result_and_cloudpickle_fallback(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(unpicklable_on_two), sock_dir)
    collected = conn.run(pickled(range(5)))
    assert set(collected.results) == {0, 1, 3, 4}
    assert collected.results[3]() == 103  # a lambda: only cloudpickle can carry it
    info, _ = collected.failures[2]
    assert info["kind"] == "unpicklable_result"
    assert info["message"].startswith("input 2 returned an unpicklable lock (")
    assert info["message"].endswith("return a value that pickle or cloudpickle can serialize")


def test_input_that_cannot_be_unpickled_fails_alone(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(double), sock_dir)
    items = pickled([1, 2, 3])
    items[1] = (1, b"not a pickle")
    collected = conn.run(items)
    assert collected.results == {0: 2, 2: 6}
    info, _ = collected.failures[1]
    assert info["kind"] == "exception"
    assert info["message"].startswith("input 1 could not be unpickled on the worker: ")


def test_empty_chunk_sends_no_results_frame(zygote, sock_dir):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(double), sock_dir)
    conn.send_inputs([])
    conn.send_inputs(pickled([5], indices=[77]))
    kind, body = conn.read_frame()
    assert kind == RESULTS
    assert harness.parse_item_batch(body) == [(77, pickle.dumps(10, 5))]


def test_large_results_are_split_and_oversized_ones_fail(make_zygote, sock_dir):
    zygote = make_zygote("--max-frame-bytes", "4096")
    conn = zygote.spawn_worker()
    conn.max_frame = 4096
    conn.start(cloudpickle.dumps(sized_result), sock_dir)
    sizes = [1000] * 10 + [5000, -20000]
    conn.send_inputs(pickled(sizes))
    collected = harness.Collected()
    conn.collect(range(len(sizes)), collected)
    assert collected.results == {i: b"r" * 1000 for i in range(10)}
    assert collected.results_frames >= 3
    info, _ = collected.failures[10]
    assert info["kind"] == "unpicklable_result"
    assert "more than the 4080 bytes a frame can carry" in info["message"]
    assert info["traceback"] is None
    long_failure, exc_bytes = collected.failures[11]
    assert long_failure["message"].startswith("input 11 raised ValueError: vvvv")
    assert len(long_failure["message"]) < 4096
    assert long_failure["traceback"].startswith("(traceback shortened)\n")
    assert exc_bytes == b""


@pytest.mark.parametrize("data, fragment", [
    (harness.frame(0x03, b"\x02\x00\x00\x00" + bytes(12)), "(Malformed): item batch declares 2 items"),
    (harness.frame(0x03, harness.item_batch([(0, b"abc")]) + b"x"),
     "(Malformed): item batch with count 1 must be 19 bytes but is 20 bytes"),
    (harness.frame(0x7E, b"what"), "(UnknownKind): unknown frame kind 0x7e"),
    (b"\x03" + (2**31).to_bytes(4, "little"), "(FrameTooLarge): INPUTS frame of 2147483648 bytes"),
    (harness.frame(0x21, b"{}"), "(Unexpected): expected INPUTS or SHUTDOWN but the daemon sent ASSIGN"),
    (harness.frame(0x10, b""), "(Unexpected): expected INPUTS or SHUTDOWN but the daemon sent RESULTS"),
], ids=["short-table", "length-mismatch", "unknown-kind", "too-large", "second-assign", "results"])
def test_malformed_frame_makes_the_worker_exit_with_a_message(zygote, sock_dir, data, fragment):
    conn = zygote.spawn_worker()
    conn.start(cloudpickle.dumps(double), sock_dir)
    conn.send_raw(data)
    assert conn.read_until_eof() == []
    assert zygote.wait_exit(conn.pid)["exit_code"] == harness.EXIT_PROTOCOL
    assert "fleetmap worker[%d]: protocol error %s" % (conn.pid, fragment) in zygote.stderr_text()


@pytest.mark.parametrize("first, fragment", [
    (harness.frame(0x03, harness.item_batch([])), "expected ASSIGN or SHUTDOWN but the daemon sent INPUTS"),
    (harness.frame(0x21, b"[]"), "ASSIGN body must be a JSON object, got list"),
    (harness.frame(0x21, b'{"job_id":"j"}'), "ASSIGN must name the progress file"),
], ids=["inputs-before-assign", "assign-not-object", "assign-without-progress"])
def test_bad_assignment_makes_the_worker_exit_with_a_message(zygote, sock_dir, first, fragment):
    conn = zygote.spawn_worker()
    conn.send_raw(first + harness.frame(0x02, cloudpickle.dumps(double)))
    assert conn.read_until_eof() == []
    assert zygote.wait_exit(conn.pid)["exit_code"] == harness.EXIT_PROTOCOL
    assert fragment in zygote.stderr_text()


def test_missing_progress_file_makes_the_worker_exit_with_a_message(zygote, sock_dir):
    missing = str(sock_dir / "no-such-progress-file")
    conn = zygote.spawn_worker()
    conn.send(0x21, json.dumps({"job_id": "j", "progress_path": missing}).encode())
    conn.send(0x02, cloudpickle.dumps(double))
    assert conn.read_until_eof() == []
    assert zygote.wait_exit(conn.pid)["exit_code"] == 74
    assert "cannot map the 16-byte progress file %s" % missing in zygote.stderr_text()


def test_shutdown_exits_zero_in_every_state(zygote, sock_dir):
    idle = zygote.spawn_worker()
    idle.send(SHUTDOWN)
    assigned = zygote.spawn_worker()
    assigned.send(0x21, json.dumps({"job_id": "j", "progress_path": "/nonexistent"}).encode())
    assigned.send(SHUTDOWN)
    working = zygote.spawn_worker()
    working.start(cloudpickle.dumps(double), sock_dir)
    assert working.run(pickled([1, 2])).results == {0: 2, 1: 4}
    working.send(SHUTDOWN)
    for conn in (idle, assigned, working):
        assert conn.read_until_eof() == []
        assert zygote.wait_exit(conn.pid) == {"event": "exited", "pid": conn.pid, "exit_code": 0}


def test_socket_eof_exits_zero(zygote, sock_dir):
    idle = zygote.spawn_worker()
    working = zygote.spawn_worker()
    working.start(cloudpickle.dumps(double), sock_dir)
    idle.close()
    working.close()
    assert zygote.wait_exit(idle.pid)["exit_code"] == 0
    assert zygote.wait_exit(working.pid)["exit_code"] == 0


def test_a_child_forked_after_a_job_has_none_of_its_state(zygote, sock_dir):
    first = zygote.spawn_worker()
    first.start(cloudpickle.dumps(leave_traces), sock_dir)
    assert first.run(pickled([0])).results == {0: first.pid}
    first.send(SHUTDOWN)
    assert zygote.wait_exit(first.pid)["exit_code"] == 0

    second = zygote.spawn_worker()
    second.start(cloudpickle.dumps(look_for_traces), sock_dir)
    seen = second.run(pickled([0])).results[0]
    assert seen == {"builtins": False, "json": False, "environ": False, "pid": second.pid}
    assert second.pid != first.pid


def test_children_get_devnull_stdio_and_default_signal_handling(zygote, sock_dir):
    conn = zygote.spawn_worker()
    zygote_pipes = {os.readlink("/proc/%d/fd/%d" % (zygote.proc.pid, fd)) for fd in (0, 1)}
    assert all(link.startswith("pipe:") for link in zygote_pipes)
    child_fds = {os.readlink("/proc/%d/fd/%s" % (conn.pid, fd))
                 for fd in os.listdir("/proc/%d/fd" % conn.pid)}
    assert os.readlink("/proc/%d/fd/0" % conn.pid) == "/dev/null"
    assert os.readlink("/proc/%d/fd/1" % conn.pid) == "/dev/null"
    assert not child_fds & zygote_pipes
    assert not any(link.startswith("anon_inode:[eventpoll]") for link in child_fds)
    conn.start(cloudpickle.dumps(inherited_state), sock_dir)
    state = conn.run(pickled([0])).results[0]
    assert state == {"sigchld_default": True, "wakeup_fd": -1,
                     "stdout_is_captured": "CapturedOutput"}


MAIN_SCRIPT = r'''
import sys
import cloudpickle

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm1(self):
        return abs(self.x) + abs(self.y)

def make(scale):
    offset = lambda v: v + 1
    def function(x):
        return Point(offset(x) * scale, -x)
    return function

sys.stdout.buffer.write(cloudpickle.dumps(make(3)))
'''


def test_functions_and_classes_defined_in_main_work(zygote, sock_dir):
    function_bytes = subprocess.run([sys.executable, "-c", MAIN_SCRIPT], check=True,
                                    stdout=subprocess.PIPE).stdout
    conn = zygote.spawn_worker()
    conn.start(function_bytes, sock_dir)
    collected = conn.run(pickled([1, 2]))
    assert not collected.failures
    point = collected.results[1]
    assert type(point).__name__ == "Point"
    assert (point.x, point.y, point.norm1()) == (9, -2, 11)
    closure = cloudpickle.dumps(lambda x, k=collected.results[0].x: x + k)
    conn2 = zygote.spawn_worker()
    conn2.start(closure, sock_dir)
    assert conn2.run(pickled([1])).results == {0: 7}


def test_worker_mode_runs_one_worker_without_a_zygote(make_worker, sock_dir):
    worker = make_worker()
    conn = worker.accept()
    conn.start(cloudpickle.dumps(double), sock_dir)
    assert conn.run(pickled(range(100))).results == {i: 2 * i for i in range(100)}
    conn.send(SHUTDOWN)
    assert conn.read_until_eof() == []
    assert worker.wait() == 0
    assert worker.stderr_text() == ""


def test_worker_mode_reports_an_unreachable_socket(make_worker, sock_dir):
    missing = str(sock_dir / "nobody-listens.sock")
    worker = make_worker(socket_path=missing)
    assert worker.wait() == harness.EXIT_UNAVAILABLE
    assert "cannot connect to the daemon socket %s" % missing in worker.stderr_text()
