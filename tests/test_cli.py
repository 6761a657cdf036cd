"""`python -m tokencounter count|explain FILE`: the README example, stdin, bare requests, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import README_REQUEST, README_RESPONSE, ROOT, post

REQUEST, RESPONSE = README_REQUEST, README_RESPONSE
ENVELOPE = {"RequestBody": json.dumps(REQUEST), "ResponseBody": json.dumps(RESPONSE)}


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENCOUNTER_")}
    return subprocess.run(
        [sys.executable, "-m", "tokencounter", *args], input=stdin, capture_output=True, cwd=ROOT, env=env, timeout=120
    )


def test_count_the_readme_example_from_a_file(tmp_path):
    path = tmp_path / "envelope.json"
    path.write_text(json.dumps(ENVELOPE))
    out = cli("count", str(path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["usage"] == {"prompt_tokens": 28, "completion_tokens": 8, "total_tokens": 36}


def test_explain_from_stdin_prints_the_table():
    out = cli("explain", "-", stdin=json.dumps(ENVELOPE).encode())
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[-2:]) for line in out.stdout.decode().splitlines() if line.strip()}
    for row in [
        ("system", "6"),
        ("user", "7"),
        ("overhead", "15"),
        ("prompt", "28"),
        ("completion", "8"),
        ("total", "36"),
    ]:
        assert row in rows, out.stdout.decode()


def test_a_bare_request_is_counted_as_its_envelope():
    out = cli("count", "-", stdin=json.dumps(REQUEST).encode())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["usage"]["prompt_tokens"] == 28


@pytest.mark.parametrize("body", [b"{oops", json.dumps({"RequestBody": {"messages": []}}).encode(), b"[1, 2]"])
@pytest.mark.parametrize("command", ["count", "explain"])
def test_bad_input_exits_2_with_the_http_message(body, command, settings):
    out = cli(command, "-", stdin=body)
    assert out.returncode == 2
    error = post(body, settings).payload["error"]
    assert out.stderr.decode().strip() == f"error: {error['code']}: {error['message']}"


def test_a_missing_file_exits_2(tmp_path):
    out = cli("count", str(tmp_path / "nothing.json"))
    assert out.returncode == 2 and "cannot read" in out.stderr.decode()
