"""Turn a FAILURE frame into the exception ``remote_parallel_map`` raises.

For kind ``exception`` the function's own exception is unpickled (a class defined in
``__main__`` or a local module comes back as the very same class, thanks to cloudpickle's
class tracking) and the remote traceback is chained as its ``__cause__``, the way
``concurrent.futures`` does with ``_RemoteTraceback``.  When the bytes cannot be rebuilt,
``RemoteError`` carries the type name, message and traceback instead.  Instance failures
(oom, exited, killed, timeout, lost) map to ``InstanceError`` subclasses.
"""

from __future__ import annotations

import pickle
import sys
from typing import Optional

from . import errors
from .frames import NO_INDEX


class RemoteTraceback(Exception):
    """The traceback of the exception on the node, shown as the ``__cause__`` of the local one."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _index(index: int) -> Optional[int]:
    return None if index == NO_INDEX else index


def _attach(exc: BaseException, index: Optional[int], info: dict) -> BaseException:
    traceback = info.get("traceback") or ""
    try:
        exc.fleetmap_index = index  # type: ignore[attr-defined]
        exc.fleetmap_traceback = traceback  # type: ignore[attr-defined]
        exc.fleetmap_node = info.get("node")  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # __slots__ exceptions; the cause still carries it
        pass
    if traceback:
        exc.__cause__ = RemoteTraceback(f'\n"""\n{traceback.rstrip()}\n"""')
    if sys.version_info >= (3, 11) and index is not None:
        node = info.get("node")
        where = f" on node {node}" if node else ""
        exc.add_note(f"fleetmap: raised by input {index}{where}")
    return exc


def _fallback_message(index: Optional[int], info: dict) -> str:
    message = info.get("message")
    if message:
        return str(message)
    type_name = info.get("type_name") or "Exception"
    where = f"input {index}" if index is not None else "the function"
    return f"{where} raised {type_name}"


def rebuild_exception(index: int, info: dict, exc_bytes: bytes) -> BaseException:
    """The exception for a FAILURE of kind ``exception`` (or ``unpicklable_result``)."""
    idx = _index(index)
    kind = info.get("kind")
    type_name = str(info.get("type_name") or "Exception")
    module = info.get("module")
    qualified = f"{module}.{type_name}" if module and module != "builtins" else type_name
    traceback = str(info.get("traceback") or "")
    exc: Optional[BaseException] = None
    if kind == "exception" and exc_bytes:
        try:
            loaded = pickle.loads(exc_bytes)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None:
        cls = errors.UnpicklableResult if kind == "unpicklable_result" else errors.RemoteError
        exc = cls(qualified, _fallback_message(idx, info), traceback, idx)
    return _attach(exc, idx, info)


def instance_error(index: int, info: dict) -> errors.InstanceError:
    """The exception for an instance failure that does not stop the job (or an unknown kind)."""
    idx = _index(index)
    cls = errors.INSTANCE_ERRORS.get(str(info.get("kind")), errors.InstanceError)
    message = info.get("message") or f"input {idx} failed: {info.get('kind')}"
    return cls(str(message), idx, info)


def function_load_error(info: dict) -> errors.FunctionLoadError:
    """The exception for a FAILURE of kind ``function_load``."""
    type_name = str(info.get("type_name") or "Exception")
    message = info.get("message") or f"the function could not be loaded on the node: {type_name}"
    return errors.FunctionLoadError(type_name, str(message), str(info.get("traceback") or ""), None)


STOPPING_KINDS = frozenset(("exception", "unpicklable_result", "function_load"))
"""FailureInfo kinds that end the job (with ``stop_on_exception``); the rest are collected."""


def failure_to_exception(index: int, info: dict, exc_bytes: bytes) -> BaseException:
    """Map any FAILURE frame to its exception."""
    kind = info.get("kind")
    if kind == "function_load":
        return function_load_error(info)
    if kind in STOPPING_KINDS:
        return rebuild_exception(index, info, exc_bytes)
    return instance_error(index, info)
