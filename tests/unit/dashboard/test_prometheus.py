"""Scraping a /metrics endpoint: a target that fails in any way has not answered this round."""

import socket
import threading

import pytest

from streamloop.dashboard.prometheus import ScrapeTarget, scrape


@pytest.fixture
def endpoint_dying_mid_response():
    """A /metrics endpoint that promises 1000 bytes, sends a few and closes: a service killed while answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_once() -> None:
        connection, _address = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
                               b"messaging_process_messages_total{service=\"f\"} 1\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/metrics"
    thread.join(5)
    listener.close()


def test_a_response_cut_short_is_a_target_that_did_not_answer(endpoint_dying_mid_response):
    assert scrape(ScrapeTarget("featurizer-0", endpoint_dying_mid_response), timeout_s=5) is None


def test_a_closed_port_is_a_target_that_did_not_answer():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    assert scrape(ScrapeTarget("featurizer-0", f"http://127.0.0.1:{port}/metrics"), timeout_s=5) is None
