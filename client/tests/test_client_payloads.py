"""The payload contract with the real worker: functions and classes from local modules travel
by value, the function's exception comes back as its own class with traceback and index,
results of local classes come back as the same class, print output is attributed."""

from __future__ import annotations

import pickle
import sys

import pytest

from fleetmap import errors, pickling, remote_exc
from fleetmap.progress import attribute

import worker_host


class LocalError(Exception):
    """Defined in this (local, not installed) module: must come back as this very class."""


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def raise_on_three(x):
    if x == 3:
        raise LocalError(f"bad input {x}")
    return Point(x, -x)


def printing(x):
    print(f"hello {x}")
    print("second line", file=sys.stderr)
    return x


@pytest.fixture(scope="module", autouse=True)
def worker_exists():
    if not worker_host.WORKER.is_file():
        pytest.fail(f"{worker_host.WORKER} is missing; these tests run the real worker")


def _inputs(values):
    return [pickling.dumps_input(v, i) for i, v in enumerate(values)]


def test_this_module_is_pickled_by_value():
    assert pickling.is_local_module(__name__, sys.modules[__name__])
    assert not pickling.is_local_module("json", sys.modules["json"])
    assert not pickling.is_local_module("cloudpickle", sys.modules["cloudpickle"])
    assert not pickling.is_local_module("fleetmap.api", sys.modules["fleetmap.api"])
    assert __name__ in pickling.local_modules()


def test_local_exception_comes_back_as_its_own_class():
    out = worker_host.run_in_worker(pickling.dumps_function(raise_on_three), _inputs(range(5)))
    (index, info, exc_bytes), = worker_host.failures(out)
    assert index == 3 and info["kind"] == "exception" and info["type_name"] == "LocalError"
    exc = remote_exc.failure_to_exception(index, info, exc_bytes)
    assert type(exc) is LocalError
    assert str(exc) == "bad input 3"
    assert exc.fleetmap_index == 3
    assert "raise_on_three" in exc.fleetmap_traceback and "LocalError" in exc.fleetmap_traceback
    assert isinstance(exc.__cause__, remote_exc.RemoteTraceback)
    assert "raise_on_three" in str(exc.__cause__)
    if sys.version_info >= (3, 11):
        assert any("raised by input 3" in note for note in exc.__notes__)
    got = {i: pickling.loads(p) for i, p in worker_host.results(out)}
    assert sorted(got) == [0, 1, 2, 4]
    assert all(type(v) is Point and (v.x, v.y) == (i, -i) for i, v in got.items())


def test_local_class_inputs_and_lambdas_travel_by_value():
    fn = pickling.dumps_function(lambda p: (type(p).__name__, p.x + p.y))
    out = worker_host.run_in_worker(fn, _inputs([Point(1, 2), Point(3, 4)]))
    assert [pickling.loads(p) for _, p in worker_host.results(out)] == [("Point", 3), ("Point", 7)]


def test_closure_captures_values():
    offset = 100

    def add(x):
        return x + offset

    out = worker_host.run_in_worker(pickling.dumps_function(add), _inputs([1, 2]))
    assert [pickling.loads(p) for _, p in worker_host.results(out)] == [101, 102]


def test_print_output_is_tagged_with_the_input():
    out = worker_host.run_in_worker(pickling.dumps_function(printing), _inputs([7, 8]))
    printed = worker_host.outputs(out)
    stdout = "".join(text for index, stream, text in printed if stream == 1 and index == 0)
    stderr = "".join(text for index, stream, text in printed if stream == 2 and index == 1)
    assert stdout == "hello 7\n"
    assert stderr == "second line\n"
    assert attribute(0, stdout) == "[input 0] hello 7\n"


def test_builtin_exception_rebuilt():
    out = worker_host.run_in_worker(pickling.dumps_function(lambda x: 1 // x), _inputs([1, 0]))
    (index, info, exc_bytes), = worker_host.failures(out)
    exc = remote_exc.failure_to_exception(index, info, exc_bytes)
    assert type(exc) is ZeroDivisionError and exc.fleetmap_index == 1


def test_unloadable_exception_falls_back_to_remote_error():
    info = {"kind": "exception", "message": "input 4 raised Weird: boom", "type_name": "Weird", "module": "somewhere", "traceback": "Traceback ...\nWeird: boom"}
    exc = remote_exc.failure_to_exception(4, info, b"not a pickle")
    assert type(exc) is errors.RemoteError
    assert (exc.type_name, exc.index, str(exc)) == ("somewhere.Weird", 4, "input 4 raised Weird: boom")
    assert exc.traceback.endswith("Weird: boom")
    assert "Weird: boom" in str(exc.__cause__)
    empty = remote_exc.failure_to_exception(4, dict(info, message=""), b"")
    assert str(empty) == "input 4 raised Weird"


def test_unpicklable_result_and_function_load_kinds():
    exc = remote_exc.failure_to_exception(2, {"kind": "unpicklable_result", "message": "input 2 returned a generator"}, b"")
    assert isinstance(exc, errors.UnpicklableResult) and exc.index == 2
    load = remote_exc.failure_to_exception(2**64 - 1, {"kind": "function_load", "message": "no module named x", "type_name": "ModuleNotFoundError"}, b"")
    assert isinstance(load, errors.FunctionLoadError) and load.index is None


@pytest.mark.parametrize(
    "kind, cls",
    [("oom", errors.OutOfMemory), ("exited", errors.InstanceExited), ("killed", errors.InstanceKilled), ("timeout", errors.InputTimeout), ("lost", errors.InputLost), ("future_kind", errors.InstanceError)],
)
def test_instance_failures_map_to_classes(kind, cls):
    info = {"kind": kind, "message": f"input 5 failed: {kind}", "exit_code": 3, "signal": None, "node": "n1", "attempts": 2}
    exc = remote_exc.failure_to_exception(5, info, b"")
    assert type(exc) is cls
    assert (exc.index, exc.exit_code, exc.node, exc.attempts, str(exc)) == (5, 3, "n1", 2, f"input 5 failed: {kind}")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is cls and again.index == 5


def test_unpicklable_input_names_its_index():
    import threading

    with pytest.raises(errors.InvalidArgument, match="^input 9 could not be pickled"):
        pickling.dumps_input(threading.Lock(), 9)
