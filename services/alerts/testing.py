"""A real HTTP webhook receiver on loopback that records (and can verify) what it gets.

For tests, end-to-end runs and benchmarks: `RecordingReceiver().start()` listens on a free port; each
request is answered by the next scripted `Reply` (then 200), so a test can make a receiver fail, time out,
or throttle for a while and recover.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, headers, and an optional delay before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes = b"{}"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() when the body was read
    status: int  # what the receiver answered

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restarted receiver binds its old port at once
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the fault tests do that) is expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RecordingReceiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST."""

    def __init__(self, port: int = 0, *, script: list[Reply] | None = None) -> None:
        self.requested_port = port
        self.script: list[Reply] = list(script or [])
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.on_request: Callable[[Received], None] | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> RecordingReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with owner._cond:
                    reply = owner.script.pop(0) if owner.script else Reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                received = Received(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.time(),
                    status=reply.status,
                )
                # Recorded before answering, so a client that got the answer finds the request here.
                with owner._cond:
                    owner.requests.append(received)
                    owner._cond.notify_all()
                if owner.on_request is not None:
                    owner.on_request(received)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (timed out)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = _Server(("127.0.0.1", self.requested_port), Handler)
        self.requested_port = self.port  # a restart comes back on the same port
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.05), name="recording-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> RecordingReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def accepted(self) -> list[Received]:
        """Requests answered with 2xx."""
        with self._cond:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 20.0
    ) -> list[Received]:
        """Block until `predicate(requests)` holds; AssertionError with what arrived at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(list(self.requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"receiver: condition not met in {timeout_s}s; got {len(self.requests)} requests: "
                        + "; ".join(r.body[:200].decode("utf-8", "replace") for r in self.requests[-5:])
                    )
                self._cond.wait(remaining)
            return list(self.requests)

    @staticmethod
    def verify(received: Received, secret: str) -> Any:
        """The JSON payload of `received` after checking its Standard Webhooks signature (raises if bad)."""
        return Webhook(secret).verify(received.body, received.headers)
