"""The Functions adapter, through the azure.functions objects the Python worker hands it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import azure.functions as func
import pytest
from conftest import GOLDEN, ROOT, env
from corpus import CASES, envelope

import function_app
from tokencounter.localhost import app_functions


def call(route_name: str, method: str, body: bytes = b"") -> func.HttpResponse:
    functions = {f.get_function_name(): f for f in app_functions(function_app.app)}
    request = func.HttpRequest(
        method=method, url=f"http://localhost/api/{route_name}", headers={}, params={}, route_params={}, body=body
    )
    return functions[route_name].get_user_function()(request)


def test_routes_are_declared_for_the_host():
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in app_functions(function_app.app)}
    counter = functions["tokencounter"]["bindings"][0]
    assert counter["route"] == "tokencounter" and counter["authLevel"] == "FUNCTION"
    assert "POST" in counter["methods"]
    health = functions["health"]["bindings"][0]
    assert health["route"] == "health" and health["authLevel"] == "ANONYMOUS"


@pytest.mark.parametrize("name", ["simple", "multi_turn", "llama31_tools_request"])
def test_counts_through_the_adapter(name, monkeypatch, settings):
    monkeypatch.setattr(function_app, "settings", settings)
    response = call("tokencounter", "POST", json.dumps(envelope(CASES[name])).encode())
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    usage = json.loads(response.get_body())["usage"]
    assert usage["prompt_tokens"] == GOLDEN[name]["prompt_tokens"]
    assert usage["completion_tokens"] == GOLDEN[name]["completion_tokens"]


def test_errors_through_the_adapter():
    response = call("tokencounter", "POST", json.dumps(env({"messages": [{"role": 1, "content": "x"}]})).encode())
    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]["code"] == "invalid_role"
    response = call("tokencounter", "DELETE")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_health():
    from tokencounter import service

    service.preload()
    response = call("health", "GET")
    body = json.loads(response.get_body())
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["default_tokenizer"] == "llama-3" and "llama-3" in body["loaded"]
    assert set(body) == {"status", "version", "default_tokenizer", "loaded", "failed", "embedded", "models"}
    assert {"llama-4", "mistral-v3", "qwen3", "gemma-3", "gpt-oss"} <= set(body["embedded"])


def test_explain_through_the_adapter(monkeypatch, settings):
    monkeypatch.setattr(function_app, "settings", settings)
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in app_functions(function_app.app)}
    binding = functions["explain"]["bindings"][0]
    assert binding["route"] == "tokencounter/explain" and binding["authLevel"] == "FUNCTION"
    response = call("explain", "POST", json.dumps(envelope(CASES["simple"])).encode())
    payload = json.loads(response.get_body())
    assert response.status_code == 200 and payload["usage"]["prompt_tokens"] == GOLDEN["simple"]["prompt_tokens"]
    assert (
        sum(m["tokens"] for m in payload["messages"]) + payload["overhead_tokens"] == payload["usage"]["prompt_tokens"]
    )


PLAYGROUND_PROBE = r"""
import json, sys
import azure.functions as func
sys.path.insert(0, sys.argv[1])
import function_app
from tokencounter.localhost import app_functions
functions = {f.get_function_name(): f for f in app_functions(function_app.app)}
out = {"routes": sorted(json.loads(f.get_function_json())["bindings"][0]["route"] for f in functions.values())}
if "playground_page" in functions:
    page = functions["playground_page"].get_user_function()
    cases = [("/api/playground", None), ("/api/playground/", None)]
    cases += [("/api/playground/playground.js", "playground.js"), ("/api/playground/secret.txt", "secret.txt")]
    for url, name in cases:
        reply = page(func.HttpRequest(method="GET", url="http://h" + url, headers={}, params={},
                                      route_params={"name": name} if name else {}, body=b""))
        out[url] = [reply.status_code, reply.headers.get("Content-Type"), reply.headers.get("Location"),
                    reply.get_body()[:15].decode()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_the_playground_is_served_on_azure_only_when_enabled(enabled):
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("TOKENCOUNTER_")}
    env_vars.update(TOKENCOUNTER_PRELOAD="false", **({"TOKENCOUNTER_PLAYGROUND": "true"} if enabled else {}))
    out = subprocess.run(
        [sys.executable, "-c", PLAYGROUND_PROBE, str(ROOT)], env=env_vars, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert ("playground/{name?}" in result["routes"]) is enabled
    if enabled:
        assert result["/api/playground"][0] == 301 and result["/api/playground"][2] == "http://h/api/playground/"
        assert result["/api/playground/"][:2] == [200, "text/html; charset=utf-8"]
        assert result["/api/playground/"][3].startswith("<!doctype html>")
        assert result["/api/playground/playground.js"][:2] == [200, "text/javascript; charset=utf-8"]
        assert result["/api/playground/secret.txt"][0] == 404
