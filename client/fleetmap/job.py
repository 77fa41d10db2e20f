"""One job on the coordinator: submit, stream inputs, read result frames, cancel.

The flow of docs/protocol.md §3 for a client that cannot write and read one request at once:
``POST /v1/jobs`` carries SPEC, FUNCTION, the first INPUTS batch and INPUTS_END when the
iterable is already exhausted.  Otherwise a feeder thread streams the rest, chunked, with
``POST /v1/jobs/{id}/inputs`` on a second connection while the calling thread reads the
result frames of the first response.  The feeder never runs more than ``window`` inputs
ahead of the point the consumer has reached, so a generator of any length runs in bounded
memory.  Cancelling (Ctrl-C, a raised exception, an abandoned generator) is
``DELETE /v1/jobs/{id}`` plus closing both connections.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from array import array
from typing import Any, Iterator, List, Optional, Tuple

from . import errors, frames, pickling, remote_exc, transport
from .inputs import InputSource
from .progress import Progress

WINDOW = 65536
"""Inputs the feeder may send beyond the consumer's position (see ``Job.advance_window``)."""

FIRST_BODY_SECONDS = 0.005
"""How long the first body may wait on the iterable before it is sent (a fast first result)."""

FEED_START_ITEMS = 64
CANCEL_TIMEOUT_S = 2.0
FEEDER_JOIN_S = 10.0

_BUILD_FAILED = re.compile(r"the environment (image|venv) failed to build|could not build the environment")
"""END messages of a job whose environment a node could not build (see fleetmapd's env module)."""

_FRAMES_HEADERS = {"Content-Type": frames.CONTENT_TYPE, "Accept": frames.CONTENT_TYPE}


