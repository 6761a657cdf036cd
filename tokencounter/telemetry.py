"""Metrics the function emits itself: for the send-one-way-request policy (APIM emits nothing in that mode)
and for the policies' audit call (the backend's usage recounted; only the drift is emitted).

Sent to Application Insights' ingestion ("track") endpoint as MetricData named exactly like APIM's
built-in token metrics ("Total Tokens", "Prompt Tokens", "Completion Tokens") with the dimensions the
policy passes in headers (policies/dimensions.xml: at most 5, as Azure Monitor allows; the function adds
none). OpenTelemetry instrument names cannot contain spaces, so an OTel exporter could not produce these
names; this sender is stdlib-only, batched on a background thread, bounded, and never blocks or fails a
request.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import InvalidField

log = logging.getLogger("tokencounter")

EMIT_HEADER = "x-tokencounter-emit"
NAMESPACE_HEADER = "x-tokencounter-namespace"
DIMENSIONS_HEADER = "x-tokencounter-dimensions"
# Azure Monitor: 10 dimension keys per metric, 5 of them taken by API Management's own.
MAX_DIMENSIONS = 5
MAX_DIMENSIONS_BYTES = 4096
# The one dimension the function fills in itself when the policy declares it: only the function knows.
SOURCE_DIMENSION = "source"
DRIFT_METRICS = ("Prompt Tokens Drift", "Completion Tokens Drift")
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


@dataclass(frozen=True)
class Emission:
    """What a caller asked the function to emit: every metric, or (the audit) only the drift."""

    namespace: str
    dimensions: dict[str, str]
    drift_only: bool

    @property
    def recount(self) -> bool:
        """An audit asks for a recount even when the response carries the backend's usage."""
        return self.drift_only


def requested(headers: dict[str, str]) -> Emission | None:
    """The emission a caller asked for in the x-tokencounter-* headers; None when it asked for none."""
    lowered = {k.lower(): v for k, v in headers.items()}
    mode = lowered.get(EMIT_HEADER, "").strip().lower()
    if mode not in ("1", "true", "yes", "drift"):
        return None
    namespace = lowered.get(NAMESPACE_HEADER, "").strip() or "tokencounter"
    raw = lowered.get(DIMENSIONS_HEADER, "").strip() or "{}"
    if len(raw.encode()) > MAX_DIMENSIONS_BYTES:
        raise InvalidField(f"{DIMENSIONS_HEADER} is longer than {MAX_DIMENSIONS_BYTES} bytes")
    shape = f"{DIMENSIONS_HEADER} must be a flat JSON object of at most {MAX_DIMENSIONS} dimension name -> string"
    try:
        dimensions = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder's stack
        raise InvalidField(shape) from None
    if (
        not isinstance(dimensions, dict)
        or len(dimensions) > MAX_DIMENSIONS
        or not all(v is None or isinstance(v, (str, int, float)) for v in dimensions.values())
    ):
        raise InvalidField(shape)
    return Emission(namespace, {str(k): "" if v is None else str(v) for k, v in dimensions.items()}, mode == "drift")


def source_of(result: dict) -> str:
    """The source dimension of a count: backend (the model server's usage), counted, or assumed."""
    if result["source"] == "upstream":
        return "backend"
    return "assumed" if result.get("tokenizer_assumed") else "counted"


def metric_values(result: dict, drift_only: bool = False) -> dict[str, int]:
    """The metrics for one counted call, named as APIM's token metrics are, plus the drift when recounted."""
    usage = result["usage"]
    values = (
        {}
        if drift_only
        else {
            "Total Tokens": usage["total_tokens"],
            "Prompt Tokens": usage["prompt_tokens"],
            "Completion Tokens": usage["completion_tokens"],
        }
    )
    upstream = result.get("upstream_usage")
    if upstream:  # both counts exist: make the drift (counted minus reported) visible
        values[DRIFT_METRICS[0]] = usage["prompt_tokens"] - upstream["prompt_tokens"]
        values[DRIFT_METRICS[1]] = usage["completion_tokens"] - upstream["completion_tokens"]
    return values


def dimensions_of(emission: Emission, result: dict) -> dict[str, str]:
    """The caller's dimensions, with "source" (when declared) filled in from what the function did."""
    if SOURCE_DIMENSION not in emission.dimensions:
        return emission.dimensions
    return {**emission.dimensions, SOURCE_DIMENSION: source_of(result)}


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
                "name": "Microsoft.ApplicationInsights.Metric",
                "time": now,
                "iKey": self.ikey,
                "data": {
                    "baseType": "MetricData",
                    "baseData": {
                        "ver": 2,
                        "metrics": [{"name": name, "ns": namespace, "value": value, "count": 1}],
                        "properties": dimensions,
                    },
                },
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
        import urllib.request  # only where metrics are sent: 25 ms of imports kept off every cold start

        request = urllib.request.Request(
            self.url, data=json.dumps(batch).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()


_SENDER: AppInsightsSender | None = None
_SENDER_LOCK = threading.Lock()
_WARNED = False


def sender(connection_string: str | None) -> AppInsightsSender | None:
    """The process's one sender, created on first use; None (and one warning) without a usable connection string."""
    global _SENDER, _WARNED
    if _SENDER is None:
        with _SENDER_LOCK:
            if _SENDER is None:
                try:
                    if not connection_string:
                        raise ValueError("APPLICATIONINSIGHTS_CONNECTION_STRING is not set")
                    _SENDER = AppInsightsSender(connection_string)
                except ValueError as exc:  # telemetry never fails a count: the caller still gets its answer
                    if not _WARNED:
                        log.warning("metrics requested but not sent: %s", exc)
                        _WARNED = True
                    return None
    return _SENDER


def emit(emission: Emission, result: dict, connection_string: str | None) -> None:
    """Queue the metrics of one answered call, if a sender can be had."""
    metrics = sender(connection_string)
    values = metric_values(result, emission.drift_only)
    if metrics is not None and values:
        metrics.emit(emission.namespace, values, dimensions_of(emission, result))
