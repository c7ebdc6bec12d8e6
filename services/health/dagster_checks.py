"""Reports check results to the Dagster webserver (`POST /report_asset_check/{asset/key/path}`), so the
Dagster UI shows them on each asset's Checks tab, under our own check names (`ams_freshness`,
`libs.common.events.dagster_check_name`): never to a team's check that shares a name with one of ours.

Reporting happens in a background thread after the store commit: the consume loop only hands over the
latest results per asset (a newer set replaces a queued older one), and a slow or absent webserver never
holds it up. Transport errors and 5xx answers are retried with exponential backoff; a 4xx is logged and
dropped (e.g. an asset this Dagster does not know). Until the webserver has answered once, results wait
quietly (it usually starts after the workers); a webserver still silent after `patience_s` is named in one
warning, and results keep waiting for it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from libs.common.events import CheckResult, dagster_check_name
from libs.common.log import get_logger
from services.health import metrics

log = get_logger(__name__)


class _Retryable(Exception):
    """A 5xx answer: worth another try."""


def check_payload(result: CheckResult) -> dict[str, Any]:
    """The JSON body Dagster's endpoint expects for one result."""
    metadata: dict[str, Any] = {"reason": result.reason, "outcome": result.outcome}
    for name, value in result.values.items():
        if isinstance(value, list):
            metadata[name] = ", ".join(str(v) for v in value)
        elif value is not None:
            metadata[name] = value
    body: dict[str, Any] = {
        "check_name": dagster_check_name(result.check),
        "passed": result.outcome == "passed",
        "metadata": metadata,
    }
    if result.outcome != "passed":
        body["severity"] = "WARN" if result.outcome == "warn" else "ERROR"
    return body


def check_url(base_url: str, asset_key: str) -> str:
    """The endpoint of `asset_key` (`a/b` → `/report_asset_check/a/b`)."""
    return f"{base_url.rstrip('/')}/report_asset_check/" + "/".join(
        quote(p, safe="") for p in asset_key.split("/")
    )


class DagsterCheckReporter:
    """Posts the newest check results of each asset to Dagster from a background thread."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
        max_wait_s: float = 8.0,
        patience_s: float = 120.0,
    ) -> None:
        self.base_url = base_url
        self.patience_s = patience_s
        self._answered = False
        self.attempts = attempts
        self.max_wait_s = max_wait_s
        self._client = httpx.Client(timeout=timeout_s)
        self._pending: OrderedDict[str, list[CheckResult]] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dagster-check-reporter", daemon=True)

    def start(self) -> DagsterCheckReporter:
        self._thread.start()
        return self

    def submit(self, asset_key: str, results: Sequence[CheckResult]) -> None:
        """Queue `results` for `asset_key`, replacing any not yet sent; never blocks."""
        with self._lock:
            self._pending.pop(asset_key, None)
            self._pending[asset_key] = list(results)
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._client.close()

    def _webserver_answers(self) -> bool:
        # Any HTTP answer will do: the point is not to post into a refused connection during start-up.
        try:
            self._client.get(f"{self.base_url.rstrip('/')}/server_info", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    def _wait_for_webserver(self) -> None:
        """Block (quietly) until the webserver answers once, or stop is requested."""
        started = time.monotonic()
        warned = False
        while not self._stop.is_set():
            if self._webserver_answers():
                self._answered = True
                if warned:
                    log.info("dagster_webserver_answers", url=self.base_url)
                return
            if not warned and time.monotonic() - started > self.patience_s:
                log.warning(
                    "dagster_webserver_not_answering",
                    url=self.base_url,
                    waited_s=round(self.patience_s),
                    note="check results wait for it (dagster.url)",
                )
                warned = True
            self._stop.wait(0.5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._answered:
                self._wait_for_webserver()
                continue
            with self._lock:
                item = self._pending.popitem(last=False) if self._pending else None
                if item is None:
                    self._wake.clear()
            if item is None:
                self._wake.wait(1.0)
                continue
            key, results = item
            for result in results:
                if self._stop.is_set():
                    return
                self._post(key, result)

    def _post(self, asset_key: str, result: CheckResult) -> None:
        url = check_url(self.base_url, asset_key)
        body = check_payload(result)

        @retry(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=self.max_wait_s),
            retry=retry_if_exception(
                lambda e: isinstance(e, httpx.TransportError | _Retryable) and not self._stop.is_set()
            ),
            reraise=True,
        )
        def send() -> httpx.Response:
            response = self._client.post(url, json=body)
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            return response

        try:
            response = send()
        except (httpx.TransportError, _Retryable) as exc:
            metrics.DAGSTER_REPORTS.labels(result="failed").inc()
            log.warning("dagster_report_failed", asset=asset_key, check=result.check, error=str(exc)[:200])
            return
        if response.status_code >= 400:
            metrics.DAGSTER_REPORTS.labels(result="rejected").inc()
            log.warning(
                "dagster_report_rejected",
                asset=asset_key,
                check=result.check,
                status=response.status_code,
                error=response.text[:300],
            )
            return
        metrics.DAGSTER_REPORTS.labels(result="ok").inc()
