"""Results of detached jobs (``detach=True``), kept by the coordinator in its database.

``fetch_results(job_id)`` reads them back once the job has ended (``wait=True`` waits for
it), in input order like ``remote_parallel_map`` returns them: the stored stream is the same
RESULTS/FAILURE/END frames a live job sends (docs/protocol.md, ``GET /v1/jobs/{id}/results``),
so a function exception raises as its own type and instance failures raise after the rest.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional

from . import config, errors, transport
from .job import Job
from .progress import Progress

RUNNING_STATES = ("starting", "running")
POLL_S = 0.5


class _Ended:
    """Stands in for the input source: the number of inputs the job received."""

    def __init__(self, inputs: int) -> None:
        self.next_index = inputs
        self.done = True


class StoredJob(Job):
    """A result stream read from the coordinator's store: nothing to cancel, nothing to feed."""

    def _delete(self) -> bool:
        return True


def job_record(job_id: str, api_key: Optional[str] = None) -> dict:
    """The coordinator's record of ``job_id`` (state, counts, whether results are stored)."""
    endpoint = config.resolve(api_key)[0]
    return transport.request_json(endpoint, "GET", f"/v1/jobs/{job_id}")


def fetch_results(
    job_id: str,
    api_key: Optional[str] = None,
    *,
    ordered: bool = True,
    wait: bool = False,
    timeout: Optional[float] = None,
    delete: bool = False,
) -> List[Any]:
    """The results of the detached job ``job_id``, as ``remote_parallel_map`` would return them.

    ``wait=True`` waits (up to ``timeout`` seconds) for a running job to end; otherwise a
    running job raises ``CoordinatorError`` (409) saying how far it is.  ``delete=True`` frees
    the stored results once they were read successfully.
    """
    from .api import _collect  # the same collection as a live job (import here: api imports us)

    endpoint = config.resolve(api_key)[0]
    record = transport.request_json(endpoint, "GET", f"/v1/jobs/{job_id}")
    if wait:
        deadline = None if timeout is None else time.monotonic() + timeout
        while record.get("state") in RUNNING_STATES:
            if deadline is not None and time.monotonic() > deadline:
                raise errors.CoordinatorError(
                    f"job {job_id} still runs after {timeout} s ({record.get('done')} of {record.get('inputs')} inputs done); "
                    "wait longer or fetch later",
                    409,
                    "conflict",
                )
            time.sleep(POLL_S)
            record = transport.request_json(endpoint, "GET", f"/v1/jobs/{job_id}")
    inputs = int(record.get("inputs") or 0)
    job = StoredJob(endpoint, {"job_id": job_id, "expected_inputs": inputs, "detach": False}, b"", _Ended(inputs), Progress(False, inputs, job_id))  # type: ignore[arg-type]
    conn, _ = transport.POOL.get(endpoint, None)
    try:
        conn.request("GET", endpoint.path(f"/v1/jobs/{job_id}/results"), headers=dict(endpoint.auth_headers))
        resp = conn.getresponse()
    except OSError as err:
        conn.close()
        raise transport.unreachable(endpoint, err) from None
    if resp.status != 200:
        payload = resp.read()
        conn.close()
        raise transport.error_from_response(resp.status, payload, f"fetch of job {job_id}'s results")
    job._conn, job._resp, job._sent = conn, resp, True
    results = _collect(job, ordered)
    if delete:
        transport.request_json(endpoint, "DELETE", f"/v1/jobs/{job_id}/results")
    return results


def delete_results(job_id: str, api_key: Optional[str] = None) -> None:
    """Frees the stored results of ``job_id`` on the coordinator."""
    endpoint = config.resolve(api_key)[0]
    transport.request_json(endpoint, "DELETE", f"/v1/jobs/{job_id}/results")
