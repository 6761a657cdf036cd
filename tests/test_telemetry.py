"""The one-way mode: the function emits APIM-named token metrics to Application Insights itself."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import GOLDEN, post
from corpus import CASES, envelope

from tokencounter import service, telemetry
from tokencounter.settings import Settings


@pytest.fixture
def ingestion():
    """A stand-in Application Insights ingestion endpoint on loopback that records what it receives."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.extend(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/"
    yield f"InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint={endpoint}", received
    server.shutdown()


def metrics_of(received):
    return {(e["data"]["baseData"]["metrics"][0]["name"]): e["data"]["baseData"] for e in received}


def test_emits_apim_metric_names_with_dimensions(ingestion, monkeypatch):
    connection, received = ingestion
    monkeypatch.setattr(telemetry, "_SENDER", None)
    settings = Settings(date_string="26 Jul 2024", preload=False, appinsights_connection_string=connection)
    dims = {"Subscription ID": "s", "API ID": "llama", "model": "llama-3-8b", "region": "West Europe"}
    reply = service.handle(
        "POST",
        json.dumps(envelope(CASES["simple"])).encode(),
        settings,
        {
            "X-TokenCounter-Emit": "true",
            "X-TokenCounter-Namespace": "llm-tokens",
            "X-TokenCounter-Dimensions": json.dumps(dims),
        },
    )
    assert reply.status == 200
    telemetry._SENDER.flush()
    metrics = metrics_of(received)
    assert set(metrics) == {"Total Tokens", "Prompt Tokens", "Completion Tokens"}
    want = GOLDEN["simple"]
    assert metrics["Prompt Tokens"]["metrics"][0]["value"] == want["prompt_tokens"]
    assert metrics["Completion Tokens"]["metrics"][0]["value"] == want["completion_tokens"]
    assert metrics["Total Tokens"]["metrics"][0]["value"] == want["prompt_tokens"] + want["completion_tokens"]
    for data in metrics.values():
        assert data["metrics"][0]["ns"] == "llm-tokens"
        assert data["properties"] == dims  # the policy's bounded set, nothing added (never the raw model string)
    assert all(e["iKey"] == "00000000-0000-0000-0000-000000000001" for e in received)


def test_drift_is_emitted_when_recounting(ingestion, monkeypatch):
    connection, received = ingestion
    monkeypatch.setattr(telemetry, "_SENDER", None)
    settings = Settings(always_recount=True, preload=False, appinsights_connection_string=connection)
    reply = service.handle(
        "POST", json.dumps(envelope(CASES["upstream_usage"])).encode(), settings, {"x-tokencounter-emit": "1"}
    )
    assert reply.payload["source"] == "counted" and reply.payload["upstream_usage"]["prompt_tokens"] == 12
    telemetry._SENDER.flush()
    metrics = metrics_of(received)
    drift = reply.payload["usage"]["prompt_tokens"] - 12
    assert metrics["Prompt Tokens Drift"]["metrics"][0]["value"] == drift


def test_unreachable_ingestion_never_fails_the_call(monkeypatch):
    monkeypatch.setattr(telemetry, "_SENDER", None)
    settings = Settings(
        preload=False, appinsights_connection_string="InstrumentationKey=k;IngestionEndpoint=http://127.0.0.1:9/"
    )
    reply = service.handle(
        "POST", json.dumps(envelope(CASES["simple"])).encode(), settings, {"x-tokencounter-emit": "true"}
    )
    assert reply.status == 200
    telemetry._SENDER.flush()
    assert telemetry._SENDER.sent == 0


def test_no_connection_string_still_counts(monkeypatch):
    monkeypatch.setattr(telemetry, "_SENDER", None)
    reply = service.handle(
        "POST", json.dumps(envelope(CASES["simple"])).encode(), Settings(preload=False), {"x-tokencounter-emit": "true"}
    )
    assert reply.status == 200 and telemetry._SENDER is None


