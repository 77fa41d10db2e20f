"""The client's side of a job against a scripted coordinator on loopback: the input window,
stream failures the real coordinator cannot be made to produce on demand, refusals, failure
handling, ordering, output attribution and connection reuse."""

from __future__ import annotations

import pickle
import threading
import time
from array import array

import pytest

from fleetmap import errors, frames, job as job_module, remote_parallel_map


def results_frame(pairs):
    indices = array("Q", [i for i, _ in pairs])
    return frames.encode_items(frames.RESULTS, indices, [pickle.dumps(v, 5) for _, v in pairs])


def end(state="completed", **kw):
    return frames.encode_json(frames.END, dict({"state": state, "done": 0, "failed": 0}, **kw))


def drain(job):
    """Every (index, value) of the job's inputs, until INPUTS_END."""
    items = []
    while True:
        item = job.inputs.get(timeout=10)
        if item is None:
            return items
        items.append((item[0], pickle.loads(item[1])))


def test_many_inputs_stream_through_the_feeder_in_order(scripted):
    out = remote_parallel_map(lambda x: x * 3, range(5000))
    assert out == [x * 3 for x in range(5000)]
    (job,) = scripted.jobs.values()
    assert sorted(job.received) == list(range(5000))
    assert job.spec["expected_inputs"] == 5000
    assert any(path.endswith("/inputs") for _, path in scripted.requests)


def test_short_input_list_is_one_request(scripted):
    assert remote_parallel_map(lambda x: -x, [1, 2, 3]) == [-1, -2, -3]
    assert [m for m, p in scripted.requests] == ["POST"]


@pytest.mark.parametrize("generator", [False, True])
def test_feeder_stays_within_the_window(scripted, monkeypatch, generator):
    monkeypatch.setattr(job_module, "WINDOW", 16)
    seen_before_any_result = []

    def script(job):
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # let the client send all it is willing to
            time.sleep(0.01)
        seen_before_any_result.append(len(job.received))
        fn = pickle.loads(job.function)
        while True:
            item = job.inputs.get(timeout=10)
            if item is None:
                break
            yield results_frame([(item[0], fn(pickle.loads(item[1])))])
        yield end()

    scripted.on_job = script
    out = remote_parallel_map(lambda x: x + 1, (i for i in range(200)), generator=generator)
    assert list(out) == list(range(1, 201))
    assert seen_before_any_result == [16]


def test_stream_cut_before_end_is_a_connection_error_and_cancels(scripted):
    def script(job):
        yield results_frame([(0, "a")])
        yield None

    scripted.on_job = script
    with pytest.raises(errors.FleetmapConnectionError, match="broke off before its END frame"):
        remote_parallel_map(str, range(3))
    assert scripted.deletes == list(scripted.jobs)


def test_refusal_422_is_no_capacity_with_the_server_sentence(scripted):
    scripted.reject = (422, {"error": {"code": "unprocessable", "message": "no node can fit func_cpu=96; the largest node has 2 CPUs."}})
    with pytest.raises(errors.NoCapacity) as info:
        remote_parallel_map(str, range(3), func_cpu=96)
    assert str(info.value) == "no node can fit func_cpu=96; the largest node has 2 CPUs."
    with pytest.raises(errors.EnvironmentUnavailable):
        remote_parallel_map(str, range(3), packages=["numpy"])
    scripted.reject = (503, {"error": {"code": "unavailable", "message": "no node registered"}})
    with pytest.raises(errors.Unavailable, match="no node registered"):
        remote_parallel_map(str, range(3))
    assert scripted.deletes == []


def test_duplicate_index_is_a_protocol_error(scripted):
    def script(job):
        drain(job)
        yield results_frame([(0, "a"), (1, "b")])
        yield results_frame([(1, "b")])
        yield end()

    scripted.on_job = script
    with pytest.raises(errors.ProtocolError, match="input 1 got a second result"):
        remote_parallel_map(str, range(3))


def test_missing_result_is_a_protocol_error(scripted):
    def script(job):
        drain(job)
        yield results_frame([(0, "a"), (2, "c")])
        yield end()

    scripted.on_job = script
    with pytest.raises(errors.ProtocolError, match="1 of 3 inputs without a result"):
        remote_parallel_map(str, range(3))


def test_function_exception_raises_and_cancels(scripted):
    def script(job):
        drain(job)
        yield results_frame([(0, 0)])
        exc = pickle.dumps(KeyError("k"))
        yield frames.encode_failure(1, {"kind": "exception", "message": "input 1 raised KeyError: 'k'", "type_name": "KeyError", "traceback": "Traceback\nKeyError: 'k'"}, exc)
        time.sleep(5)  # the client must not wait for the rest
        yield end()

    scripted.on_job = script
    start = time.monotonic()
    with pytest.raises(KeyError) as info:
        remote_parallel_map(str, range(3))
    assert time.monotonic() - start < 2
    assert info.value.fleetmap_index == 1
    assert scripted.deletes == list(scripted.jobs)


