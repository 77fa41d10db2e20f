"""Exceptions fleetmap raises itself, in one hierarchy rooted at ``FleetmapError``.

Exceptions raised *by the user's function* are rebuilt as their own type (see
``fleetmap.remote_exc``); everything here describes a refusal, an instance that died, or a
coordinator that could not be reached.  Messages are one sentence that says what to change.
"""

from __future__ import annotations

from typing import Any, List, Optional


class FleetmapError(Exception):
    """Base class of every error fleetmap raises on its own behalf."""


class InvalidArgument(FleetmapError, ValueError):
    """An argument is out of range or of the wrong type; raised before any input runs."""


class PayloadTooLarge(InvalidArgument):
    """The pickled function or one pickled input is larger than a frame may carry."""


class Unsatisfiable(FleetmapError):
    """The fleet refused the job (HTTP 422): it is valid but no node can run it."""


class NoCapacity(Unsatisfiable):
    """No node in the fleet can fit ``func_cpu`` / ``func_ram`` / ``func_gpu`` (or the Python version)."""


class EnvironmentUnavailable(Unsatisfiable):
    """The requested ``dockerfile`` / ``packages`` environment cannot be provided."""


class CoordinatorError(FleetmapError):
    """The coordinator answered with an error status; ``status`` and ``code`` say which."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message, status, code)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message


class Unauthorized(CoordinatorError):
    """The coordinator refused the credential (HTTP 401)."""


class Unavailable(CoordinatorError):
    """The coordinator cannot take the job now (HTTP 503), e.g. no node has registered."""


class FleetmapConnectionError(FleetmapError, ConnectionError):
    """The coordinator could not be reached, or the result stream broke off."""


class CertificateNotTrusted(FleetmapConnectionError):
    """An ``https://`` coordinator presented a certificate this client could not verify (an
    unknown CA, a name that does not match, an expired certificate).  The system's trust store
    is used unless ``FLEETMAP_CA_FILE`` names a CA bundle."""


class ProtocolError(FleetmapError):
    """The coordinator sent bytes that break the wire contract (docs/protocol.md)."""


class LocalClusterError(FleetmapError):
    """The local coordinator or node could not be started or stopped."""


class JobCancelled(FleetmapError):
    """The job was cancelled on the coordinator by someone other than this call."""


class JobFailed(FleetmapError):
    """The coordinator ended the job as failed for a reason not tied to one input."""


class EnvironmentBuildFailed(EnvironmentUnavailable, JobFailed):
    """A node could not build the job's environment (Dockerfile, packages or clone); the
    message carries the tail of the build log.  Raised before any input ran."""


class RemoteError(FleetmapError):
    """The function raised an exception that could not be rebuilt locally.

    ``type_name`` is the remote exception's qualified type name, ``traceback`` the remote
    traceback text and ``index`` the position of the input that raised it.
    """

    def __init__(
        self, type_name: str, message: str, traceback: str = "", index: Optional[int] = None
    ) -> None:
        super().__init__(type_name, message, traceback, index)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.index = index

    def __str__(self) -> str:
        return self.message


class UnpicklableResult(RemoteError):
    """The function returned a value that could not be pickled to send back."""


class FunctionLoadError(RemoteError):
    """The function could not be unpickled on the node (e.g. a module missing there)."""


class InstanceError(FleetmapError):
    """The instance running an input died (out of memory, exited, killed, timed out, lost).

    Such failures do not stop the job: the other inputs finish first, then the failure with
    the lowest index is raised.  ``results`` holds the job's results in input order with the
    failed positions holding their exceptions (``None`` for ``generator=True``), and
    ``failures`` lists every instance failure of the job by index.
    """

    kind = "instance"

    def __init__(self, message: str, index: Optional[int] = None, info: Optional[dict] = None) -> None:
        super().__init__(message, index, info)
        info = info or {}
        self.message = message
        self.index = index
        self.info = info
        self.node: Optional[str] = info.get("node")
        self.attempts: Optional[int] = info.get("attempts")
        self.exit_code: Optional[int] = info.get("exit_code")
        self.signal: Optional[int] = info.get("signal")
        self.results: Optional[List[Any]] = None
        self.failures: List["InstanceError"] = []

    def __str__(self) -> str:
        return self.message


class OutOfMemory(InstanceError):
    """The instance was killed by the kernel for using more than ``func_ram``."""

    kind = "oom"


class InstanceExited(InstanceError):
    """The worker process exited while running the input (``exit_code`` says how)."""

    kind = "exited"


class InstanceKilled(InstanceError):
    """The worker process died from a signal (``signal`` says which)."""

    kind = "killed"


class InputTimeout(InstanceError):
    """The input ran longer than ``timeout`` seconds and its instance was killed."""

    kind = "timeout"


class InputLost(InstanceError):
    """The node holding the input disappeared and no node could run it again."""

    kind = "lost"


INSTANCE_ERRORS = {cls.kind: cls for cls in (OutOfMemory, InstanceExited, InstanceKilled, InputTimeout, InputLost)}
"""FailureInfo ``kind`` → exception class, for failures that do not stop the job."""
