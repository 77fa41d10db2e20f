"""Argument checks for ``remote_parallel_map`` and the ``JobSpec`` they become.

Each check raises ``InvalidArgument`` with one sentence naming the argument, the allowed
range and the value given.  Nothing here touches the network or the inputs.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional

from .errors import InvalidArgument

MAX_CPU = 96
MAX_RAM_GB = 360
MAX_GPU_PARALLELISM = 100

PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(value: Any) -> Optional[int]:
    """``value`` as an int if it is a whole number (``2`` or ``2.0``), else None."""
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_range(name: str, value: Any, low: int, high: int, unit: str) -> int:
    """A whole number in ``low..high``."""
    whole = _whole(value)
    if whole is None or not low <= whole <= high:
        raise InvalidArgument(f"{name} must be a whole number of {unit} from {low} to {high}, got {value!r}.")
    return whole


def check_parallelism(value: Any) -> int:
    """``-1`` (as many as fit) or a whole number >= 1."""
    whole = _whole(value)
    if whole is None or not (whole == -1 or whole >= 1):
        raise InvalidArgument(
            f"parallelism must be -1 (as many instances as fit) or a whole number >= 1, got {value!r}."
        )
    return whole


def check_gpu(value: Any) -> Optional[str]:
    """None or a non-empty GPU model name."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"func_gpu must be a GPU model name such as 'A100' or 'H100', or None, got {value!r}.")
    return value.strip()


def check_retries(value: Any) -> int:
    """A whole number >= 0."""
    whole = _whole(value)
    if whole is None or whole < 0:
        raise InvalidArgument(f"retries must be a whole number >= 0, got {value!r}.")
    return whole


def check_timeout(value: Any) -> Optional[float]:
    """None or a positive number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise InvalidArgument(f"timeout must be a number of seconds > 0 (per input) or None, got {value!r}.")
    return value


def check_environment(dockerfile: Any, packages: Any) -> Dict[str, Any]:
    """The ``environment`` field of the spec (see ``environment.resolve``): a package list, a
    Dockerfile with its context, or the clone of this interpreter's distributions."""
    from . import environment

    return environment.resolve(dockerfile, packages)


def check_flags(generator: Any, detach: Any) -> None:
    """Combinations of the keyword-only switches that cannot work together."""
    if detach and generator:
        raise InvalidArgument("detach=True returns the job id instead of results, so it cannot be combined with generator=True.")


def check_api_key(value: Any) -> Optional[str]:
    """None or a non-empty string."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument("api_key must be a non-empty string or None.")
    return value.strip()


def check_function(function_: Any) -> None:
    """A callable."""
    if not callable(function_):
        raise InvalidArgument(f"function_ must be a callable taking one input, got {type(function_).__name__}.")


def check_inputs(inputs: Any) -> Optional[int]:
    """An iterable; returns its length when it has one (so the fleet can size the job)."""
    if isinstance(inputs, (str, bytes)):
        raise InvalidArgument(
            f"inputs must be an iterable of inputs, got a {type(inputs).__name__}; wrap it in a list to run it once."
        )
    try:
        length = len(inputs)  # type: ignore[arg-type]
    except TypeError:
        length = None
    if length is None:
        try:
            iter(inputs)
        except TypeError:
            raise InvalidArgument(f"inputs must be an iterable such as a list or a generator, got {type(inputs).__name__}.") from None
    return length


def build_spec(
    job_id: str,
    *,
    func_cpu: Any,
    func_ram: Any,
    func_gpu: Any,
    parallelism: Any,
    expected_inputs: Optional[int],
    timeout: Any,
    retries: Any,
    environment: Dict[str, Any],
    detach: bool,
) -> Dict[str, Any]:
    """Validate the resource arguments and build the ``JobSpec`` (docs/protocol.md §2)."""
    cpu = check_range("func_cpu", func_cpu, 1, MAX_CPU, "CPUs")
    ram = check_range("func_ram", func_ram, 1, MAX_RAM_GB, "GB")
    gpu = check_gpu(func_gpu)
    par = check_parallelism(parallelism)
    if gpu is not None:
        par = MAX_GPU_PARALLELISM if par == -1 else min(par, MAX_GPU_PARALLELISM)
    tries = check_retries(retries)
    limit = check_timeout(timeout)
    if limit is not None and float(limit).is_integer():
        limit = int(limit)
    return {
        "version": 1,
        "job_id": job_id,
        "func_cpu": cpu,
        "func_ram_gb": ram,
        "func_gpu": gpu,
        "parallelism": par,
        "expected_inputs": expected_inputs,
        "timeout_s": limit,
        "retries": tries,
        "stop_on_exception": True,
        "python_version": PYTHON_VERSION,
        "environment": environment,
        "detach": bool(detach),
    }