def _instance_failures_script(job):
    drain(job)
    yield frames.encode_failure(3, {"kind": "exited", "message": "input 3 exited with status 3", "exit_code": 3})
    yield results_frame([(0, "r0"), (2, "r2")])
    yield frames.encode_failure(1, {"kind": "oom", "message": "input 1 was killed: out of memory (func_ram=1 GB)"})
    yield results_frame([(4, "r4")])
    yield end(done=3, failed=2)


def test_instance_failures_let_the_rest_finish_then_raise_the_first(scripted):
    scripted.on_job = _instance_failures_script
    with pytest.raises(errors.OutOfMemory, match="func_ram=1 GB") as info:
        remote_parallel_map(str, range(5))
    exc = info.value
    assert exc.index == 1
    assert exc.results[0] == "r0" and exc.results[2] == "r2" and exc.results[4] == "r4"
    assert exc.results[1] is exc and isinstance(exc.results[3], errors.InstanceExited)
    assert [f.index for f in exc.failures] == [1, 3]
    assert scripted.deletes == []


def test_instance_failures_in_generator_mode(scripted):
    scripted.on_job = _instance_failures_script
    got = []
    with pytest.raises(errors.OutOfMemory) as info:
        for value in remote_parallel_map(str, range(5), generator=True):
            got.append(value)
    assert got == ["r0", "r2", "r4"]
    assert info.value.results is None and len(info.value.failures) == 2


def test_unordered_returns_completion_order(scripted):
    def script(job):
        items = drain(job)
        for index, value in reversed(items):
            yield results_frame([(index, value)])
        yield end()

    scripted.on_job = script
    assert remote_parallel_map(abs, range(5), ordered=False) == [4, 3, 2, 1, 0]
    assert list(remote_parallel_map(abs, range(5), generator=True, ordered=False)) == [4, 3, 2, 1, 0]
    assert list(remote_parallel_map(abs, range(5), generator=True)) == [0, 1, 2, 3, 4]


def test_output_is_printed_attributed(scripted, capsys):
    def script(job):
        drain(job)
        yield frames.encode_output(2, frames.STDOUT, "hello\nworld\n")
        yield frames.encode_output(0, frames.STDERR, "warn")
        yield frames.encode_json(frames.STATUS, {"queued": 0, "running": 1, "done": 0, "failed": 0, "instances": 1, "nodes": 1})
        yield results_frame([(0, 0), (1, 1), (2, 2)])
        yield end()

    scripted.on_job = script
    assert remote_parallel_map(abs, range(3)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == "[input 2] hello\n[input 2] world\n"
    assert captured.err == "[input 0] warn\n"


def test_failing_input_iterable_cancels_and_raises_its_error(scripted):
    def inputs():
        yield from range(2000)
        raise LookupError("the generator broke")

    def script(job):
        while not job.deleted.is_set():
            try:
                item = job.inputs.get(timeout=5)
            except Exception:
                break
            if item is None:
                break
        yield end("cancelled")

    scripted.on_job = script
    with pytest.raises(LookupError, match="the generator broke"):
        remote_parallel_map(abs, inputs())
    assert scripted.deletes == list(scripted.jobs)


def test_cancelled_elsewhere_is_job_cancelled(scripted):
    def script(job):
        drain(job)
        yield end("cancelled", message="job was cancelled by `fleetmap cancel`")

    scripted.on_job = script
    with pytest.raises(errors.JobCancelled, match="fleetmap cancel"):
        remote_parallel_map(abs, range(3))


def test_abandoned_generator_cancels_the_job(scripted):
    release = threading.Event()

    def script(job):
        yield results_frame([(0, 0)])
        release.wait(5)
        yield end()

    scripted.on_job = script
    gen = remote_parallel_map(abs, range(3), generator=True)
    assert next(gen) == 0
    gen.close()
    release.set()
    assert scripted.deletes == list(scripted.jobs)


def test_connection_is_reused_and_survives_a_server_side_close(scripted):
    for _ in range(5):
        assert remote_parallel_map(abs, [-1]) == [1]
    assert scripted.connections == 1
    scripted.drop_connections()
    time.sleep(0.05)
    assert remote_parallel_map(abs, [-2]) == [2]
    assert scripted.connections == 2


def test_detach_sends_everything_and_returns_the_job_id(scripted):
    def script(job):
        yield frames.encode_json(frames.STATUS, {"queued": 1})
        drain(job)
        yield end()

    scripted.on_job = script
    job_id = remote_parallel_map(abs, range(3000), detach=True)
    assert isinstance(job_id, str) and len(job_id) == 32
    job = scripted.jobs[job_id]
    deadline = time.monotonic() + 5
    while len(job.received) < 3000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(job.received) == list(range(3000))
    assert job.spec["detach"] is True
    assert scripted.deletes == []


def test_generator_dropped_before_first_next_cancels_the_job(scripted):
    import gc

    release = threading.Event()

    def script(job):
        release.wait(5)
        yield end()

    scripted.on_job = script
    gen = remote_parallel_map(abs, range(3), generator=True)
    (job_id,) = scripted.jobs
    del gen
    gc.collect()
    release.set()
    assert scripted.deletes == [job_id]
