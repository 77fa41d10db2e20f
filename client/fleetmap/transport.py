"""HTTP/1.1 to the coordinator over persistent ``http.client`` connections.

A small per-process pool keeps idle keep-alive connections per endpoint, so a warm
``remote_parallel_map`` pays no connect, no DNS and no TLS handshake.  ``https://``
coordinators are verified against the CA bundle ``FLEETMAP_CA_FILE`` names, else the system's
default trust store; a certificate that does not verify is ``CertificateNotTrusted``.  A pooled connection the
server has closed is noticed (a zero-byte peek) before it is reused.  Every non-2xx answer is
turned into an exception in exactly one place, ``error_from_response``.
"""

from __future__ import annotations

import http.client
import json
import select
import os
import socket
import ssl
import threading
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from . import errors

CONNECT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 30.0
_POOL_MAX_IDLE = 4
ENV_CA_FILE = "FLEETMAP_CA_FILE"
_ssl_contexts: Dict[Optional[str], ssl.SSLContext] = {}


class Endpoint:
    """Where the coordinator is and how to authenticate; hashable, built once per URL."""

    __slots__ = ("url", "scheme", "host", "port", "prefix", "api_key", "_key", "auth_headers")

    def __init__(self, url: str, api_key: Optional[str] = None) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.InvalidArgument(
                f"coordinator address {url!r} is not an http:// or https:// URL; "
                "set FLEETMAP_COORDINATOR to e.g. http://10.0.0.5:7070"
            )
        self.url = url.strip().rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.api_key = api_key
        self._key = (self.scheme, self.host, self.port)
        self.auth_headers: Dict[str, str] = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def path(self, route: str) -> str:
        """The request target for ``route`` (``/v1/...``) under the URL's path prefix."""
        return self.prefix + route


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection with a bounded connect, then blocking reads and TCP keepalive."""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), CONNECT_TIMEOUT_S)
        _keepalive(sock)
        sock.settimeout(self.timeout)
        self.sock = sock


class _TlsConnection(http.client.HTTPSConnection):
    """The TLS variant of ``_Connection``."""

    def connect(self) -> None:
        super().connect()
        _keepalive(self.sock)


def ssl_context() -> ssl.SSLContext:
    """The verifying TLS context: the CA bundle ``FLEETMAP_CA_FILE`` names, else the system's
    default trust store (one context per bundle, made once)."""
    ca_file = os.environ.get(ENV_CA_FILE) or None
    context = _ssl_contexts.get(ca_file)
    if context is None:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as err:
            raise errors.InvalidArgument(
                f"{ENV_CA_FILE} names {ca_file!r}, which is not a readable PEM CA bundle ({err}); "
                "point it at the CA certificate that signed the coordinator's certificate"
            ) from None
        _ssl_contexts[ca_file] = context
    return context


def new_connection(endpoint: "Endpoint", timeout: Optional[float] = None) -> http.client.HTTPConnection:
    """A fresh, not yet connected connection to ``endpoint`` (blocking reads by default)."""
    if endpoint.scheme == "https":
        return _TlsConnection(endpoint.host, endpoint.port, timeout=timeout, context=ssl_context())
    return _Connection(endpoint.host, endpoint.port, timeout=timeout)


def _is_stale(conn: http.client.HTTPConnection) -> bool:
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    # An idle keep-alive connection has nothing to read; readable means EOF or junk.
    return bool(readable)


def _pool_key(endpoint: Endpoint) -> Tuple[str, str, int, Optional[str]]:
    """Connections verified against one CA bundle are not reused under another."""
    ca_file = os.environ.get(ENV_CA_FILE) if endpoint.scheme == "https" else None
    return endpoint._key + (ca_file,)


class ConnectionPool:
    """Idle connections per endpoint; ``get`` hands one out, ``put`` takes it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: Dict[Tuple[str, str, int, Optional[str]], List[http.client.HTTPConnection]] = {}

    def get(self, endpoint: Endpoint, timeout: Optional[float] = None) -> Tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was reused (a reused one may still fail once)."""
        while True:
            with self._lock:
                idle = self._idle.get(_pool_key(endpoint))
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if _is_stale(conn):
                conn.close()
                continue
            conn.sock.settimeout(timeout)
            conn.timeout = timeout
            return conn, True
        return new_connection(endpoint, timeout), False

    def put(self, endpoint: Endpoint, conn: http.client.HTTPConnection) -> None:
        """Keep ``conn`` for reuse if it is still open, else close it."""
        if conn.sock is None:
            return
        with self._lock:
            idle = self._idle.setdefault(_pool_key(endpoint), [])
            if len(idle) < _POOL_MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        """Close every idle connection (after the coordinator moved or restarted)."""
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


POOL = ConnectionPool()

RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine)
"""Failures of a reused connection that mean the server closed it before reading our request."""


def unreachable(endpoint: Endpoint, err: BaseException) -> errors.FleetmapConnectionError:
    """The error for a coordinator that cannot be reached at all (or whose certificate this
    client does not trust)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        reason = err.verify_message or str(err)
        ca_file = os.environ.get(ENV_CA_FILE)
        trusted = f"the CA bundle {ca_file}" if ca_file else "the system's trust store"
        return errors.CertificateNotTrusted(
            f"the coordinator at {endpoint.url} presented a certificate that {trusted} does not "
            f"verify ({reason}); set {ENV_CA_FILE} to the CA that signed the coordinator's certificate"
        )
    return errors.FleetmapConnectionError(
        f"cannot reach the coordinator at {endpoint.url} ({type(err).__name__}: {err}); "
        "check that it is running and that FLEETMAP_COORDINATOR points at it"
    )


