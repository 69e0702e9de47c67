"""The page, its assets and the JSON snapshot over HTTP."""

import json
import urllib.error
import urllib.request

import pytest

from streamloop.dashboard import DashboardPortError, DashboardServer


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
