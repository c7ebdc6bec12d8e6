"""The service surface every worker exposes: `/metrics`, `/healthz` (alive) and `/readyz` (dependencies)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

# A readiness check returns None when fine, or a short reason (never a secret) when not.
ReadinessCheck = Callable[[], str | None]


class ServiceServer:
    """A small threaded HTTP server in the background; `port=0` picks a free port."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        checks: dict[str, ReadinessCheck],
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.checks = checks
        self.alive = alive
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server.alive()
                    self._json(200 if ok else 503, {"status": "ok" if ok else "stalled"})
                elif path == "/readyz":
                    results = server.readiness()
                    ok = all(v == "ok" for v in results.values())
                    self._json(
                        200 if ok else 503, {"status": "ready" if ok else "not ready", "checks": results}
                    )
                else:
                    self._json(404, {"error": "not found"})

            def _json(self, code: int, body: dict[str, Any]) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds would drown the logs

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="service-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._httpd.server_address[1])

    def readiness(self) -> dict[str, str]:
        """Run every readiness check: name → "ok" or the reason it failed."""
        results: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            results[name] = problem or "ok"
        return results

    def start(self) -> ServiceServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
