"""Black-box HTTP: the local host serving function_app.py's own routes, as `make serve` runs it."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import GOLDEN, ROOT, chat, env, local_host
from conftest import raw_exchange as raw
from corpus import CASES, envelope

from tokencounter.localhost import MAX_PIPELINED
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
    return response.status, response.headers, json.loads(payload) if payload else None  # names: any case


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


def answer(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


ENVELOPE = json.dumps(env(chat())).encode()


@pytest.mark.parametrize("length", [b"+10", b"1_0", b"0x10", b" 1 0", b"-1", b"10, 10"])
def test_content_length_must_be_digits(server, length):
    status, body = answer(
        raw(
            server,
            b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\nx-functions-key: test-key\r\n\r\n"
            + b"x" * 10,
        )
    )
    assert status == 400 and set(body["error"]) == {"code", "message"}


def test_a_body_shorter_than_its_content_length_is_never_counted(server):
    """Half-closed before the body is complete: no answer at all, certainly not a 200 count."""
    data = raw(
        server,
        b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nx-functions-key: test-key\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(ENVELOPE) + 5) + ENVELOPE,
    )
    assert not data.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "request_line",
    [
        b"FOO /api/tokencounter HTTP/1.1",
        b"GET /api/nothing?secret=1 HTTP/1.1",
        b"BREW /x HTTP/1.1",
        b"GARBAGE",
        b"GET /nothing HTTP/9.9",
    ],
)
def test_every_answer_is_json_and_echoes_nothing(server, request_line):
    data = raw(server, request_line + b"\r\nHost: x\r\nx-functions-key: test-key\r\n\r\n")
    status, body = answer(data)
    assert 400 <= status < 600 and set(body["error"]) == {"code", "message"}
    assert b"secret" not in data and b"nothing" not in data and b"BREW" not in data


def test_oversized_headers_get_json(server):
    status, body = answer(raw(server, b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"))
    assert status == 431 and body["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nContent-Length: 1500000\r\n\r\n" + b"x" * 1_500_000,
    ],
    ids=["headers", "body"],
)
def test_refusal_survives_unread_input(server, data):
    """The host answers 431/413 before reading everything; it lingers instead of resetting the connection, so a
    client that half-closes only after the answer was sent still reads it (else: ENOTCONN, the answer lost)."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(data)
        time.sleep(0.3)  # the host has answered and closed its side by now
        sock.shutdown(socket.SHUT_WR)
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    assert head.split()[1] in (b"413", b"431"), head


