"""``remote_parallel_map``: the user's contract (shared/DESIGN.md, "The user's contract").

Validate every argument, pickle the function, find the coordinator (starting the local
cluster when none is configured), submit the job and hand its results back — as a list in
input order, in completion order with ``ordered=False``, or lazily with ``generator=True``.
A function exception cancels the job and is raised as its own type; instance failures are
collected and the first is raised once the rest of the job has finished; Ctrl-C cancels the
remote work before re-raising.
"""

from __future__ import annotations

import uuid
import weakref
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

from . import config, environment, errors, local_cluster, pickling, transport, validate
from .inputs import InputSource
from .job import Job
from .ordering import ReorderBuffer, ResultList
from .progress import Progress


def remote_parallel_map(
    function_: Callable[[Any], Any],
    inputs: Iterable[Any],
    parallelism: int = -1,
    func_cpu: int = 1,
    func_ram: int = 1,
    func_gpu: Optional[str] = None,
    verbose: bool = False,
    dockerfile: Optional[str] = None,
    packages: Optional[List[str]] = None,
    api_key: Optional[str] = None,
    *,
    generator: bool = False,
    ordered: bool = True,
    retries: int = 0,
    timeout: Optional[float] = None,
    detach: bool = False,
) -> Union[List[Any], Iterator[Any], str]:
    """Run ``function_(x)`` for every ``x`` in ``inputs`` on the fleet and return the results.

    ``parallelism`` caps concurrent instances (-1: as many as fit, at most 4000, 100 with a
    GPU); each instance gets ``func_cpu`` whole CPUs, ``func_ram`` GB of RAM and, with
    ``func_gpu``, one whole GPU of that model.  ``dockerfile`` / ``packages`` choose the
    environment; without them the nodes replicate this interpreter's installed distributions
    (see ``fleetmap.environment``); ``api_key`` overrides ``FLEETMAP_API_KEY``.  With
    ``verbose=True`` the nodes' environment build logs are shown as they happen.

    Beyond the classic signature: ``generator=True`` returns an iterator that yields results
    as they arrive (in input order unless ``ordered=False``); ``ordered=False`` returns results
    in completion order; ``retries`` re-runs an input whose instance died (OOM, exit, signal,
    timeout); ``timeout`` limits each input to that many seconds; ``detach=True`` submits the
    job, sends every input and returns the job id at once — the job keeps running on the
    coordinator (see ``fleetmap jobs``), and its results are stored there to fetch later.

    Raises ``InvalidArgument`` / ``NoCapacity`` / ``EnvironmentBuildFailed`` (a node could not
    build the environment; the message ends with the build log's tail) before any input
    runs; the function's own
    exception type (or ``RemoteError``) when it raises, with ``fleetmap_index`` and
    ``fleetmap_traceback`` set; an ``InstanceError`` subclass (``OutOfMemory``,
    ``InstanceExited``, ``InstanceKilled``, ``InputTimeout``) after the other inputs finished
    when an instance died, with ``.results`` holding the results and the failures in place.
    """
    validate.check_function(function_)
    expected = validate.check_inputs(inputs)
    validate.check_flags(generator, detach)
    key = validate.check_api_key(api_key)
    env = environment.resolve(dockerfile, packages)
    job_id = uuid.uuid4().hex
    spec = validate.build_spec(
        job_id,
        func_cpu=func_cpu,
        func_ram=func_ram,
        func_gpu=func_gpu,
        parallelism=parallelism,
        expected_inputs=expected,
        timeout=timeout,
        retries=retries,
        environment=env,
        detach=detach,
    )
    function_bytes = pickling.dumps_function(function_)
    source = InputSource(inputs)
    progress = Progress(bool(verbose), expected, job_id)
    try:
        job = _submit(spec, function_bytes, source, progress, key)
    except BaseException:
        progress.close()
        raise
    if job is None:
        progress.close()
        return iter(()) if generator else []
    if detach:
        try:
            job.detach()
        finally:
            progress.close()
        return job_id
    if generator:
        iterator = _iterate(job, ordered)
        # A generator dropped before its first next() never runs its finally: cancel from here.
        weakref.finalize(iterator, job.cancel)
        return iterator
    try:
        return _collect(job, ordered)
    finally:
        progress.close()


def _submit(spec: dict, function_bytes: bytes, source: InputSource, progress: Progress, api_key: Optional[str]) -> Optional[Job]:
    """Take the first batch and POST the job; None when there are no inputs (and no detach)."""
    endpoint, local = config.resolve(api_key)
    job = Job(endpoint, spec, function_bytes, source, progress)
    if job.take_first_batch() == 0 and source.done and not spec["detach"]:
        return None
    try:
        job.start()
    except (errors.FleetmapConnectionError, errors.Unavailable):
        if not local:
            raise
        # The local cluster died or lost its node since we cached its address: restart, retry once.
        config.forget_local()
        transport.POOL.clear()
        endpoint = transport.Endpoint(local_cluster.ensure_running(), endpoint.api_key)
        job.endpoint = endpoint
        job.start()
    except BaseException:
        job.cancel()
        raise
    return job


_FAILED = object()
"""Placeholder in the reorder buffer for an input whose instance died (raised at the end)."""


def _raise_instance_failures(failures: List[errors.InstanceError], results: Optional[List[Any]]) -> None:
    if not failures:
        return
    failures.sort(key=lambda f: f.index if f.index is not None else -1)
    first = failures[0]
    first.results = results
    first.failures = list(failures)
    raise first


def _collect(job: Job, ordered: bool) -> List[Any]:
    """Drain the job into a list (input order, or completion order with ``ordered=False``)."""
    failures: List[errors.InstanceError] = []
    try:
        if ordered:
            table = ResultList(job.spec["expected_inputs"] or 0)
            for indices, values, failed in job.stream():
                table.put_many(indices, values)
                if failed:
                    failures.extend(values)
                job.advance_window(table.count)
            results = table.finish(job.source.next_index)
        else:
            results = []
            for indices, values, failed in job.stream():
                results.extend(values)
                if failed:
                    failures.extend(values)
                job.advance_window(len(results))
            if len(results) != job.source.next_index:
                raise errors.ProtocolError(
                    f"the job ended with {len(results)} results for {job.source.next_index} inputs; "
                    "each input must yield exactly one"
                )
    except BaseException:
        job.cancel()
        raise
    _raise_instance_failures(failures, results)
    return results


def _iterate(job: Job, ordered: bool) -> Iterator[Any]:
    """Yield results as they arrive; cancel the job if the caller stops iterating early."""
    failures: List[errors.InstanceError] = []
    try:
        if ordered:
            buffer = ReorderBuffer()
            for indices, values, failed in job.stream():
                if failed:
                    failures.extend(values)
                    values = [_FAILED] * len(values)
                for index, value in zip(indices, values):
                    buffer.push(index, value)
                for value in buffer.pop_ready():
                    if value is not _FAILED:
                        yield value
                job.advance_window(buffer.next_index)
            missing = buffer.missing(job.source.next_index)
            if missing or len(buffer):
                raise errors.ProtocolError(
                    f"the job ended with {len(missing)} inputs without a result (first: {missing[:5]}); "
                    "each input must yield exactly one"
                )
        else:
            count = 0
            for _indices, values, failed in job.stream():
                count += len(values)
                if failed:
                    failures.extend(values)
                else:
                    yield from values
                job.advance_window(count)
    except BaseException:
        job.cancel()
        raise
    finally:
        job.progress.close()
    _raise_instance_failures(failures, None)
