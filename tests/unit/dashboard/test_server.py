"""The page, its assets and the JSON snapshot over HTTP."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from streamloop.dashboard import DashboardPortError, DashboardServer, DashboardSettings


@pytest.fixture
def server():
    running = DashboardServer(lambda: {"pipeline": "p", "value": 1}).start()
    yield running
    running.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the test's own loopback server
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_serves_the_page_its_assets_and_the_snapshot(server):
    status, kind, body = get(server.url)
    assert status == 200 and kind.startswith("text/html") and b'id="chart-accuracy"' in body
    for asset in ("dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css",
                  "vendor/uPlot.LICENSE.txt"):
        status, _kind, body = get(f"{server.url}static/{asset}")
        assert status == 200 and body, asset
    status, kind, body = get(f"{server.url}api/snapshot")
    assert status == 200 and kind == "application/json" and json.loads(body) == {"pipeline": "p", "value": 1}
    assert get(f"{server.url}healthz")[0] == 200


@pytest.mark.parametrize("path", ["static/../server.py", "static/%2e%2e/server.py", "static/vendor/README.md",
                                  "static/", "nope"])
def test_nothing_else_is_served(server, path):
    assert get(f"{server.url}{path}")[0] == 404


def test_a_taken_port_is_a_clear_error(server):
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(DashboardPortError, match=f"127.0.0.1:{port}"):
        DashboardServer(dict, "127.0.0.1", port)


def get_with_host(server: DashboardServer, host: str, path: str = "/api/snapshot") -> tuple[int, bytes]:
    """A request naming ``host`` in its Host header, as a browser does for the name in its address bar."""
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost:{port}@evil.example", ""])
def test_a_page_reaching_the_server_under_another_name_is_refused(server, host):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, and the browser sends that name as Host."""
    port = server.url.rsplit(":", 1)[1].strip("/")
    for path in ("/api/snapshot", "/"):
        status, body = get_with_host(server, host.format(port=port), path)
        assert status == 403 and b"Host" in body and b"pipeline" not in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}"])
def test_loopback_names_are_served(server, host):
    port = server.url.rsplit(":", 1)[1].strip("/")
    assert get_with_host(server, host.format(port=port))[0] == 200


def test_configured_names_are_served(monkeypatch):
    monkeypatch.setenv("STREAMLOOP_DASHBOARD_ALLOWED_HOSTS", "dashboard.internal, Proxy.example")
    settings = DashboardSettings()
    assert settings.allowed_hosts == ("dashboard.internal", "Proxy.example")
    running = DashboardServer(dict, "127.0.0.1", 0, settings.allowed_hosts).start()
    try:
        assert get_with_host(running, "proxy.example:443")[0] == 200
        assert get_with_host(running, "dashboard.internal")[0] == 200
        assert get_with_host(running, "other.internal")[0] == 403
    finally:
        running.stop()


def test_a_half_sent_request_is_closed_after_the_request_timeout():
    running = DashboardServer(lambda: {}, request_timeout_s=0.3).start()
    try:
        port = int(running.url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as half_sent:
            half_sent.sendall(b"GET /api/snapshot HTTP/1.1\r\n")  # and never the rest
            started = time.monotonic()
            assert half_sent.recv(1) == b"", "the server closes the connection"
            assert time.monotonic() - started < 3
        assert get(f"{running.url}healthz")[0] == 200
    finally:
        running.stop()



def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_address_is_served_over_ipv6(host):
    """docs/dashboard.md accepts ::1 and ::; an AF_INET server refused them ("Address family not supported")."""
    running = DashboardServer(lambda: {"pipeline": "p"}, host, 0).start()
    try:
        assert running.url.startswith("http://[::1]:")
        status, _kind, body = get(f"{running.url}api/snapshot")
        assert status == 200 and json.loads(body) == {"pipeline": "p"}
    finally:
        running.stop()


@ipv6
def test_the_ipv6_bind_all_address_is_served_and_shown_as_loopback():
    running = DashboardServer(lambda: {"pipeline": "p"}, "::", 0).start()
    try:
        assert running.url.startswith("http://[::1]:")
        assert get(f"{running.url}healthz")[0] == 200
        port = int(running.url.rsplit(":", 1)[1].strip("/"))
        if not running._server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200, "IPv4 too, as 0.0.0.0 would"
    finally:
        running.stop()


def test_a_server_bound_but_never_started_frees_its_port_at_once():
    """A launcher binds the port before anything starts, and may stop before serving it."""
    bound = DashboardServer(None, "127.0.0.1", 0)
    port = int(bound.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(DashboardPortError):
        DashboardServer(dict, "127.0.0.1", port)
    started = time.monotonic()
    bound.stop()
    assert time.monotonic() - started < 1, "stop waited for a serve_forever that never ran"
    DashboardServer(dict, "127.0.0.1", port).stop()


def test_the_snapshot_given_at_start_is_the_one_served():
    bound = DashboardServer(None, "127.0.0.1", 0)
    try:
        bound.start(lambda: {"pipeline": "late"})
        assert json.loads(get(f"{bound.url}api/snapshot")[2]) == {"pipeline": "late"}
    finally:
        bound.stop()
