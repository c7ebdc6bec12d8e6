"""Start docker-compose services as local processes: the compose file's own commands, environment and
healthchecks, mapped to this machine (service hosts → 127.0.0.1, container ports → free ports, container
paths → the repository, bind-mount sources and temporary directories for named volumes, secrets → their
files).

With `image` set, the services of our image run in that image instead (podman, host network): the same
command, environment and healthcheck (`podman healthcheck run`), volumes and secrets mounted where compose
mounts them; only hosts and ports are mapped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from deploytools import ROOT, mounts, wait_for

from libs.common.redis_server import free_port

OUR_IMAGE = "dagster-asset-management"
# Images that are not ours: the Debian command standing in for the image's entrypoint, and the arguments
# that restate what the image sets implicitly (Redis listens on 6379 in its WORKDIR /data).
STAND_INS: dict[str, tuple[list[str], list[str]]] = {
    "prom/prometheus": (["prometheus"], []),
    "redis": ([], ["--port", "6379", "--bind", "0.0.0.0", "--dir", "/data"]),
    "prom/alertmanager": (["prometheus-alertmanager"], []),
}
APP_UID = 10001  # the image's user (Dockerfile APP_UID): owns the directories mounted into its containers


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
        ports |= {
            int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1].split("/")[0])
            for p in service.get("ports", [])
        }
        ports |= {
            int(v)
            for k, v in (service.get("environment") or {}).items()
            if k.endswith("_PORT") and str(v).isdigit()
        }
        command = service.get("command") or []
        ports |= {
            int(command[i + 1])
            for i, tok in enumerate(command[:-1])
            if tok == "-p" and command[i + 1].isdigit()
        }
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
    image: str | None = None  # run our services in this image (podman) instead of as local processes
    podman_env: dict[str, str] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    port_map: dict[int, int] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)  # service -> container name

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

    def in_container(self, name: str) -> bool:
        return self.image is not None and is_ours(self.compose["services"][name])

    def secrets(self, name: str) -> list[tuple[str, str]]:
        """(file on this machine, path in the container) of each secret the service mounts."""
        files = {key: value["file"] for key, value in (self.compose.get("secrets") or {}).items()}
        found = []
        for secret in self.compose["services"][name].get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            target = source if isinstance(secret, str) else secret.get("target") or source
            found.append((files[source], target if target.startswith("/") else f"/run/secrets/{target}"))
        return found

    def volumes(self, name: str) -> list[tuple[str, str]]:
        """(directory or file on this machine, path in the container) of each volume of the service."""
        service = self.compose["services"][name]
        found = []
        for kind, source, target in mounts(service, self.compose.get("volumes") or {}):
            if kind == "bind":
                found.append((source, target))
            else:
                local = self.workdir / "volumes" / source
                if not local.exists():
                    local.mkdir(parents=True)
                    if self.image is not None and os.geteuid() == 0:
                        os.chown(local, APP_UID, APP_UID)
                found.append((str(local), target))
        return found

    def paths(self, name: str) -> list[tuple[str, str]]:
        if self.in_container(name):
            return []  # the container sees its own paths; only hosts and ports are mapped
        service = self.compose["services"][name]
        private_tmp = self.workdir / "tmp" / name  # each container has a /tmp of its own
        private_tmp.mkdir(parents=True, exist_ok=True)
        mapping = [("/tmp", str(private_tmp))]
        if is_ours(service):
            mapping.append(("/app", str(ROOT)))
        mapping += [(target, source) for source, target in self.volumes(name) + self.secrets(name)]
        return sorted(mapping, key=lambda pair: -len(pair[0]))

    def localize(self, name: str, value: str, *, env_value: bool = False) -> str:
        """One command token, environment value or healthcheck string, as seen from this machine.

        A bare service name is a host only in an environment value (`DAGSTER_GRPC_HOST: code-location`); in a
        command it may be a name of another kind (a Celery node called after its service)."""
        value = value.replace("$$", "$")  # compose's escape for a literal $, undone when the container starts
        paths = dict(self.paths(name))  # one pass: a replacement is never mapped again
        targets = "|".join(re.escape(t) for t in sorted(paths, key=len, reverse=True))
        if targets:
            value = re.sub(rf"(?<![\w/.-])({targets})(?=/|$|\s|\"|\))", lambda m: paths[m.group(1)], value)
        hosts = "|".join(re.escape(s) for s in sorted(self.compose["services"], key=len, reverse=True))
        bare = rf"|^({hosts})$" if env_value else ""
        value = re.sub(rf"(?<=//)({hosts})(?=:)|(?<=@)({hosts})(?=:){bare}", "127.0.0.1", value)
        value = value.replace("0.0.0.0", "127.0.0.1")
        # a known container port: after "host:", "=", or as a word of its own ("-p 6379", "4000")
        return re.sub(
            r"(?:(?<=[\s:=])|^)(\d{4,5})(?=$|[\s/\"'])",
            lambda m: str(self.port_map.get(int(m.group(1)), m.group(1))),
            value,
        )

    def command(self, name: str) -> list[str]:
        service = self.compose["services"][name]
        command = [self.localize(name, tok) for tok in service.get("command") or []]
        if self.in_container(name):
            return self.podman_run(name, command)
        if service.get("entrypoint"):
            return [self.localize(name, tok) for tok in service["entrypoint"]] + command
        if is_ours(service):
            return [self.localize(name, tok) for tok in image_entrypoint()] + command
        image = image_of(service)
        if image not in STAND_INS:
            raise LookupError(f"{name}: no local stand-in for image {image}")
        entrypoint, implicit = STAND_INS[image]
        return entrypoint + command + [self.localize(name, tok) for tok in implicit]

    def podman_run(self, name: str, command: list[str]) -> list[str]:
        """`podman run` of the service in our image: its environment, volumes, secrets and healthcheck."""
        assert self.image is not None
        container = self.containers.setdefault(name, f"ams-it-{uuid.uuid4().hex[:8]}-{name}")
        args = ["podman", "run", "--rm", "--name", container, "--network", "host", "--hostname", name]
        service = self.compose["services"][name]
        env = {
            key: self.localize(name, "" if value is None else str(value), env_value=True)
            for key, value in (service.get("environment") or {}).items()
        }
        for key, value in {**env, **self.extra_env}.items():
            args += ["--env", f"{key}={value}"]
        for source, target in self.volumes(name):
            args += ["--volume", f"{source}:{target}"]
        for source, target in self.secrets(name):
            args += ["--volume", f"{source}:{target}:ro"]
        test = service["healthcheck"]["test"]
        health = (
            json.dumps([self.localize(name, t) for t in test[1:]])
            if test[0] == "CMD"
            else self.localize(name, test[1])
        )
        args += ["--health-cmd", health, "--health-interval", "disable"]
        return [*args, self.image, *command]

    def environment(self, name: str) -> dict[str, str]:
        if self.in_container(name):
            return dict(self.podman_env)
        service = self.compose["services"][name]
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.workdir / "home"),
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        }
        for key, value in (service.get("environment") or {}).items():
            env[key] = self.localize(name, "" if value is None else str(value), env_value=True)
        if is_ours(service):
            env.update(self.extra_env)
        return env

    def healthcheck(self, name: str) -> list[str]:
        if self.in_container(name):
            return ["podman", "healthcheck", "run", self.containers[name]]
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
        for dep in self.dependencies(name):
            self.up(dep, timeout_s)
        running = self.start(name)
        self.wait_healthy(running, timeout_s)
        return running

    def up_all(self, names: list[str], timeout_s: float = 300.0) -> None:
        """Start `names` (and their dependencies) in waves: everything whose dependencies are healthy starts
        at once, then the wave is waited for. Same order as compose, in far less time than one by one."""

        def depth(name: str) -> int:
            return 1 + max((depth(d) for d in self.dependencies(name)), default=-1)

        wanted: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo += self.dependencies(name)
        for level in sorted({depth(n) for n in wanted}):
            wave = [self.start(n) for n in sorted(wanted) if depth(n) == level and n not in self.running]
            for running in wave:
                self.wait_healthy(running, timeout_s)

    def dependencies(self, name: str) -> list[str]:
        return [d for d in self.compose["services"][name].get("depends_on") or {} if d not in self.provided]

    def start(self, name: str) -> Running:
        """Launch `name` without waiting for it."""
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        env = self.environment(name)
        process = subprocess.Popen(
            self.command(name),
            env=env,
            cwd=self.workdir,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        running = Running(name, process, log, env, self.healthcheck(name))
        self.running[name] = running
        return running

    def wait_code_location_loaded(self, location: str = "orchestrator", timeout_s: float = 120) -> None:
        """The webserver reached the code location's gRPC server through the workspace file's variables."""
        url = f"http://127.0.0.1:{self.port_map[3000]}/graphql"
        query = (
            "{ workspaceOrError { ... on Workspace { locationEntries "
            "{ name locationOrLoadError { __typename } } } } }"
        )

        def loaded() -> bool:
            entries = httpx.post(url, json={"query": query}, timeout=10).json()["data"]["workspaceOrError"][
                "locationEntries"
            ]
            return [(e["name"], (e["locationOrLoadError"] or {}).get("__typename")) for e in entries] == [
                (location, "RepositoryLocation")
            ]

        wait_for(
            loaded,
            timeout_s=timeout_s,
            what="code location loaded in the webserver",
            diagnose=lambda: (
                httpx.post(
                    url,
                    json={"query": query.replace("__typename", "__typename ... on PythonError { message }")},
                    timeout=10,
                ).text
            ),
        )

    def check(self, running: Running) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            running.healthcheck, env=running.env, cwd=self.workdir, capture_output=True, text=True, timeout=60
        )

    def wait_healthy(self, running: Running, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: subprocess.CompletedProcess[str] | None = None
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise AssertionError(
                    f"{running.name} exited with {running.process.returncode}:\n{running.output()}"
                )
            last = self.check(running)
            if last.returncode == 0:
                return
            time.sleep(0.5)
        detail = f"{last.stdout}{last.stderr}" if last else ""
        raise AssertionError(
            f"{running.name}: healthcheck {running.healthcheck} still failing after {timeout_s:.0f} s:"
            f"\n{detail}\n--- log ---\n{running.output()}"
        )

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
        for container in self.containers.values():
            subprocess.run(
                ["podman", "rm", "-f", "-t", "5", container],
                env=self.podman_env,
                capture_output=True,
                timeout=60,
                check=False,
            )
        self.containers.clear()
