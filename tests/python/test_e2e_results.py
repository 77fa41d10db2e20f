"""Results, ordering, exceptions and print output through the real coordinator, node and
workers."""

from __future__ import annotations

import os
import sys
import time

import pytest

import e2e_support
from fleetmap import remote_parallel_map


class E2EError(Exception):
    """Defined in this test module, which the node cannot import: must come back as itself."""

    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


def fail_on_seven(x):
    if x == 7:
        raise E2EError(f"input {x} is bad", code=x * 2)
    time.sleep(0.05)
    return x


def test_ten_thousand_inputs_in_order(cluster):
    out = remote_parallel_map(lambda x: x * x, range(10_000))
    assert out == [x * x for x in range(10_000)]


def test_closures_lambdas_and_local_module_functions(cluster):
    base = {"offset": 1000}

    def closure(x):
        return x + base["offset"]

    assert remote_parallel_map(closure, [1, 2]) == [1001, 1002]
    assert remote_parallel_map(lambda s: s.upper(), ["a", "b"]) == ["A", "B"]
    assert remote_parallel_map(e2e_support.triple, range(5)) == [0, 3, 6, 9, 12]


def test_main_module_function_and_class_in_a_fresh_interpreter(cluster):
    code = (
        "from fleetmap import remote_parallel_map\n"
        "class Box:\n"
        "    def __init__(self, v): self.v = v\n"
        "def unbox(b): return Box(b.v * 2)\n"
        "out = remote_parallel_map(unbox, [Box(1), Box(2)])\n"
        "assert all(type(o) is Box for o in out), out\n"
        "print([o.v for o in out])\n"
    )
    done = e2e_support.run_python(code, cluster.child_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2, 4]"


def test_exception_comes_back_as_its_type_with_traceback_and_index(cluster):
    start = time.monotonic()
    with pytest.raises(E2EError) as info:
        remote_parallel_map(fail_on_seven, range(400), parallelism=2)
    elapsed = time.monotonic() - start
    exc = info.value
    assert type(exc) is E2EError and exc.code == 14 and exc.args[0] == "input 7 is bad"
    assert exc.fleetmap_index == 7
    assert "fail_on_seven" in exc.fleetmap_traceback and "E2EError" in exc.fleetmap_traceback
    assert "fail_on_seven" in str(exc.__cause__)
    if sys.version_info >= (3, 11):
        assert any("input 7" in note for note in exc.__notes__)
    # 400 inputs x 50 ms over 2 instances is 10 s: the job was cancelled, not run to the end.
    assert elapsed < 5, elapsed
    job = cluster.jobs()[0]
    assert job["state"] in ("failed", "cancelled"), job


def test_print_output_is_attributed(cluster, capsys):
    def talk(x):
        print(f"hello from {x}")
        print(f"warning {x}", file=sys.stderr)
        return x

    assert remote_parallel_map(talk, range(3)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert sorted(captured.out.splitlines()) == [f"[input {i}] hello from {i}" for i in range(3)]
    assert sorted(captured.err.splitlines()) == [f"[input {i}] warning {i}" for i in range(3)]


def test_unordered_returns_in_completion_order(cluster):
    def nap(seconds):
        time.sleep(seconds)
        return seconds, os.getpid()

    inputs = [2.0, 0, 0, 0, 0, 0]
    out = remote_parallel_map(nap, inputs, parallelism=2, ordered=False)
    values = [v for v, _ in out]
    assert sorted(values) == sorted(inputs)
    assert len({pid for _, pid in out}) == 2, f"parallelism=2 on a 2-CPU node ran one instance: {out}"
    # The 2 s input holds one instance; the other finishes the zeros first.
    assert values[0] == 0, values
    assert [v for v, _ in remote_parallel_map(nap, inputs, parallelism=2)] == inputs


def test_generator_yields_as_results_arrive(cluster):
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    start = time.monotonic()
    gen = remote_parallel_map(nap, [0, 0, 1.5], parallelism=3, generator=True)
    assert next(gen) == 0
    first_after = time.monotonic() - start
    assert list(gen) == [0, 1.5]
    assert first_after < 1.2, first_after


def test_verbose_progress_bar(cluster, capsys):
    assert remote_parallel_map(abs, range(-50, 0), verbose=True) == list(range(50, 0, -1))
    err = capsys.readouterr().err
    assert "50/50" in err


def test_detach_returns_a_job_id_and_the_job_completes(cluster):
    job_id = remote_parallel_map(abs, range(100), detach=True)
    assert isinstance(job_id, str) and len(job_id) == 32

    def completed():
        return any(j["job_id"] == job_id and j["state"] == "completed" for j in cluster.jobs())

    assert e2e_support.wait_until(completed, 20), [j for j in cluster.jobs() if j["job_id"] == job_id]