def error_from_response(status: int, body: bytes, what: str = "request", job_spec: Optional[dict] = None) -> errors.FleetmapError:
    """The one place where a non-2xx HTTP answer becomes an exception."""
    code = ""
    message = ""
    try:
        parsed = json.loads(body) if body else None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            code = str(parsed["error"].get("code") or "")
            message = str(parsed["error"].get("message") or "")
    except ValueError:
        pass
    if not message:
        text = body[:300].decode("utf-8", "replace").strip()
        message = f"the coordinator answered {status} to the {what}" + (f": {text}" if text else "")
    if status == 422 or code == "unprocessable":
        environment = (job_spec or {}).get("environment") or {}
        if environment.get("kind", "node_default") in ("packages", "dockerfile"):
            return errors.EnvironmentUnavailable(message)
        return errors.NoCapacity(message)
    if status == 400 or code == "bad_request":
        return errors.InvalidArgument(message)
    if status == 413 or code == "payload_too_large":
        return errors.PayloadTooLarge(message)
    if status == 401 or code == "unauthorized":
        return errors.Unauthorized(message, status, code)
    if status == 503 or code == "unavailable":
        return errors.Unavailable(message, status, code)
    return errors.CoordinatorError(message, status, code)


def request_json(
    endpoint: Endpoint, method: str, route: str, body: Any = None, timeout: float = CONTROL_TIMEOUT_S
) -> Any:
    """A control-plane call: JSON in, JSON out (``None`` for an empty answer)."""
    data = None if body is None else json.dumps(body).encode()
    headers = dict(endpoint.auth_headers)
    if data is not None:
        headers["Content-Type"] = "application/json"
    for attempt in (0, 1):
        conn, reused = POOL.get(endpoint, timeout)
        try:
            conn.request(method, endpoint.path(route), body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except RETRYABLE as err:
            conn.close()
            if reused and attempt == 0:
                continue
            raise unreachable(endpoint, err) from None
        except OSError as err:
            conn.close()
            raise unreachable(endpoint, err) from None
        if resp.will_close:
            conn.close()
        else:
            POOL.put(endpoint, conn)
        if resp.status >= 300:
            raise error_from_response(resp.status, payload, f"{method} {route}")
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise errors.ProtocolError(f"{method} {route} answered non-JSON: {payload[:200]!r}") from None
    raise AssertionError("unreachable")  # pragma: no cover