def test_good_requests_are_served_while_300_slow_clients_hang_on(server):
    """Slow clients (headers never finished) hold no worker thread: a good request is answered meanwhile."""
    slow = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server), timeout=10)
            sock.sendall(b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nContent-Le")
            slow.append(sock)
        for _ in range(5):
            status, _, body = request(server, "POST", "/api/tokencounter", envelope(CASES["system_user"]), KEY)
            assert status == 200 and body["usage"]["prompt_tokens"] == GOLDEN["system_user"]["prompt_tokens"]
    finally:
        for sock in slow:
            sock.close()


def test_an_idle_connection_is_closed():
    settings = Settings(function_key="test-key", preload=False)
    from tokencounter.localhost import make_server

    server = make_server(0, root=ROOT, settings=settings, idle_timeout_s=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=15) as sock:
            sock.sendall(b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\n")
            assert sock.recv(1024) == b""  # closed by the host, without an answer to an unfinished request
    finally:
        server.shutdown()
        server.server_close()


def test_the_host_applies_the_settings_it_is_given():
    """make_server(settings=...) counts as the function would with those settings in the environment."""
    settings = Settings(function_key="test-key", preload=False, max_messages=1)
    with local_host(settings) as port:
        body = env({"model": "x", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
        status, _, payload = request(port, "POST", "/api/tokencounter", body, KEY)
    assert status == 413 and "TOKENCOUNTER_MAX_MESSAGES" in payload["error"]["message"]


def test_the_playground_is_served_at_the_root_with_a_strict_policy(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.request("GET", "/")
    page = conn.getresponse()
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"playground.js" in page.read()
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    conn.request("GET", "/playground.js")
    script = conn.getresponse()
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript") and script.read()
    conn.close()
    status, headers, body = request(server, "POST", "/", b"{}")
    assert status == 405 and headers["Allow"] == "GET, HEAD" and body["error"]["code"] == "method_not_allowed"


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


SMALL = json.dumps(env(chat())).encode()
MID = json.dumps(env(chat("hello world " * 8000))).encode()  # past the inline limit: counted in a worker thread


def post(body: bytes, key: bool = True) -> bytes:
    head = b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\n" + (b"x-functions-key: test-key\r\n" if key else b"")
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


CHUNKED = b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    ("after", "refusal"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /api/health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"x" * 1000, 413),
        (CHUNKED + b"\r\n" + (b"10000\r\n" + b"x" * 65536 + b"\r\n") * 4, 413),
        (CHUNKED + b"\r\nzz\r\n", 400),
        (CHUNKED + b"x-functions-key: test-key\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n", 400),
    ],
    ids=["malformed", "headers_too_large", "content_length_too_large", "chunked_too_large", "bad_chunk", "trailer"],
)
@pytest.mark.parametrize("first", [SMALL, MID], ids=["inline", "worker"])
def test_pipelined_requests_are_answered_before_the_refusal_after_them(server, first, after, refusal):
    """Found by review: a refusal was written at once, ahead of (and in place of) the answers still owed."""
    assert statuses(raw(server, post(first) + post(first) + after)) == [200, 200, refusal]


def test_trailers_never_reach_the_function(server):
    """Trailer fields used to join the headers: a function key sent as a trailer passed the key check."""
    data = raw(server, CHUNKED + b"\r\n%x\r\n" % len(SMALL) + SMALL + b"\r\n0\r\nx-functions-key: test-key\r\n\r\n")
    assert statuses(data) == [400] and b"trailers" in data


@pytest.mark.parametrize("body", [SMALL, MID], ids=["inline", "worker"])
def test_a_request_sent_whole_then_half_closed_is_answered(server, body):
    """Found by review: the half-close closed the connection before a worker thread's answer was written."""
    status, payload = answer(raw(server, post(body)))
    assert status == 200 and payload["usage"]["prompt_tokens"] > 0


def test_a_queue_of_requests_is_answered_before_a_refusal(server):
    queue = b"GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n" * 50
    data = raw(server, queue + b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nContent-Length: 900000000\r\n\r\n")
    assert statuses(data) == [404] * 50 + [413]


def test_a_connection_queues_a_bounded_number_of_requests(server):
    """Found by review: each answer let uvicorn read more pipelined requests into an unbounded queue (2.4 GB)."""
    answers = statuses(raw(server, b"GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n" * 5000))
    assert answers[-1] == 429 and set(answers[:-1]) == {404} and MAX_PIPELINED < len(answers) < 5000


@pytest.mark.parametrize("upgrade", [b"websocket", b"h2c", b"foo"])
def test_an_upgrade_request_is_refused_in_json(server, upgrade):
    """uvicorn's websocket protocol answered a plain-text 500; llhttp reads what follows an upgrade request as another
    protocol's (a body then parsed as a request of its own): refused, whatever follows."""
    head = b"POST /api/tokencounter HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: " + upgrade + b"\r\n"
    smuggled = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    data = raw(server, head + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
    assert statuses(data) == [400] and b"Upgrade" in data


@pytest.mark.parametrize(
    "flood",
    [
        CHUNKED + b"x-functions-key: test-key\r\n\r\n1;ext=" + b"a" * 200_000,  # a chunk extension without end
        CHUNKED + b"x-functions-key: test-key\r\n\r\n2\r\n{}\r\n0\r\nX-T: " + b"a" * 200_000,  # a trailer without end
        post(SMALL) + b"\r\n" * 100_000,  # blank lines between requests
    ],
    ids=["chunk_extension", "trailer", "blank_lines"],
)
def test_framing_without_end_is_bounded(server, flood):
    """Found by review: chunk extensions (and blank lines after a request) were read without limit."""
    assert statuses(raw(server, flood))[-1] == 431


def test_a_refusal_is_read_by_a_client_still_sending(server):
    """Found by review: reading was paused (flow control) when the 413 went out, so a client sending 5 MB blocked
    until the connection was reset, and never read it."""
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.request("POST", "/api/tokencounter", body=b"x" * 5_000_000, headers=KEY)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "payload_too_large"
    conn.close()
