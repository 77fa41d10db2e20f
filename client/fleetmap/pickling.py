"""Serialization of the function and the inputs, and deserialization of results.

The function is cloudpickled.  Code the nodes cannot import — ``__main__`` and *local
modules*, i.e. modules whose file lies outside the standard library and site-packages — is
pickled by value (``cloudpickle.register_pickle_by_value``).  Inputs go through the standard
pickler (protocol 5) and fall back to cloudpickle for what it refuses or for objects whose
class lives in such a local module.  The scan of ``sys.modules`` is incremental: a call only
looks at modules imported since the previous call.
"""

from __future__ import annotations

import os
import pickle
import site
import sys
import sysconfig
import threading
from typing import Any, Callable, FrozenSet, Set, Tuple

import cloudpickle

from .errors import InvalidArgument

PROTOCOL = 5

_OWN_TOP_LEVEL = frozenset(("fleetmap", "cloudpickle", "tqdm", "_pytest", "pytest", "pluggy"))


def _installed_prefixes() -> Tuple[str, ...]:
    paths = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            paths.add(path)
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # virtualenv's old site.py lacks it
        pass
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        paths.add(user)
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        paths.add(os.path.join(prefix, "lib"))
        paths.add(os.path.join(prefix, "lib64"))
    expanded = set()
    for path in paths:
        expanded.add(os.path.join(os.path.abspath(path), ""))
        expanded.add(os.path.join(os.path.realpath(path), ""))
    return tuple(sorted(expanded))


_PREFIXES = _installed_prefixes()
_STDLIB_NAMES: FrozenSet[str] = frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(
    sys.builtin_module_names
)


def is_local_module(name: str, module: Any) -> bool:
    """Whether ``module`` is user code the nodes cannot import (so it travels by value)."""
    if name == "__main__":
        return False  # cloudpickle pickles __main__ by value already
    top = name.partition(".")[0]
    if top in _OWN_TOP_LEVEL or top in _STDLIB_NAMES:
        return False
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith((".py", ".pyc")):
        return False  # builtins, namespace packages, C extensions travel by reference
    if "site-packages" in path or "dist-packages" in path:
        return False
    path = os.path.abspath(path)
    if path.startswith(_PREFIXES):
        return False
    real = os.path.realpath(path)
    return not real.startswith(_PREFIXES)


class _ByValueRegistry:
    """Remembers which modules have been classified, so a warm call scans nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Set[str] = set()
        self._seen_count = -1
        self.local: Set[str] = {"__main__"}

    def refresh(self) -> None:
        """Register modules imported since the last call whose code is local."""
        modules = sys.modules
        if len(modules) == self._seen_count:
            return
        with self._lock:
            for _ in range(3):
                try:
                    items = list(modules.items())
                    break
                except RuntimeError:  # another thread imported mid-copy; try again
                    continue
            else:
                return
            for name, module in items:
                if name in self._seen:
                    continue
                self._seen.add(name)
                if module is None or not is_local_module(name, module):
                    continue
                try:
                    cloudpickle.register_pickle_by_value(module)
                except (ValueError, TypeError):
                    continue
                self.local.add(name)
            self._seen_count = len(items)


_REGISTRY = _ByValueRegistry()


def local_modules() -> Set[str]:
    """Names of the modules pickled by value (``__main__`` included)."""
    _REGISTRY.refresh()
    return set(_REGISTRY.local)


def dumps_function(function_: Callable) -> bytes:
    """Cloudpickle the function, with local modules by value; InvalidArgument if it can't be."""
    _REGISTRY.refresh()
    try:
        return cloudpickle.dumps(function_, protocol=PROTOCOL)
    except Exception as err:
        raise InvalidArgument(
            f"function_ could not be pickled ({type(err).__name__}: {err}); "
            "make sure what it references (globals, closure variables) can be pickled"
        ) from err


def dumps_input(value: Any, index: int, _local: Set[str] = _REGISTRY.local) -> bytes:
    """Pickle one input: standard pickle first, cloudpickle for what it refuses or can't ship."""
    if type(value).__module__ not in _local:
        try:
            return pickle.dumps(value, PROTOCOL)
        except Exception:
            pass
    try:
        return cloudpickle.dumps(value, protocol=PROTOCOL)
    except Exception as err:
        raise InvalidArgument(
            f"input {index} could not be pickled ({type(err).__name__}: {err}); "
            "pass inputs that pickle, e.g. data rather than open files, locks or sockets"
        ) from err


def loads(payload: Any) -> Any:
    """Unpickle a result payload (bytes or memoryview) produced by the worker."""
    return pickle.loads(payload)
