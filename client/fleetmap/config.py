"""Where the coordinator is and which credential to use, resolved cheaply on every call.

``FLEETMAP_COORDINATOR`` names a coordinator; without it the local cluster is started (once)
and its address cached for the life of the process.  The API key comes from the argument,
``FLEETMAP_API_KEY``, or the file ``fleetmap login`` writes (``$FLEETMAP_HOME/api_key``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

from .transport import Endpoint

ENV_COORDINATOR = "FLEETMAP_COORDINATOR"
ENV_API_KEY = "FLEETMAP_API_KEY"
ENV_HOME = "FLEETMAP_HOME"


def home() -> Path:
    """``$FLEETMAP_HOME``, default ``~/.fleetmap``."""
    value = os.environ.get(ENV_HOME)
    return Path(value) if value else Path.home() / ".fleetmap"


def api_key_path() -> Path:
    """The file ``fleetmap login`` writes."""
    return home() / "api_key"


_key_cache: Dict[str, Tuple[float, Optional[str]]] = {}
_key_paths: Dict[Optional[str], str] = {}


def _key_file() -> str:
    """``api_key_path()`` as a string, memoised per FLEETMAP_HOME (this runs on every call)."""
    env_home = os.environ.get(ENV_HOME)
    path = _key_paths.get(env_home)
    if path is None:
        path = _key_paths[env_home] = str(api_key_path())
    return path


def resolve_api_key(explicit: Optional[str]) -> Optional[str]:
    """The credential to send, or None: argument, then environment, then the login file."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_API_KEY)
    if env:
        return env
    path = _key_file()
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    cached = _key_cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        with open(path) as fh:
            key = fh.read().strip() or None
    except OSError:
        key = None
    _key_cache[path] = (mtime, key)
    return key


_endpoints: Dict[Tuple[str, Optional[str]], Endpoint] = {}
_local_lock = threading.Lock()
_local_url: Dict[str, str] = {}


def _endpoint(url: str, api_key: Optional[str]) -> Endpoint:
    key = (url, api_key)
    endpoint = _endpoints.get(key)
    if endpoint is None:
        endpoint = _endpoints[key] = Endpoint(url, api_key)
    return endpoint


def resolve(api_key: Optional[str] = None, start_local: bool = True) -> Tuple[Endpoint, bool]:
    """The coordinator endpoint and whether it is the auto-started local cluster."""
    key = resolve_api_key(api_key)
    url = os.environ.get(ENV_COORDINATOR)
    if url:
        return _endpoint(url, key), False
    home_dir = str(home())
    cached = _local_url.get(home_dir)
    if cached is None:
        from . import local_cluster

        with _local_lock:
            cached = _local_url.get(home_dir)
            if cached is None:
                if start_local:
                    cached = local_cluster.ensure_running()
                else:
                    cached = local_cluster.running_url()
                    if cached is None:
                        raise local_cluster.not_running_error()
                _local_url[home_dir] = cached
    return _endpoint(cached, key), True


def forget_local() -> None:
    """Drop the cached local address (after the local cluster stopped or moved)."""
    _local_url.pop(str(home()), None)
