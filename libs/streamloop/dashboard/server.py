"""The dashboard over HTTP: one static page, its assets and a JSON snapshot, from the standard library.

Routes: ``/`` the page, ``/static/<file>`` its script, styles and the vendored uPlot,
``/api/snapshot`` everything the page draws (assembly.py), ``/healthz``.

``http.server`` is enough here: a handful of read-only routes for one user on loopback, served by
a ``ThreadingHTTPServer`` on a daemon thread; no framework or extra dependency earns its keep.

Every request must name this server in its ``Host`` header (``allowed_host_names``): loopback
binding alone does not stop a web page from reading the snapshot (entity keys, event ids) by
DNS rebinding, where the attacker's own name resolves to 127.0.0.1 and the browser sends it as
``Host``. Others are answered 403.

An address with a colon (``::1``, ``::``) is served over IPv6; ``::`` takes IPv4 connections too
where the system allows it (as ``python -m http.server --bind ::`` does).

A connection that sends nothing for ``REQUEST_TIMEOUT_S`` (a request half sent, a response not
read) is closed: each holds a thread, and without a timeout a few hundred idle ones would pin
as many threads for ever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterable
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from streamloop.dashboard.exceptions import DashboardPortError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
BIND_ALL = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - only naming the bind-all addresses
REQUEST_TIMEOUT_S = 10.0  # the page's own requests take milliseconds; a slow link, a few seconds
FORBIDDEN_HOST = b"forbidden: unknown Host header (allow it with STREAMLOOP_DASHBOARD_ALLOWED_HOSTS)\n"

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of the packaged ``static/`` folder and its content type; None for anything else."""
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") for part in parts):
        return None
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    if suffix not in STATIC_TYPES:
        return None
    path = resources.files("streamloop.dashboard").joinpath("static", *parts)
    if not path.is_file():
        return None
    return path.read_bytes(), STATIC_TYPES[suffix]


def host_name(header: str | None) -> str | None:
    """The name in a ``Host`` header, lowercased, without its port or IPv6 brackets; None when malformed."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, port = header[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
    else:
        name, colon, port = header.partition(":")
        if colon and not port.isdigit():
            return None
    return name.rstrip(".") or None


def allowed_host_names(bound_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a request's ``Host`` may give: loopback, the bound address, and ``extra`` (e.g. a proxy's)."""
    names = set(LOOPBACK_NAMES) | {name.strip().lower().strip("[]") for name in extra if name.strip()}
    if bound_host not in BIND_ALL:
        names.add(bound_host.lower().strip("[]"))
    return frozenset(names)


class _Handler(BaseHTTPRequestHandler):
    server_version = "streamloop-dashboard"

    def __init__(self, *args: Any, snapshot: Any, allowed_hosts: frozenset[str], timeout: float,
                 **kwargs: Any) -> None:
        self._snapshot = snapshot
        self._allowed_hosts = allowed_hosts
        self.timeout = timeout  # before super().__init__, which sets up the socket and handles the request
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if host_name(self.headers.get("Host")) not in self._allowed_hosts:
            # The port does not matter: a rebinding page reaches the right port under its own name.
            self._send(HTTPStatus.FORBIDDEN, FORBIDDEN_HOST, "text/plain")
        elif path in ("/", "/index.html"):
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(path.removeprefix("/static/"))
        elif path == "/api/snapshot":
            body = json.dumps(self._snapshot(), allow_nan=False, separators=(",", ":")).encode()
            self._send(HTTPStatus.OK, body, "application/json")
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _static(self, name: str) -> None:
        found = static_file(name)
        if found is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        self._send(HTTPStatus.OK, *found)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("dashboard: " + format, *args)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":
            # Bind-all on IPv6 takes IPv4 too, as 0.0.0.0 would; a system that refuses keeps IPv6 only.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class DashboardServer:
    """Serves ``snapshot()`` and the page on ``host:port`` (port 0: any free port) from a daemon thread.

    The port is bound here, and served from ``start``: a launcher binds it before it starts
    anything, so that a taken port is found first, and hands ``start`` the snapshot once its
    collector exists. ``allowed_hosts``: names a request's ``Host`` may give besides loopback and
    ``host`` itself; ``request_timeout_s``: how long a connection may stay silent before it is closed.
    """

    def __init__(self, snapshot: Any, host: str = "127.0.0.1", port: int = 0,
                 allowed_hosts: Iterable[str] = (), request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.snapshot = snapshot
        handler = partial(_Handler, snapshot=lambda: self.snapshot(),
                          allowed_hosts=allowed_host_names(host, allowed_hosts), timeout=request_timeout_s)
        address = host.strip("[]")  # [::1], as a URL writes it
        server = _IPv6Server if ":" in address else ThreadingHTTPServer
        try:
            self._server = server((address, port), handler)
        except OSError as exc:
            raise DashboardPortError(f"cannot serve the dashboard on {host}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        if host in BIND_ALL:
            host = "::1" if self._server.address_family == socket.AF_INET6 else "127.0.0.1"
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def start(self, snapshot: Any = None) -> DashboardServer:
        """Serve from now on; ``snapshot``, when given, is what ``/api/snapshot`` answers."""
        if snapshot is not None:
            self.snapshot = snapshot
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; a server bound but never started only frees it."""
        started = self._thread.ident is not None
        if started:
            self._server.shutdown()  # waits for serve_forever: never started, it would wait for ever
        self._server.server_close()
        if started:
            self._thread.join(5)

