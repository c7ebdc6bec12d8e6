"""Discovery from a running Dagster: every code location's asset graph read from the webserver's GraphQL API.

A team's workspace holds code locations this project never imports (other packages, other Python
environments, gRPC servers). The webserver already loaded them all, so discovery asks it:

* `workspaceOrError` lists the code locations with their load status, `updatedTimestamp` and `versionKey`
  (both change when a location is reloaded). This is the cheap poll: one small query.
* Only a location whose (updatedTimestamp, versionKey) changed since the previous poll is read again, one
  `repositoryOrError { assetNodes }` query per repository, and turned into a `CatalogSnapshotData` with the
  same fields the in-process scan gives (key, group, description, owners, tags, kinds, metadata, code
  version, partitioning, freshness, checks, upstream/downstream, code location, the team's job names and
  the repository).
* A location in error (or a repository that cannot be read) yields problems and no assets: the registry
  records the problems and retires nothing, as for a module that fails to import.

Failures of the webserver itself (connection refused, timeouts, HTTP errors, GraphQL `errors`) raise
`DagsterUnavailable` with a one-line message naming the URL; the caller keeps the registry as it is.
No Dagster import: the worker talks HTTP only (httpx).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import JsonValue

from libs.common.events import (
    AssetSpecData,
    CatalogSnapshotData,
    Column,
    snapshot_fingerprint,
    user_job_names,
)
from libs.common.settings import PROJECT_ROOT

USER_AGENT = "dagster-asset-management-discovery/1"
KIND_TAG_PREFIX = "dagster/kind/"
COMPUTE_KIND_TAG = "dagster/compute_kind"
CODE_REFERENCES_LABEL = "dagster/code_references"
MAX_TEXT = 4000

WORKSPACE_QUERY = """
query AmsWorkspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        updatedTimestamp
        versionKey
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

ASSET_NODES_QUERY = """
query AmsAssetNodes($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository {
      name
      location { name }
      assetNodes {
        assetKey { path }
        groupName
        description
        isMaterializable
        isObservable
        isAutoCreatedStub
        owners {
          __typename
          ... on UserAssetOwner { email }
          ... on TeamAssetOwner { team }
        }
        tags { key value }
        kinds
        opVersion
        jobNames
        partitionDefinition { description }
        freshnessPolicy { maximumLagMinutes cronSchedule cronScheduleTimezone }
        internalFreshnessPolicy {
          __typename
          ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds }
          ... on CronFreshnessPolicy { deadlineCron lowerBoundDeltaSeconds timezone }
        }
        automationCondition { label expandedLabel }
        assetChecksOrError {
          __typename
          ... on AssetChecks { checks { name } }
        }
        dependencyKeys { path }
        dependedByKeys { path }
        metadataEntries {
          __typename
          label
          ... on TextMetadataEntry { text }
          ... on MarkdownMetadataEntry { mdStr }
          ... on UrlMetadataEntry { url }
          ... on PathMetadataEntry { path }
          ... on NotebookMetadataEntry { path }
          ... on JsonMetadataEntry { jsonString }
          ... on IntMetadataEntry { intValue intRepr }
          ... on FloatMetadataEntry { floatValue floatRepr }
          ... on BoolMetadataEntry { boolValue }
          ... on TimestampMetadataEntry { timestamp }
          ... on PoolMetadataEntry { pool }
          ... on PythonArtifactMetadataEntry { module name }
          ... on AssetMetadataEntry { assetKey { path } }
          ... on JobMetadataEntry { jobName locationName }
          ... on TableSchemaMetadataEntry { schema { columns { name type description } } }
          ... on CodeReferencesMetadataEntry {
            codeReferences { __typename ... on LocalFileCodeReference { filePath lineNumber } }
          }
        }
      }
    }
    ... on PythonError { message }
    ... on RepositoryNotFoundError { message }
  }
}
"""


