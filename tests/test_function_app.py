"""The Functions adapter, through the azure.functions objects the Python worker hands it."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
from conftest import GOLDEN, env
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
    assert "llama-4" in body["embedded"]
