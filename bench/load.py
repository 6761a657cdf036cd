"""A bounded HTTP load test of the local host (`make load`; also the HTTP section of `bench/run.py`).

Starts `tokencounter.localhost.make_server(0, root=...)` in a subprocess on 127.0.0.1 (loopback only), waits
until /api/health says the tokenizer is loaded, then sends a fixed number of distinct ~1 KB chat envelopes
from 1, 4 and 16 concurrent keep-alive clients and reports requests/s and p50/p99 latency per level.

    python bench/load.py [--quick] [--requests N] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import corpus  # noqa: E402 - the test corpus' deterministic prose generator

HOST = "127.0.0.1"
LEVELS = (1, 4, 16)
DATE = "26 Jul 2024"
# Requests per concurrency level (bounded): full run, --quick.
REQUESTS = {1: 400, 4: 800, 16: 1600}
QUICK_REQUESTS = {1: 60, 4: 120, 16: 240}
RUNS = 3  # runs per level (full run); the table shows the run of median requests/s

SERVER = r"""
import sys
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root))
from tokencounter.localhost import make_server
server = make_server(0, root=root, host="127.0.0.1")
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def chat_envelope(seed: int) -> bytes:
    """A ~1 KB chat (system + user, ~300-character answer) as APIM posts it; distinct text for every seed."""
    request = {
        "model": "Llama-3-8B",
        "messages": [
            {"role": "system", "content": f"[{seed}] " + corpus.prose(200, seed=10_000_000 + seed)},
            {"role": "user", "content": corpus.prose(800, seed=20_000_000 + seed)},
        ],
    }
    response = corpus.chat_response((corpus.prose(300, seed=30_000_000 + seed), "stop"))
    return json.dumps(
        {
            "RequestBody": json.dumps(request, ensure_ascii=False),
            "ResponseBody": json.dumps(response, ensure_ascii=False),
        }
    ).encode()


class Server:
    """The local host in a child process of ours; stopped (by its own handle) on exit."""

    def __init__(self) -> None:
        env = dict(
            os.environ, TOKENCOUNTER_DATE_STRING=DATE, TOKENCOUNTER_PRELOAD="true", TRANSFORMERS_VERBOSITY="error"
        )
        env.pop("TOKENCOUNTER_FUNCTION_KEY", None)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(ROOT)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"local host did not start: {line!r} {self.stderr()}")
        self.port = int(line)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                conn.request("GET", "/api/health")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("local host never became ready (/api/health)")

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.proc)
        self._stderr.close()


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a child, and kill it if it has not exited 10 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _client(port: int, bodies: list[bytes], latencies: list[float], errors: list[str], start: threading.Barrier):
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:  # connected before the clock starts: steady-state keep-alive traffic, as APIM's pooled connections
        conn.connect()
    except OSError as exc:  # counted; the first request connects again
        errors.append(f"connect: {type(exc).__name__}")
    start.wait()
    for body in bodies:
        began = time.perf_counter()
        try:
            conn.request("POST", "/api/tokencounter", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            continue
        latencies.append(time.perf_counter() - began)
        if response.status != 200 or b'"usage"' not in payload:
            errors.append(f"HTTP {response.status}")
    conn.close()


def run_level(port: int, clients: int, bodies: list[bytes]) -> dict:
    """Send `bodies` split across `clients` keep-alive connections, all started together."""
    shares = [bodies[i::clients] for i in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=_client, args=(port, share, latencies, errors, start)) for share in shares]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(bodies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "wall_s": wall,
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000 if ordered else float("nan"),
    }


def tiny_envelope(seed: int) -> bytes:
    """The smallest real request: what HTTP and the service's fixed work cost, to subtract."""
    request = {"model": "Llama-3-8B", "messages": [{"role": "user", "content": f"hi {seed}"}]}
    return json.dumps({"RequestBody": json.dumps(request), "ResponseBody": ""}).encode()


def sequential(port: int, bodies: list[bytes]) -> float:
    """Seconds to send `bodies` one after another on one keep-alive connection (as one client's conversation)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.connect()
    began = time.perf_counter()
    for body in bodies:
        conn.request("POST", "/api/tokencounter", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200 or b'"usage"' not in response.read():
            raise RuntimeError(f"conversation request failed: HTTP {response.status}")
    spent = time.perf_counter() - began
    conn.close()
    return spent


def conversation_over_http(port: int, conversations: list[list[bytes]]) -> dict:
    """Each conversation's requests in order, and as many tiny requests right after: their difference is what the
    conversation costs beyond HTTP and the per-request minimum (median over conversations, the first a warm-up)."""
    extra, seed = [], 90_000_000
    for i, bodies in enumerate(conversations):
        spent = sequential(port, bodies)
        tiny = sequential(port, [tiny_envelope(seed + k) for k in range(len(bodies))])
        seed += len(bodies)
        if i:
            extra.append(spent - tiny)
    return {"seconds": statistics.median(extra), "requests": len(conversations[0]), "runs": len(extra)}


def run(
    levels=LEVELS,
    requests: dict[int, int] | None = None,
    quick: bool = False,
    conversations: list[list[bytes]] | None = None,
) -> dict:
    """Requests/s and latency per concurrency level; with `conversations`, also their cost over HTTP."""
    requests = requests or (QUICK_REQUESTS if quick else REQUESTS)
    server = Server()
    try:
        seed = 0
        warmup = [chat_envelope(seed + i) for i in range(20)]
        seed += len(warmup)
        run_level(server.port, 1, warmup)
        results = []
        for clients in levels:
            n = requests.get(clients, max(requests.values()))
            runs = []
            for _ in range(1 if quick else RUNS):
                bodies = [chat_envelope(seed + i) for i in range(n)]  # distinct text: no segment cache hits
                seed += n
                runs.append(run_level(server.port, clients, bodies))
            # The run of median throughput: clients and host share 2 cores, and one run swings by a third.
            results.append(sorted(runs, key=lambda r: r["rps"])[len(runs) // 2])
        conversation = conversation_over_http(server.port, conversations) if conversations else None
        return {
            "levels": results,
            "server_peak_rss_mb": server.peak_rss_mb(),
            "payload_bytes": len(warmup[0]),
            "conversation": conversation,
        }
    finally:
        server.stop()


def table(result: dict) -> str:
    lines = [
        "| concurrent clients | requests | requests/s | p50 latency (ms) | p99 latency (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for level in result["levels"]:
        errors = f"{level['errors']} ({', '.join(level['error_kinds'])})" if level["errors"] else "0"
        lines.append(
            f"| {level['clients']} | {level['requests']} | {level['rps']:.0f} | {level['p50_ms']:.2f} | "
            f"{level['p99_ms']:.2f} | {errors} |"
        )
    rss = result.get("server_peak_rss_mb")
    lines.append("")
    lines.append(
        f"Payload: distinct ~1 KB chat envelopes ({result['payload_bytes']} bytes each), keep-alive "
        f"connections on 127.0.0.1; client threads run in the benchmark process; each level run {RUNS} times with "
        f"fresh text, the run of median requests/s shown (one run in --quick). Local host peak RSS: "
        f"{'n/a' if rss is None else f'{rss:.0f} MB'}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--requests", type=int, help="requests per concurrency level (default: 400/800/1600)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    args = parser.parse_args(argv)
    levels = tuple(int(c) for c in args.clients.split(","))
    requests = {c: args.requests for c in levels} if args.requests else None
    print(table(run(levels, requests, args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
