"""Build the project's image without a Docker engine: podman (with runc) on a Debian base made here.

- base: `debootstrap --variant=minbase bookworm` from this machine's Debian mirror, `podman import`ed;
- python: a stand-in for the official `python:3.11-slim-bookworm` on that base (Debian's Python 3.11),
  trusting this machine's CA bundle, so pip and apt work behind a proxy that has its own CA;
- the project: its own Dockerfile, `PYTHON_IMAGE` = the stand-in, `INSTALL_MSODBC=0` (Microsoft's repository
  is unreachable here), built with `--format docker` (the OCI format drops HEALTHCHECK).

The two base images are tagged with a hash of their recipe and kept in podman's storage, so a repeated run
builds only what changed (podman's layer cache does the rest for the project's image).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path

from deploytools import ROOT, run, tool

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ams-image-test"
SUITE = "bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE = "localhost/dagster-asset-management:image-test"
# Two defaults of podman fail in this sandbox: ulimits above the hard limit, and crun on a mixed cgroup v1/v2
# hierarchy. A config file passed by environment fixes both without touching /etc.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
"""
PYTHON_STANDIN = """\
FROM {base}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python-is-python3 \\
      ca-certificates netbase tzdata \\
 && rm -rf /var/lib/apt/lists/*
# This machine's CAs (its outbound HTTPS may go through a proxy with its own CA), kept by later
# update-ca-certificates runs of the project's apt-get installs.
COPY host-ca-bundle.crt /usr/local/share/ca-certificates/host-ca-bundle.crt
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
"""


def podman_env() -> dict[str, str]:
    """The environment for podman commands: this process's, with CONTAINERS_CONF pointing at our file."""
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `podman args...`, failing with its output when `check` and it exits non-zero."""
    return run([tool("podman"), *args], timeout=timeout, env=podman_env(), check=check)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 `URIs:` or a one-line `deb` entry)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for uri in re.findall(r"^URIs:\s*(\S+)", text, flags=re.M) + re.findall(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, flags=re.M
        ):
            if "security" not in uri and uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base() -> str:
    """`localhost/ams-test-debian:bookworm-<recipe hash>`, made with debootstrap when missing."""
    mirror = debian_mirror()
    name = f"localhost/ams-test-debian:{SUITE}-{_key('minbase', SUITE, mirror)}"
    if image_exists(name):
        return name
    debootstrap = tool("debootstrap")
    with tempfile.TemporaryDirectory(prefix="ams-rootfs-") as rootfs:
        run([debootstrap, "--variant=minbase", SUITE, rootfs, mirror], timeout=900)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [tool("podman"), "import", "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=podman_env(),
            timeout=600,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
    return name


def ensure_python(base: str) -> str:
    """`localhost/ams-test-python:3.11-<recipe hash>`: the stand-in for the official slim image."""
    recipe = PYTHON_STANDIN.format(base=base)
    name = f"localhost/ams-test-python:3.11-{_key(recipe, CA_BUNDLE.read_bytes())}"
    if image_exists(name):
        return name
    with tempfile.TemporaryDirectory(prefix="ams-python-") as context:
        (Path(context) / "Containerfile").write_text(recipe)
        shutil.copy(CA_BUNDLE, Path(context) / "host-ca-bundle.crt")
        podman("build", "--network", "host", "--format", "docker", "-t", name, context, timeout=900)
    return name


def build_project_image() -> str:
    """The project's own Dockerfile built on the stand-in; podman's layer cache makes a rebuild quick."""
    python = ensure_python(ensure_base())
    podman(
        "build",
        "--network",
        "host",
        "--format",
        "docker",
        "--build-arg",
        f"PYTHON_IMAGE={python}",
        "--build-arg",
        "INSTALL_MSODBC=0",
        "-t",
        IMAGE,
        "-f",
        str(ROOT / "Dockerfile"),
        str(ROOT),
        timeout=1800,
    )
    return IMAGE


_build: Future[str] | None = None


def start_build() -> None:
    """Build the project image in the background (at collection, so it overlaps the rest of the suite)."""
    global _build
    if _build is not None:
        return
    future: Future[str] = Future()

    def build() -> None:
        try:
            future.set_result(build_project_image())
        except BaseException as exc:  # a skip for a missing tool too: `project_image` raises it in the test
            future.set_exception(exc)

    # A daemon thread, not an executor: a session that stops early must not wait for the build.
    threading.Thread(target=build, name="image-build", daemon=True).start()
    _build = future


def project_image() -> str:
    """The project image: the background build's result, or built now when none was started."""
    return _build.result() if _build is not None else build_project_image()