class DagsterUnavailable(RuntimeError):
    """The webserver did not answer usefully (unreachable, timeout, HTTP error, GraphQL errors)."""


@dataclass(frozen=True)
class LocationEntry:
    """One code location of the workspace as the webserver reports it."""

    name: str
    status: str  # LOADING, LOADED
    updated: float
    version_key: str
    repositories: tuple[str, ...] = ()
    error: str | None = None

    @property
    def version(self) -> tuple[float, str]:
        """What changes when the location is reloaded."""
        return (self.updated, self.version_key)


@dataclass
class LocationRead:
    """A location's snapshot as read through GraphQL (problems when it or a repository is in error)."""

    entry: LocationEntry
    snapshot: CatalogSnapshotData
    duration_s: float = 0.0


class WebserverClient:
    """POSTs GraphQL queries to `<url>/graphql` with a timeout and a few retries on transient errors."""

    def __init__(
        self, url: str, *, timeout_s: float = 5.0, retries: int = 3, client: httpx.Client | None = None
    ):
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/graphql"
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self._client = client or httpx.Client(timeout=timeout_s, headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self._client.close()

    def query(self, text: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a GraphQL answer; DagsterUnavailable when there is none (message names the URL)."""
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 2.0))
            try:
                response = self._client.post(
                    self.endpoint, json={"query": text, "variables": dict(variables or {})}
                )
            except httpx.TimeoutException as exc:
                last = f"no answer within {self.timeout_s:g} s ({type(exc).__name__})"
                continue
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            try:
                body = response.json()
            except ValueError:
                body = None
            errors = body.get("errors") if isinstance(body, dict) else None
            if response.status_code != 200 and not errors:
                raise DagsterUnavailable(
                    f"Dagster webserver {self.endpoint} answered HTTP {response.status_code}: "
                    f"{response.text[:300]}"
                )
            if body is None:
                raise DagsterUnavailable(
                    f"Dagster webserver {self.endpoint} answered something that is not JSON: "
                    f"{response.text[:200]!r}"
                )
            if errors:
                messages = "; ".join(str(e.get("message", e))[:300] for e in errors[:3])
                raise DagsterUnavailable(
                    f"Dagster webserver {self.endpoint} answered GraphQL errors: {messages}"
                )
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict):
                raise DagsterUnavailable(f"Dagster webserver {self.endpoint} answered without data")
            return data
        raise DagsterUnavailable(
            f"cannot reach the Dagster webserver at {self.url} after {self.retries} attempts: {last}"
        )

    def workspace(self) -> list[LocationEntry]:
        """Every code location of the workspace, with its load status, version and repositories or error."""
        data = self.query(WORKSPACE_QUERY)["workspaceOrError"]
        if data.get("__typename") != "Workspace":
            raise DagsterUnavailable(
                f"Dagster webserver {self.url} cannot list its workspace: "
                f"{str(data.get('message', data.get('__typename')))[:300]}"
            )
        out = []
        for raw in data["locationEntries"]:
            loaded = raw.get("locationOrLoadError") or {}
            kind = loaded.get("__typename")
            error = _first_lines(str(loaded.get("message", ""))) if kind == "PythonError" else None
            repositories = (
                tuple(r["name"] for r in loaded.get("repositories", []))
                if kind == "RepositoryLocation"
                else ()
            )
            out.append(
                LocationEntry(
                    name=raw["name"],
                    status=str(raw["loadStatus"]),
                    updated=float(raw["updatedTimestamp"]),
                    version_key=str(raw["versionKey"]),
                    repositories=repositories,
                    error=error,
                )
            )
        return out

    def read_location(self, entry: LocationEntry) -> LocationRead:
        """The location's snapshot: every repository's asset nodes, or problems (never retiring)."""
        started = time.perf_counter()
        problems: list[str] = []
        nodes: list[tuple[str, dict[str, Any]]] = []
        if entry.error is not None:
            problems.append(f"{entry.name}: code location failed to load: {entry.error}")
        for repository in entry.repositories:
            selector = {"repositoryLocationName": entry.name, "repositoryName": repository}
            answer = self.query(ASSET_NODES_QUERY, {"selector": selector})["repositoryOrError"]
            if answer.get("__typename") != "Repository":
                problems.append(
                    f"{entry.name}/{repository}: {answer.get('__typename')}: "
                    f"{_first_lines(str(answer.get('message', '')))}"
                )
                continue
            nodes.extend((repository, node) for node in answer["assetNodes"])
        snapshot = snapshot_from_nodes(entry.name, nodes, problems)
        return LocationRead(entry, snapshot, time.perf_counter() - started)


def _first_lines(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def key_of(node: Mapping[str, Any]) -> str:
    """The key string every event uses (`a/b` for a multi-part key), as Dagster's `to_user_string`."""
    return "/".join(node["assetKey"]["path"])


def _text(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"


def metadata_value(entry: Mapping[str, Any]) -> JsonValue:
    """One GraphQL metadata entry as plain JSON data (the shape `orchestrator.catalog.json_safe` gives)."""
    value: JsonValue = _metadata_value(entry)
    return value


def _metadata_value(entry: Mapping[str, Any]) -> Any:
    kind = entry.get("__typename", "")
    if kind in ("TextMetadataEntry",):
        return _text(entry["text"])
    if kind == "MarkdownMetadataEntry":
        return _text(entry["mdStr"])
    if kind == "UrlMetadataEntry":
        return entry["url"]
    if kind in ("PathMetadataEntry", "NotebookMetadataEntry"):
        return entry["path"]
    if kind == "JsonMetadataEntry":
        try:
            parsed: JsonValue = json.loads(entry["jsonString"])
        except ValueError:
            return _text(entry["jsonString"])
        return parsed
    if kind == "IntMetadataEntry":
        return entry["intValue"] if entry.get("intValue") is not None else entry.get("intRepr")
    if kind == "FloatMetadataEntry":
        return entry["floatValue"] if entry.get("floatValue") is not None else entry.get("floatRepr")
    if kind == "BoolMetadataEntry":
        return entry["boolValue"]
    if kind == "TimestampMetadataEntry":
        return entry["timestamp"]
    if kind == "PoolMetadataEntry":
        return entry["pool"]
    if kind == "PythonArtifactMetadataEntry":
        return f"{entry['module']}.{entry['name']}"
    if kind == "AssetMetadataEntry":
        return "/".join(entry["assetKey"]["path"])
    if kind == "JobMetadataEntry":
        return f"{entry['locationName']}:{entry['jobName']}"
    if kind == "TableSchemaMetadataEntry":
        return [
            Column(name=c["name"], type=c.get("type") or "", description=c.get("description")).model_dump()
            for c in entry["schema"]["columns"]
        ]
    if kind == "NullMetadataEntry":
        return None
    return f"<{kind}>"


def _source(entries: Sequence[Mapping[str, Any]]) -> tuple[str | None, int | None]:
    for entry in entries:
        if entry.get("__typename") != "CodeReferencesMetadataEntry":
            continue
        for ref in entry.get("codeReferences") or []:
            if ref.get("__typename") == "LocalFileCodeReference":
                # Shown relative to the project when it is one of ours, as the in-process catalog does.
                path = Path(ref["filePath"])
                try:
                    shown = str(path.resolve().relative_to(PROJECT_ROOT))
                except (ValueError, OSError):
                    shown = str(path)
                return shown, ref.get("lineNumber")
    return None, None


def _freshness(node: Mapping[str, Any]) -> dict[str, JsonValue] | None:
    policy = node.get("internalFreshnessPolicy")
    if policy and policy.get("__typename") == "TimeWindowFreshnessPolicy":
        warn = policy.get("warnWindowSeconds")
        return {
            "kind": "time_window",
            "fail_window_s": float(policy["failWindowSeconds"]),
            "warn_window_s": float(warn) if warn is not None else None,
        }
    if policy and policy.get("__typename") == "CronFreshnessPolicy":
        return {
            "kind": "cron",
            "deadline_cron": policy["deadlineCron"],
            "lower_bound_delta_s": float(policy["lowerBoundDeltaSeconds"]),
            "timezone": policy["timezone"],
        }
    legacy = node.get("freshnessPolicy")
    if legacy:
        return {
            "kind": "legacy",
            "maximum_lag_minutes": legacy["maximumLagMinutes"],
            "cron_schedule": legacy.get("cronSchedule"),
            "cron_schedule_timezone": legacy.get("cronScheduleTimezone"),
        }
    return None


def _owner(raw: Mapping[str, Any]) -> str | None:
    if raw.get("__typename") == "UserAssetOwner":
        return str(raw["email"])
    if raw.get("__typename") == "TeamAssetOwner":
        return f"team:{raw['team']}"
    return None


def spec_from_node(
    node: Mapping[str, Any], code_location: str, repository: str | None = None
) -> AssetSpecData:
    """One GraphQL asset node of `repository` as `AssetSpecData` (the fields the in-process catalog gives)."""
    tags = {str(t["key"]): str(t["value"]) for t in node.get("tags") or []}
    kinds = sorted(set(node.get("kinds") or []))
    if not kinds and COMPUTE_KIND_TAG in tags:
        kinds = [tags[COMPUTE_KIND_TAG]]
    plain_tags = {k: v for k, v in sorted(tags.items()) if not k.startswith(KIND_TAG_PREFIX)}
    entries = node.get("metadataEntries") or []
    metadata = {
        str(e["label"]): metadata_value(e) for e in entries if e.get("label") != CODE_REFERENCES_LABEL
    }
    if node.get("automationCondition"):
        metadata["dagster/automation_condition"] = node["automationCondition"].get("label") or _text(
            str(node["automationCondition"].get("expandedLabel"))
        )
    source_file, source_line = _source(entries)
    checks_answer = node.get("assetChecksOrError") or {}
    checks = (
        sorted({c["name"] for c in checks_answer.get("checks", [])})
        if checks_answer.get("__typename") == "AssetChecks"
        else []
    )
    partitioning = (node.get("partitionDefinition") or {}).get("description")
    return AssetSpecData(
        key=key_of(node),
        group=node.get("groupName"),
        description=node.get("description"),
        owners=sorted({o for o in map(_owner, node.get("owners") or []) if o}),
        tags=plain_tags,
        kinds=kinds,
        metadata=metadata,
        code_version=node.get("opVersion"),
        partitioning=partitioning,
        source_file=source_file,
        source_line=source_line,
        code_location=code_location,
        upstream=sorted({"/".join(k["path"]) for k in node.get("dependencyKeys") or []}),
        downstream=sorted({"/".join(k["path"]) for k in node.get("dependedByKeys") or []}),
        freshness=_freshness(node),
        checks=checks,
        job_names=user_job_names(node.get("jobNames") or ()),
        repository=repository,
    )


def snapshot_from_nodes(
    code_location: str, nodes: Sequence[tuple[str, Mapping[str, Any]]], problems: Sequence[str]
) -> CatalogSnapshotData:
    """The location's snapshot from its (repository, asset node) pairs (stubs of undefined upstreams
    excluded, as in-process)."""
    specs: dict[str, AssetSpecData] = {}
    for repository, node in nodes:
        if node.get("isAutoCreatedStub"):
            continue
        spec = spec_from_node(node, code_location, repository)
        specs[spec.key] = spec
    assets = [specs[k] for k in sorted(specs)]
    found = sorted(problems)
    return CatalogSnapshotData(
        code_location=code_location,
        fingerprint=snapshot_fingerprint(assets, found),
        assets=assets,
        problems=found,
    )
