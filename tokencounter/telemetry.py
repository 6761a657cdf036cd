"""Metrics the function emits itself, for the send-one-way-request policy (APIM emits nothing in that mode).

Sent to Application Insights' ingestion ("track") endpoint as MetricData named exactly like APIM's
built-in token metrics ("Total Tokens", "Prompt Tokens", "Completion Tokens") with the dimensions the
policy passes in headers. OpenTelemetry instrument names cannot contain spaces, so an OTel exporter could
not produce these names; this sender is stdlib-only, batched on a background thread, bounded, and never
blocks or fails a request.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from datetime import datetime, timezone

from .errors import InvalidField

log = logging.getLogger("tokencounter")

EMIT_HEADER = "x-tokencounter-emit"
NAMESPACE_HEADER = "x-tokencounter-namespace"
DIMENSIONS_HEADER = "x-tokencounter-dimensions"
MAX_DIMENSIONS = 20
MAX_DIMENSIONS_BYTES = 4096
QUEUE_SIZE = 10_000
BATCH = 200


def parse_connection_string(value: str) -> tuple[str, str]:
    """(instrumentation key, track URL) from an Application Insights connection string."""
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    key = parts.get("InstrumentationKey")
    if not key:
        raise ValueError("APPLICATIONINSIGHTS_CONNECTION_STRING has no InstrumentationKey")
    endpoint = parts.get("IngestionEndpoint", "https://dc.services.visualstudio.com").rstrip("/")
    return key, endpoint + "/v2.1/track"


def requested(headers: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """(namespace, dimensions) when the caller asked the function to emit metrics; None otherwise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get(EMIT_HEADER, "").strip().lower() not in ("1", "true", "yes"):
        return None
    namespace = lowered.get(NAMESPACE_HEADER, "").strip() or "tokencounter"
    raw = lowered.get(DIMENSIONS_HEADER, "").strip() or "{}"
    if len(raw.encode()) > MAX_DIMENSIONS_BYTES:
        raise InvalidField(f"{DIMENSIONS_HEADER} is longer than {MAX_DIMENSIONS_BYTES} bytes")
    try:
        dimensions = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidField(f"{DIMENSIONS_HEADER} must be a JSON object of dimension name -> string") from None
    if not isinstance(dimensions, dict) or len(dimensions) > MAX_DIMENSIONS:
        raise InvalidField(f"{DIMENSIONS_HEADER} must be a JSON object with at most {MAX_DIMENSIONS} dimensions")
    return namespace, {str(k): "" if v is None else str(v) for k, v in dimensions.items()}


def metric_values(result: dict) -> dict[str, int]:
    """The metrics for one counted call, named as APIM's azure-openai-emit-token-metric names them."""
    usage = result["usage"]
    values = {"Total Tokens": usage["total_tokens"], "Prompt Tokens": usage["prompt_tokens"],
              "Completion Tokens": usage["completion_tokens"]}
    upstream = result.get("upstream_usage")
    if upstream:  # both counts exist: make the drift visible
        values["Prompt Tokens Drift"] = usage["prompt_tokens"] - upstream["prompt_tokens"]
        values["Completion Tokens Drift"] = usage["completion_tokens"] - upstream["completion_tokens"]
    return values


class AppInsightsSender:
    """A bounded queue drained by one daemon thread that posts batches of metric envelopes."""

    def __init__(self, connection_string: str, timeout_s: float = 5.0) -> None:
        self.ikey, self.url = parse_connection_string(connection_string)
        self.timeout_s = timeout_s
        self.queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self.dropped = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="tokencounter-metrics", daemon=True)
        self._thread.start()

    def emit(self, namespace: str, values: dict[str, int], dimensions: dict[str, str]) -> None:
        now = datetime.now(timezone.utc).isoformat()
        for name, value in values.items():
            envelope = {
                "name": "Microsoft.ApplicationInsights.Metric", "time": now, "iKey": self.ikey,
                "data": {"baseType": "MetricData", "baseData": {
                    "ver": 2, "metrics": [{"name": name, "ns": namespace, "value": value, "count": 1}],
                    "properties": dimensions}},
            }
            try:
                self.queue.put_nowait(envelope)
            except queue.Full:
                self.dropped += 1

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything queued so far was posted (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._post(batch)
                self.sent += len(batch)
            except Exception as exc:  # noqa: BLE001 - telemetry never takes the function down
                log.warning("metrics post failed (%s); %d metric(s) dropped", type(exc).__name__, len(batch))
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _post(self, batch: list[dict]) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(batch).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()


_SENDER: AppInsightsSender | None = None
_SENDER_LOCK = threading.Lock()
_WARNED = False


def sender(connection_string: str | None) -> AppInsightsSender | None:
    """The process's one sender, created on first use; None (and a warning) without a connection string."""
    global _SENDER, _WARNED
    if _SENDER is None:
        with _SENDER_LOCK:
            if _SENDER is None:
                if not connection_string:
                    if not _WARNED:
                        log.warning("metrics requested but APPLICATIONINSIGHTS_CONNECTION_STRING is not set")
                        _WARNED = True
                    return None
                _SENDER = AppInsightsSender(connection_string)
    return _SENDER