class Job:
    """A submitted job and its result stream; use ``start`` then iterate ``stream``."""

    def __init__(
        self,
        endpoint: transport.Endpoint,
        spec: dict,
        function_bytes: bytes,
        source: InputSource,
        progress: Progress,
    ) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self.job_id: str = spec["job_id"]
        self.function_bytes = function_bytes
        self.source = source
        self.progress = progress
        self.received = 0
        self.finished = False
        self.end: Optional[dict] = None
        self._conn: Optional[http.client.HTTPConnection] = None
        self._resp: Optional[http.client.HTTPResponse] = None
        self._first: Optional[Tuple[array, List[bytes]]] = None
        self._body: Optional[bytes] = None
        self._sent = False
        self._refused = False
        self._feeder: Optional[threading.Thread] = None
        self._feed_conn: Optional[http.client.HTTPConnection] = None
        self._feeder_error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._limit = WINDOW
        self._window = WINDOW
        self._stopping = False
        self._cancelled = False

    # -- submission ---------------------------------------------------------------------

    def take_first_batch(self) -> int:
        """Pull and pickle the first batch (in this thread, so its errors raise here)."""
        self._first = self.source.take(max_seconds=FIRST_BODY_SECONDS, limit=self._limit)
        return len(self._first[1])

    def _first_body(self) -> bytes:
        assert self._first is not None
        indices, payloads = self._first
        parts = [
            frames.encode_json(frames.SPEC, self.spec),
            frames.header(frames.FUNCTION, len(self.function_bytes)),
            self.function_bytes,
            frames.encode_items(frames.INPUTS, indices, payloads),
        ]
        if self.source.done:
            parts.append(frames.encode(frames.INPUTS_END))
        return b"".join(parts)

    def start(self) -> None:
        """POST the job; returns once it is admitted (200), else raises the refusal."""
        if len(self.function_bytes) > frames.MAX_FRAME_BYTES:
            raise errors.PayloadTooLarge(
                f"the pickled function is {len(self.function_bytes) / 1e6:.1f} MB, over the "
                f"{frames.MAX_FRAME_BYTES // 2**20} MiB a frame may carry; load large data inside the "
                "function instead of capturing it in a closure or global"
            )
        if self._body is None:
            self._body = self._first_body()
            self._first = None
        body = self._body
        headers = dict(_FRAMES_HEADERS, **self.endpoint.auth_headers)
        path = self.endpoint.path("/v1/jobs")
        for attempt in (0, 1):
            conn, reused = transport.POOL.get(self.endpoint, None)
            try:
                conn.putrequest("POST", path, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                self._sent = True
                try:
                    conn.send(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused before reading it all: the answer may still be there to read
                resp = conn.getresponse()
            except transport.RETRYABLE as err:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise transport.unreachable(self.endpoint, err) from None
            except OSError as err:
                conn.close()
                raise transport.unreachable(self.endpoint, err) from None
            break
        if resp.status != 200:
            self._refused = resp.status < 500
            try:
                payload = resp.read()
            except OSError:
                payload = b""
            if resp.will_close:
                conn.close()
            else:
                transport.POOL.put(self.endpoint, conn)
            raise transport.error_from_response(resp.status, payload, "job submission", self.spec)
        self._body = None
        self._refused = False
        self._conn = conn
        self._resp = resp
        if self.source.done:
            self.progress.set_total(self.source.next_index)
        elif not self.spec.get("detach"):
            self._feeder = threading.Thread(target=self._feed, name=f"fleetmap-feeder-{self.job_id[:8]}", daemon=True)
            self._feeder.start()

    # -- the feeder ---------------------------------------------------------------------

    def advance_window(self, base: int) -> None:
        """The consumer has everything below ``base``: allow inputs up to ``base + WINDOW``."""
        limit = base + self._window
        if limit > self._limit:
            with self._cond:
                self._limit = limit
                self._cond.notify()

    def _wait_window(self) -> Optional[int]:
        with self._cond:
            while not self._stopping and self.source.next_index >= self._limit:
                self._cond.wait()
            return None if self._stopping else self._limit

    def _send_inputs(self, conn: http.client.HTTPConnection, window: bool) -> None:
        """Stream the remaining inputs as chunks of one ``POST /v1/jobs/{id}/inputs`` body."""
        conn.putrequest("POST", self.endpoint.path(f"/v1/jobs/{self.job_id}/inputs"), skip_accept_encoding=True)
        conn.putheader("Content-Type", frames.CONTENT_TYPE)
        conn.putheader("Transfer-Encoding", "chunked")
        for name, value in self.endpoint.auth_headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        target = FEED_START_ITEMS
        source = self.source
        while not source.done:
            limit = self._wait_window() if window else None
            if window and limit is None:
                return
            indices, payloads = source.take(max_items=target, limit=limit)
            if payloads:
                frame = frames.encode_items(frames.INPUTS, indices, payloads)
                conn.send(b"%x\r\n%b\r\n" % (len(frame), frame))
            target = min(target * 2, 1024)
        end = frames.encode(frames.INPUTS_END)
        conn.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(end), end))
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status >= 300:
            raise transport.error_from_response(resp.status, payload, "input upload", self.spec)
        self.progress.set_total(source.next_index)

    def _feed(self) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        try:
            conn = self._feed_conn = transport.new_connection(self.endpoint)
            self._send_inputs(conn, window=True)
            if not self._stopping:
                transport.POOL.put(self.endpoint, conn)
                conn = None
        except BaseException as err:  # the user's iterable may raise anything
            if not self._stopping:
                self._feeder_error = err
                self._abort_for_feeder()
        finally:
            if conn is not None:
                conn.close()

    def _abort_for_feeder(self) -> None:
        """The iterable or the upload failed: cancel so the result stream ends and reports it."""
        if not self._delete():
            self._shutdown(self._conn)

    # -- the result stream --------------------------------------------------------------

    def stream(self) -> Iterator[Tuple[Any, List[Any], bool]]:
        """``(indices, values, failed)`` per RESULTS frame (failed=False) or instance failure.

        Output and status frames are handled on the way; a stopping failure cancels the job and
        raises its exception; END returns (after checking the state).
        """
        assert self._resp is not None
        reader = frames.FrameReader(self._resp.read)
        loads = pickling.loads
        progress = self.progress
        while True:
            try:
                frame = reader.next()
            except (OSError, http.client.HTTPException, errors.ProtocolError) as err:
                raise self._broken(err) from None
            if frame is None:
                raise self._broken(None)
            kind, body = frame
            if kind == frames.RESULTS:
                indices, payloads = frames.decode_items(body)
                try:
                    values = [loads(p) for p in payloads]
                except Exception as err:
                    self.cancel()
                    raise self._unloadable(indices, payloads, err) from err
                self.received += len(values)
                progress.advance(len(values))
                yield indices, values, False
            elif kind == frames.OUTPUT:
                index, stream, text = frames.decode_output(body)
                progress.output(index, stream, text)
            elif kind == frames.STATUS:
                progress.status(frames.decode_json_bytes(body, "STATUS"))
            elif kind == frames.FAILURE:
                index, info, exc_bytes = frames.decode_failure(body)
                if info.get("kind") in remote_exc.STOPPING_KINDS:
                    exc = remote_exc.failure_to_exception(index, info, exc_bytes)
                    self.cancel()
                    raise exc
                failure = remote_exc.instance_error(index, info)
                if index == frames.NO_INDEX:
                    self.cancel()
                    raise failure
                self.received += 1
                progress.advance(1)
                yield array("Q", (index,)), [failure], True
            elif kind == frames.END:
                self._finish(frames.decode_json_bytes(body, "END"))
                return
            else:
                raise errors.ProtocolError(f"unexpected frame kind 0x{kind:02x} in a result stream")

    def _unloadable(self, indices: array, payloads: List[Any], err: Exception) -> errors.FleetmapError:
        for index, payload in zip(indices, payloads):
            try:
                pickling.loads(payload)
            except Exception as item_err:
                return errors.RemoteError(
                    type(item_err).__name__,
                    f"the result of input {index} could not be unpickled here ({type(item_err).__name__}: "
                    f"{item_err}); return types this Python can import",
                    "",
                    index,
                )
        return errors.ProtocolError(f"a result batch could not be unpickled: {err}")

    def _broken(self, err: Optional[BaseException]) -> BaseException:
        self._close_stream()
        self._stop_feeder()
        if self._feeder_error is not None:
            return self._feeder_error
        self._delete()
        why = f" ({type(err).__name__}: {err})" if err is not None else ""
        return errors.FleetmapConnectionError(
            f"the result stream of job {self.job_id} from {self.endpoint.url} broke off before its END frame{why}; "
            "the coordinator may have restarted — run the job again"
        )

    def _finish(self, end: dict) -> None:
        self.end = end
        self.finished = True
        resp, conn = self._resp, self._conn
        self._resp = self._conn = None
        try:
            assert resp is not None and conn is not None
            resp.read()  # the chunked terminator, so the connection can be reused
            if resp.will_close:
                conn.close()
            else:
                transport.POOL.put(self.endpoint, conn)
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
        state = end.get("state")
        if state != "completed":
            self._stop_feeder()
        elif self._feeder is not None:
            self._feeder.join(FEEDER_JOIN_S)
        if self._feeder_error is not None:
            raise self._feeder_error
        message = end.get("message")
        if state == "completed":
            return
        if state == "cancelled":
            raise errors.JobCancelled(message or f"job {self.job_id} was cancelled on the coordinator")
        if message and _BUILD_FAILED.search(message):
            raise errors.EnvironmentBuildFailed(message)
        raise errors.JobFailed(message or f"job {self.job_id} ended as {state} without saying why")

    # -- cancellation -------------------------------------------------------------------

    def _delete(self) -> bool:
        """DELETE the job on the coordinator; False if the coordinator could not be told."""
        if self._cancelled or self._refused or not self._sent:
            return True
        self._cancelled = True
        try:
            transport.request_json(self.endpoint, "DELETE", f"/v1/jobs/{self.job_id}", timeout=CANCEL_TIMEOUT_S)
        except errors.CoordinatorError:
            pass  # already finished or forgotten: nothing left to stop
        except errors.FleetmapError:
            return False
        return True

    @staticmethod
    def _shutdown(conn: Optional[http.client.HTTPConnection]) -> None:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_stream(self) -> None:
        conn = self._conn
        self._resp = self._conn = None
        if conn is not None:
            conn.close()

    def _stop_feeder(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._shutdown(self._feed_conn)

    def cancel(self) -> None:
        """Stop the job everywhere: remote workers (DELETE), the feeder and both connections."""
        if self.finished:
            return
        self.finished = True
        self._stop_feeder()
        self._delete()
        self._close_stream()

    def detach(self) -> None:
        """Send the remaining inputs from this thread, then leave the job running (detach=True)."""
        try:
            if not self.source.done:
                conn = transport.new_connection(self.endpoint)
                try:
                    self._send_inputs(conn, window=False)
                finally:
                    conn.close()
        except BaseException:
            self.cancel()
            raise
        self.finished = True
        self._close_stream()

