"""Start docker-compose services as local processes: the compose file's own commands, environment and
healthchecks, mapped to this machine (service hosts → 127.0.0.1, container ports → free ports, container
paths → the repository, bind-mount sources and temporary directories for named volumes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploytools import ROOT, mounts

from libs.common.redis_server import free_port

OUR_IMAGE = "dagster-asset-management"
# Images that are not ours: the Debian command standing in for the image's entrypoint, and the arguments
# that restate what the image sets implicitly (Redis listens on 6379 in its WORKDIR /data).
STAND_INS: dict[str, tuple[list[str], list[str]]] = {
    "prom/prometheus": (["prometheus"], []),
    "redis": ([], ["--port", "6379", "--bind", "0.0.0.0", "--dir", "/data"]),
}


def image_entrypoint() -> list[str]:
    """Our image's ENTRYPOINT without tini (PID 1 of a container, not our code; nothing to reap here)."""
    match = re.search(r"^ENTRYPOINT (\[.*\])$", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    entry = json.loads(match.group(1))
    if entry[:2] == ["/usr/bin/tini", "--"]:
        entry = entry[2:]
    return entry


def image_of(service: dict[str, Any]) -> str:
    return str(service.get("image", "")).rsplit(":", 1)[0]


def is_ours(service: dict[str, Any]) -> bool:
    return image_of(service).endswith(OUR_IMAGE)


def container_ports(compose: dict[str, Any]) -> set[int]:
    """Every port a container of the file listens on or is reached at."""
    ports: set[int] = set()
    text = json.dumps(compose)
    ports |= {int(p) for p in re.findall(r"(?<![\d.])[a-z0-9.-]+:(\d{4,5})\b", text)}
    for service in compose["services"].values():
        ports |= {int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1])
                  for p in service.get("ports", [])}
        ports |= {int(v) for k, v in (service.get("environment") or {}).items() if k.endswith("_PORT") and str(v).isdigit()}
        command = service.get("command") or []
        ports |= {int(command[i + 1]) for i, tok in enumerate(command[:-1]) if tok == "-p" and command[i + 1].isdigit()}
    return ports


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    healthcheck: list[str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@dataclass
class Stack:
    """The services of one compose file, started on demand in depends_on order."""

    compose: dict[str, Any]
    workdir: Path
    provided: dict[str, int]  # services provided by the test (e.g. Redis from the fixture) → local port
    extra_env: dict[str, str] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    port_map: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        services = self.compose["services"]
        for port in sorted(container_ports(self.compose)):
            self.port_map[port] = free_port()
        for name, port in self.provided.items():
            for container_port in self._listen_ports(services[name]):
                self.port_map[container_port] = port

    @staticmethod
    def _listen_ports(service: dict[str, Any]) -> set[int]:
        text = json.dumps(service.get("healthcheck", {}).get("test", []))
        return {int(p) for p in re.findall(r"(?:-p\", \"|:)(\d{4,5})\b", text)}

    # -- mapping --------------------------------------------------------------------------------------------

    def paths(self, name: str) -> list[tuple[str, str]]:
        service = self.compose["services"][name]
        private_tmp = self.workdir / "tmp" / name  # each container has a /tmp of its own
        private_tmp.mkdir(parents=True, exist_ok=True)
        mapping = [("/tmp", str(private_tmp))]
        if is_ours(service):
            mapping.append(("/app", str(ROOT)))
        for kind, source, target in mounts(service, self.compose.get("volumes") or {}):
            if kind == "bind":
                mapping.append((target, source))
            else:
                local = self.workdir / "volumes" / source
                local.mkdir(parents=True, exist_ok=True)
                mapping.append((target, str(local)))
        return sorted(mapping, key=lambda pair: -len(pair[0]))

    def localize(self, name: str, value: str) -> str:
        """One command token, environment value or healthcheck string, as seen from this machine."""
        value = value.replace("$$", "$")  # compose's escape for a literal $, undone when the container starts
        paths = dict(self.paths(name))  # one pass: a replacement is never mapped again
        targets = "|".join(re.escape(t) for t in sorted(paths, key=len, reverse=True))
        value = re.sub(rf"(?<![\w/.-])({targets})(?=/|$|\s|\")", lambda m: paths[m.group(1)], value)
        hosts = "|".join(re.escape(s) for s in sorted(self.compose["services"], key=len, reverse=True))
        value = re.sub(rf"(?<=//)({hosts})(?=:)|(?<=@)({hosts})(?=:)|^({hosts})$", "127.0.0.1", value)
        value = value.replace("0.0.0.0", "127.0.0.1")
        # a known container port: after "host:", "=", or as a word of its own ("-p 6379", "4000")
        return re.sub(r"(?:(?<=[\s:=])|^)(\d{4,5})(?=$|[\s/\"'])",
                      lambda m: str(self.port_map.get(int(m.group(1)), m.group(1))), value)

    def command(self, name: str) -> list[str]:
        service = self.compose["services"][name]
        command = [self.localize(name, tok) for tok in service.get("command") or []]
        if service.get("entrypoint"):
            return [self.localize(name, tok) for tok in service["entrypoint"]] + command
        if is_ours(service):
            return [self.localize(name, tok) for tok in image_entrypoint()] + command
        image = image_of(service)
        if image not in STAND_INS:
            raise LookupError(f"{name}: no local stand-in for image {image}")
        entrypoint, implicit = STAND_INS[image]
        return entrypoint + command + [self.localize(name, tok) for tok in implicit]

    def environment(self, name: str) -> dict[str, str]:
        service = self.compose["services"][name]
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.workdir / "home"),
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        }
        for key, value in (service.get("environment") or {}).items():
            env[key] = self.localize(name, "" if value is None else str(value))
        if is_ours(service):
            env.update(self.extra_env)
        return env

    def healthcheck(self, name: str) -> list[str]:
        test = self.compose["services"][name]["healthcheck"]["test"]
        if isinstance(test, str):
            return ["sh", "-c", self.localize(name, test)]
        if test[0] == "CMD-SHELL":
            return ["sh", "-c", self.localize(name, test[1])]
        assert test[0] == "CMD", test
        return [self.localize(name, tok) for tok in test[1:]]

    # -- lifecycle ------------------------------------------------------------------------------------------

    def up(self, name: str, timeout_s: float = 180.0) -> Running:
        """Start `name` after its depends_on services are healthy; return once its healthcheck passes."""
        if name in self.running:
            return self.running[name]
        for dep in self.compose["services"][name].get("depends_on") or {}:
            if dep not in self.provided:
                self.up(dep, timeout_s)
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        env = self.environment(name)
        process = subprocess.Popen(self.command(name), env=env, cwd=self.workdir, stdout=log.open("wb"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        running = Running(name, process, log, env, self.healthcheck(name))
        self.running[name] = running
        self.wait_healthy(running, timeout_s)
        return running

    def check(self, running: Running) -> subprocess.CompletedProcess[str]:
        return subprocess.run(running.healthcheck, env=running.env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=60)

    def wait_healthy(self, running: Running, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: subprocess.CompletedProcess[str] | None = None
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise AssertionError(f"{running.name} exited with {running.process.returncode}:\n{running.output()}")
            last = self.check(running)
            if last.returncode == 0:
                return
            time.sleep(0.5)
        detail = f"{last.stdout}{last.stderr}" if last else ""
        raise AssertionError(f"{running.name}: healthcheck {running.healthcheck} still failing after {timeout_s:.0f} s:"
                             f"\n{detail}\n--- log ---\n{running.output()}")

    def down(self) -> None:
        """SIGTERM every process group (reverse start order), then SIGKILL what is left."""
        for running in reversed(list(self.running.values())):
            if running.process.poll() is None:
                os.killpg(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for running in reversed(list(self.running.values())):
            try:
                running.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(timeout=10)
        self.running.clear()
