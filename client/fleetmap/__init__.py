"""fleetmap: run a Python function over many inputs on many machines.

``remote_parallel_map(function_, inputs, ...)`` is the whole API; see its docstring and
shared/DESIGN.md.  Errors fleetmap raises itself are in ``fleetmap.errors``, re-exported here.
"""

from .api import remote_parallel_map
from .stored import delete_results, fetch_results
from .errors import (
    CertificateNotTrusted,
    CoordinatorError,
    EnvironmentBuildFailed,
    EnvironmentUnavailable,
    FleetmapConnectionError,
    FleetmapError,
    FunctionLoadError,
    InputLost,
    InputTimeout,
    InstanceError,
    InstanceExited,
    InstanceKilled,
    InvalidArgument,
    JobCancelled,
    JobFailed,
    LocalClusterError,
    NoCapacity,
    OutOfMemory,
    PayloadTooLarge,
    ProtocolError,
    RemoteError,
    Unauthorized,
    Unavailable,
    UnpicklableResult,
    Unsatisfiable,
)

__version__ = "0.1.0"

__all__ = [
    "remote_parallel_map",
    "fetch_results",
    "delete_results",
    "CertificateNotTrusted",
    "CoordinatorError",
    "EnvironmentBuildFailed",
    "EnvironmentUnavailable",
    "FleetmapConnectionError",
    "FleetmapError",
    "FunctionLoadError",
    "InputLost",
    "InputTimeout",
    "InstanceError",
    "InstanceExited",
    "InstanceKilled",
    "InvalidArgument",
    "JobCancelled",
    "JobFailed",
    "LocalClusterError",
    "NoCapacity",
    "OutOfMemory",
    "PayloadTooLarge",
    "ProtocolError",
    "RemoteError",
    "Unauthorized",
    "Unavailable",
    "UnpicklableResult",
    "Unsatisfiable",
]
