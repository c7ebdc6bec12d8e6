"""The check reporter waits quietly for a webserver that is not up yet, then delivers what is pending."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from libs.common.events import CheckResult
from libs.common.redis_server import free_port
from libs.common.testing import wait_for
from services.health.dagster_checks import DagsterCheckReporter


class Webserver:
    def __init__(self, port: int) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((self.path, body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_results_wait_quietly_for_a_webserver_that_starts_later() -> None:
    port = free_port()
    reporter = DagsterCheckReporter(f"http://127.0.0.1:{port}").start()
    result = CheckResult(check="freshness", outcome="warn", reason="late")
    with structlog.testing.capture_logs() as logs:
        reporter.submit("raw/orders", [result])
        wait_for(lambda: reporter._thread.is_alive(), what="reporter thread")
        threading.Event().wait(3.0)  # longer than the 3 attempts of a post (0.5 s + 1 s backoff)
        server = Webserver(port)
        try:
            wait_for(
                lambda: len(server.posts) == 1, what="the pending result posted once the webserver answers"
            )
        finally:
            reporter.stop()
            server.server.shutdown()
    assert server.posts[0][0] == "/report_asset_check/raw/orders"
    assert server.posts[0][1]["check_name"] == "freshness"
    assert not [e for e in logs if e["log_level"] in ("warning", "error")], logs
