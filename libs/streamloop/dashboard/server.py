"""The dashboard over HTTP: one static page, its assets and a JSON snapshot, from the standard library.

Routes: ``/`` the page, ``/static/<file>`` its script, styles and the vendored uPlot,
``/api/snapshot`` everything the page draws (assembly.py), ``/healthz``.

``http.server`` is enough here: a handful of read-only routes for one user on loopback, served by
a ``ThreadingHTTPServer`` on a daemon thread; no framework or extra dependency earns its keep.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from streamloop.dashboard.exceptions import DashboardPortError

log = logging.getLogger(__name__)

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


class _Handler(BaseHTTPRequestHandler):
    server_version = "streamloop-dashboard"

    def __init__(self, *args: Any, snapshot: Any, **kwargs: Any) -> None:
        self._snapshot = snapshot
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
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


class DashboardServer:
    """Serves ``snapshot()`` and the page on ``host:port`` (port 0: any free port) from a daemon thread."""

    def __init__(self, snapshot: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            self._server = ThreadingHTTPServer((host, port), partial(_Handler, snapshot=snapshot))
        except OSError as exc:
            raise DashboardPortError(f"cannot serve the dashboard on {host}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - only naming the bind-all address
        if ":" in str(shown):
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/"

    def start(self) -> DashboardServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

