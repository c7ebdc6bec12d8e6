"""Container health probe for every role of the image (the Dockerfile's HEALTHCHECK; no curl in the image).

Usage: python healthcheck.py [URL]
- URL given, or AMS_HEALTHCHECK_URL set: GET it; healthy on a 2xx answer.
- Otherwise the role is read from the container's processes: a worker (`python -m services.<name>`) is
  probed on /healthz of its port (AMS_SERVICES__<NAME>__PORT, default 9101-9103), the webserver on
  /server_info, the code location with `dagster api grpc-health-check`, the daemon with
  `dagster-daemon liveness-check`, a Celery worker with `celery inspect ping` of its own node.
Exit 0 healthy, 1 unhealthy or nothing to probe: Docker reserves exit code 2 (`HEALTHCHECK` docs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

WORKER_PORTS = {"discovery": 9101, "health": 9102, "alerts": 9103}


def _option(args: list[str], *names: str, default: str) -> str:
    for i, arg in enumerate(args[:-1]):
        if arg in names:
            return args[i + 1]
    return default


def probe_for(cmdlines: Iterable[list[str]], env: Mapping[str, str]) -> str | list[str] | None:
    """What to probe for the processes `cmdlines`: a URL, a command, or None when no role is recognised."""
    for args in cmdlines:
        names = [Path(a).name for a in args]
        for i, arg in enumerate(args[:-1]):
            if arg == "-m" and args[i + 1].startswith("services."):
                worker = args[i + 1].split(".")[1]
                port = env.get(f"AMS_SERVICES__{worker.upper()}__PORT", str(WORKER_PORTS.get(worker, 0)))
                return f"http://127.0.0.1:{port}/healthz"
        if "dagster-webserver" in names or "dagster_webserver" in args:
            return f"http://127.0.0.1:{_option(args, '-p', '--port', default='3000')}/server_info"
        serves_grpc = "code-server" in args or ("api" in args and "grpc" in args)
        if serves_grpc and ("-p" in args or "--port" in args):  # not the socket-bound child of code-server
            return [
                "dagster",
                "api",
                "grpc-health-check",
                "-p",
                _option(args, "-p", "--port", default="4000"),
            ]
        if "dagster-daemon" in names and "run" in args:
            return ["dagster-daemon", "liveness-check"]
        if (
            "celery" in names and "worker" in args and "-n" in args
        ):  # the child of `dagster-celery worker start`
            node = _option(args, "-n", default="").replace("%h", env.get("HOSTNAME") or socket.gethostname())
            broker = env.get("DAGSTER_CELERY_BROKER_URL", "")
            app = _option(args, "-A", "--app", default="dagster_celery.app")
            return ["celery", "-A", app, "-b", broker, "inspect", "ping", "-d", node, "--timeout", "10"]
    return None


def _cmdlines() -> list[list[str]]:
    found = []
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):  # parents before children
        try:
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if raw and proc.name != str(os.getpid()):
            found.append([part.decode(errors="replace") for part in raw.split(b"\0") if part])
    return found


def check_url(url: str, timeout: float) -> int:
    """0 when `url` answers 2xx, else 1 (with the reason on stderr)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        print(
            f"healthcheck: {url} answered {exc.code}: {exc.read(300).decode(errors='replace')}",
            file=sys.stderr,
        )
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


def main(argv: list[str]) -> int:
    """Probe the URL argument, AMS_HEALTHCHECK_URL, or what the container runs."""
    timeout = float(os.environ.get("AMS_HEALTHCHECK_TIMEOUT_S", "4"))
    target: str | list[str] | None = (
        argv[1] if len(argv) > 1 else os.environ.get("AMS_HEALTHCHECK_URL") or None
    )
    if target is None:
        target = probe_for(_cmdlines(), os.environ)
    if target is None:
        print("healthcheck: no URL given and no known role running", file=sys.stderr)
        return 1
    if isinstance(target, list):
        return 0 if subprocess.run(target, timeout=max(timeout, 30), check=False).returncode == 0 else 1
    if not target.startswith(("http://", "https://")):
        print(f"healthcheck: not an http(s) URL: {target!r}", file=sys.stderr)
        return 1
    return check_url(target, timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
