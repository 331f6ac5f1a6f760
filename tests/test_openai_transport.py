"""The HTTP adapter's transport against a real server on loopback: a tiny ``http.server`` that answers the
first POSTs 429 with a ``Retry-After`` header, then 200.

The retry must happen (the server sees the call again), must wait what the server asked, no longer than
``max_backoff``, and a server that keeps refusing ends in one line naming the URL and the status.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evalkit.errors import EvalkitError
from evalkit.models.openai_transport import Transport

pytestmark = pytest.mark.unit  # an in-process http.server thread on loopback (3 s), not a model server: part of the quick check


@contextmanager
def rate_limited_server(refusals: int, retry_after: str) -> Iterator[tuple[str, list[float]]]:
    """A loopback server whose first ``refusals`` POSTs get 429 + ``Retry-After``; the others get {"ok": n}.

    Yields its base URL and the arrival time of every POST.
    """
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrivals.append(time.monotonic())
            refused = len(arrivals) <= refusals
            body = json.dumps({"error": {"message": "rate limited"}} if refused else {"ok": len(arrivals)}).encode()
            self.send_response(429 if refused else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if refused:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", arrivals
    finally:
        server.shutdown()
        server.server_close()


def test_a_429_is_retried_after_its_retry_after():
    with rate_limited_server(refusals=1, retry_after="1") as (url, arrivals):
        reply = Transport(url, max_retries=2, backoff=0.05).post("/completions", {"prompt": "x"})
    assert reply == {"ok": 2}, "the POST was sent again and its second answer returned"
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.95, "Retry-After: 1 is waited out"


def test_retry_after_is_capped_at_max_backoff():
    with rate_limited_server(refusals=1, retry_after="3600") as (url, arrivals):
        reply = Transport(url, max_retries=2, backoff=0.05, max_backoff=0.2).post("/completions", {})
    assert reply == {"ok": 2}
    assert arrivals[1] - arrivals[0] < 5, "an hour's Retry-After waits max_backoff instead"


def test_a_server_that_keeps_refusing_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("EVALKIT_TRANSPORT_TEST_KEY", "sk-transport-secret")
    with rate_limited_server(refusals=10, retry_after="0") as (url, arrivals):
        transport = Transport(url, api_key_env="EVALKIT_TRANSPORT_TEST_KEY", max_retries=2, backoff=0.01)
        with pytest.raises(EvalkitError) as error:
            transport.post("/completions", {})
    message = str(error.value)
    assert len(arrivals) == 3
    assert message.startswith(f"{url}/completions answered 429 after 3 attempts") and "\n" not in message
    assert "sk-transport-secret" not in message + repr(transport.__dict__)


def test_a_server_that_never_answers_times_out_in_one_line():
    """requests reports a read timeout whose retries ran out as a ConnectionError; it must still read 'timed out'."""
    calls: list[int] = []

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(1)
            time.sleep(1.0)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EvalkitError, match=r"/v1/completions timed out after 2 attempts"):
            Transport(f"http://127.0.0.1:{server.server_port}/v1", timeout=0.2, max_retries=1, backoff=0.01).post(
                "/completions", {}
            )
    finally:
        server.shutdown()
        server.server_close()
    assert len(calls) == 2, "the timed-out POST was sent again"