@pytest.mark.parametrize("reported,source", [(False, "counted"), (True, "backend")])
def test_the_source_dimension_is_filled_in_by_the_function(ingestion, monkeypatch, reported, source):
    """Only the function knows whether it counted or passed on the backend's usage."""
    connection, received = ingestion
    monkeypatch.setattr(telemetry, "_SENDER", None)
    settings = Settings(preload=False, appinsights_connection_string=connection)
    case = CASES["upstream_usage" if reported else "simple"]
    dims = {"Subscription ID": "s", "API ID": "a", "model": "other", "source": "counted"}
    reply = service.handle(
        "POST",
        json.dumps(envelope(case)).encode(),
        settings,
        {"x-tokencounter-emit": "true", "x-tokencounter-dimensions": json.dumps(dims)},
    )
    assert reply.status == 200
    telemetry._SENDER.flush()
    assert {e["data"]["baseData"]["properties"]["source"] for e in received} == {source}


def test_the_audit_recounts_and_emits_only_the_drift(ingestion, monkeypatch):
    """x-tokencounter-emit: drift (the policies' audit call): recount despite the backend's usage, emit
    counted-minus-reported, never the token metrics APIM already emitted from that usage."""
    connection, received = ingestion
    monkeypatch.setattr(telemetry, "_SENDER", None)
    settings = Settings(preload=False, appinsights_connection_string=connection)
    dims = {"Subscription ID": "s", "API ID": "a", "model": "other", "source": "backend"}
    reply = service.handle(
        "POST",
        json.dumps(envelope(CASES["upstream_usage"])).encode(),
        settings,
        {"x-tokencounter-emit": "drift", "x-tokencounter-dimensions": json.dumps(dims)},
    )
    assert reply.status == 200 and reply.payload["source"] == "counted"
    upstream = reply.payload["upstream_usage"]
    telemetry._SENDER.flush()
    metrics = metrics_of(received)
    assert set(metrics) == {"Prompt Tokens Drift", "Completion Tokens Drift"}
    assert metrics["Prompt Tokens Drift"]["metrics"][0]["value"] == (
        reply.payload["usage"]["prompt_tokens"] - upstream["prompt_tokens"]
    )
    assert metrics["Completion Tokens Drift"]["metrics"][0]["value"] == (
        reply.payload["usage"]["completion_tokens"] - upstream["completion_tokens"]
    )
    assert all(len(data["properties"]) <= telemetry.MAX_DIMENSIONS for data in metrics.values())


def test_a_connection_string_without_a_key_never_fails_the_count(monkeypatch):
    monkeypatch.setattr(telemetry, "_SENDER", None)
    monkeypatch.setattr(telemetry, "_WARNED", False)
    settings = Settings(preload=False, appinsights_connection_string="IngestionEndpoint=https://x.example/")
    reply = service.handle(
        "POST", json.dumps(envelope(CASES["simple"])).encode(), settings, {"x-tokencounter-emit": "true"}
    )
    assert reply.status == 200 and telemetry._SENDER is None


@pytest.mark.parametrize(
    "value",
    [
        "[1,2]",
        "not json",
        json.dumps({f"d{i}": "v" for i in range(6)}),  # more than Azure Monitor's 5 custom dimensions
        '{"a": {"b": "c"}}',
        '{"a": ' + "[" * 2000 + "]" * 2000 + "}",  # deeper than the JSON decoder's stack
    ],
)
def test_bad_dimensions_header(value):
    reply = post(envelope(CASES["simple"]), Settings(preload=False))
    assert reply.status == 200
    bad = service.handle(
        "POST",
        json.dumps(envelope(CASES["simple"])).encode(),
        Settings(preload=False),
        {"x-tokencounter-emit": "true", "x-tokencounter-dimensions": value},
    )
    assert bad.status == 400 and "x-tokencounter-dimensions" in bad.payload["error"]["message"]


def test_connection_string_parsing():
    key, url = telemetry.parse_connection_string(
        "InstrumentationKey=abc;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;X=y"
    )
    assert key == "abc" and url == "https://westeurope-5.in.applicationinsights.azure.com/v2.1/track"
    with pytest.raises(ValueError, match="InstrumentationKey"):
        telemetry.parse_connection_string("IngestionEndpoint=https://x/")
