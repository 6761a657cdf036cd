"""Black-box HTTP: the local host serving function_app.py's own routes, as `make serve` runs it."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import GOLDEN, ROOT, chat, env, local_host
from corpus import CASES, envelope

from tokencounter.settings import Settings


@pytest.fixture(scope="module")
def server():
    settings = Settings(date_string="26 Jul 2024", function_key="test-key", max_body_bytes=200_000, preload=False)
    with local_host(settings) as port:
        yield port


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), json.loads(payload) if payload else None


KEY = {"x-functions-key": "test-key"}


@pytest.mark.parametrize("name", ["simple", "unicode", "stream_chars_crlf_keepalive", "llama31_tool_turns"])
def test_counts_over_http(server, name):
    status, headers, body = request(server, "POST", "/api/tokencounter", envelope(CASES[name]), KEY)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["usage"]["prompt_tokens"] == GOLDEN[name]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == GOLDEN[name]["completion_tokens"]


def test_function_key_in_query(server):
    status, _, body = request(server, "POST", "/api/tokencounter?code=test-key", env(chat()))
    assert status == 200 and body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("headers", [{}, {"x-functions-key": "wrong"}])
def test_function_key_required(server, headers):
    status, _, body = request(server, "POST", "/api/tokencounter", env(chat()), headers)
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_health_is_anonymous(server):
    status, _, body = request(server, "GET", "/api/health")
    assert status in (200, 503) and body["version"]


def test_wrong_method_and_path(server):
    status, headers, body = request(server, "GET", "/api/tokencounter", headers=KEY)
    assert status == 405 and headers["Allow"] == "POST"
    status, _, body = request(server, "POST", "/api/nothing", env(chat()), KEY)
    assert status == 404


def test_oversized_body_refused_before_reading(server):
    status, headers, body = request(server, "POST", "/api/tokencounter", env(chat("x" * 300_000)), KEY)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_bad_json_over_http(server):
    status, _, body = request(server, "POST", "/api/tokencounter", b"{oops", KEY)
    assert status == 400 and body["error"]["code"] == "invalid_json"


def test_make_serve_command_answers(tmp_path):
    """`python -m tokencounter.localhost` (what `make serve` runs) serves exact counts on the port it is given."""
    port = 17000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokencounter.localhost", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENCOUNTER_DATE_STRING": "26 Jul 2024"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, body = request(port, "POST", "/api/tokencounter", envelope(CASES["system_user"]))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and proc.poll() is None, "local host did not start"
                time.sleep(0.1)
        assert status == 200
        assert body["usage"]["prompt_tokens"] == GOLDEN["system_user"]["prompt_tokens"]
    finally:
        proc.terminate()
        proc.wait(10)
