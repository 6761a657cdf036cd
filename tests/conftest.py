"""Shared fixtures: test settings (date pinned like the golden oracle), envelopes, the service entry point."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from tokencounter import service  # noqa: E402
from tokencounter.settings import Settings  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "golden" / "counts.json").read_text(encoding="utf-8"))
GOLDEN_DATE = "26 Jul 2024"
# The README's example call (README: prompt 28, completion 8, total 36).
README_REQUEST = {
    "model": "meta-llama/Meta-Llama-3-8B-Instruct",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
}
README_RESPONSE = {
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The capital of France is Paris."},
            "finish_reason": "stop",
        }
    ]
}


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(date_string=GOLDEN_DATE, preload=False)


def post(payload, settings: Settings, method: str = "POST") -> service.Reply:
    """Send an envelope (dict, str or bytes) through the service as the function does."""
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return service.handle(method, payload, settings)


@contextlib.contextmanager
def local_host(settings: Settings):
    """The local host (tokencounter.localhost) on a free loopback port, in a thread; yields the port."""
    from tokencounter.localhost import make_server

    srv = make_server(0, root=ROOT, settings=settings)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def raw_exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, half-close, and read the whole answer (b"" when the host closed without one); a host
    that answers and closes before reading everything still has its answer read."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def chat(content="Hello", role="user", **extra) -> dict:
    return {"model": "Llama-3-8B", "messages": [{"role": role, "content": content}], **extra}


def env(request, response=None) -> dict:
    out = {"RequestBody": request if isinstance(request, str) else json.dumps(request)}
    if response is not None:
        out["ResponseBody"] = response if isinstance(response, str) else json.dumps(response)
    return out
