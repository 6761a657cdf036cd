"""A bounded soak test of the local host: C keep-alive clients for N seconds, real-shaped and bad requests mixed.

    python bench/soak.py [--seconds 60] [--concurrency 8] [--max-body-bytes 1048576]
    python bench/soak.py --quick            # 5 seconds
    python bench/soak.py --hostile          # add the attacks of issue 11 (8 MiB limit, 300 slow clients)

Starts `python -m tokencounter.localhost --port N` from the repository root in a child process (127.0.0.1 only,
TOKENCOUNTER_FUNCTION_KEY unset, a small TOKENCOUNTER_MAX_BODY_BYTES), waits for /api/health to answer 200, counts
a fixed probe set (every case of tests/corpus.py), then drives the clients: corpus cases, fresh distinct chats and
bad inputs interleaved (invalid JSON, bad roles, image parts, lone surrogates, NaN, deep nesting, template
refusals, bodies over the limit, wrong methods, unknown paths). Every answer is checked: the expected status for
its kind, and for corpus cases the exact counts of tests/golden/counts.json. At the end the probe set is counted
again. Prints a markdown summary; exits 1 on any 5xx, dropped connection, unexpected status, wrong count, client
that did not stop, or probe count that changed, and 2 if the host could not be started.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
from load import stop_process  # bench/load.py, beside this script

HOST = "127.0.0.1"
DATE = "26 Jul 2024"  # the golden counts' date (Llama 3.1+ templates render it)
PATH = "/api/tokencounter"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients send (default 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive clients (default 8)")
    parser.add_argument("--quick", action="store_true", help="a 5-second smoke run (same as --seconds 5)")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=1024 * 1024,
        help="TOKENCOUNTER_MAX_BODY_BYTES for the host (default 1 MiB)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="repository root (default: this file's parent's parent)",
    )
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="add whitespace runs, deeply nested tools, 8 MiB bodies and slow clients (sets the body limit to 8 MiB)",
    )
    parser.add_argument("--slow-clients", type=int, default=300, help="with --hostile: slow connections held open")
    parser.add_argument("--keep-log", action="store_true", help="keep the host's log file and print its path")
    parser.add_argument("--only", metavar="REGEX", help="send only the request kinds whose name matches (diagnosis)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 5.0
    if args.hostile and args.max_body_bytes == 1024 * 1024:
        args.max_body_bytes = 8 * 1024 * 1024
    if args.seconds <= 0 or args.concurrency < 1:
        parser.error("--seconds must be > 0 and --concurrency >= 1")
    return args


# --------------------------------------------------------------------------- the request mix


class Kind:
    def __init__(self, name, weight, statuses, make, method="POST", path=PATH, fresh_connection=False, golden=None):
        self.name, self.weight, self.statuses, self.make = name, weight, set(statuses), make
        self.method, self.path, self.fresh_connection, self.golden = method, path, fresh_connection, golden


def build_mix(corpus, golden: dict, max_body: int) -> list[Kind]:
    def dumps(value) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    def env(request, response=None) -> bytes:
        out = {"RequestBody": json.dumps(request, ensure_ascii=False)}
        if response is not None:
            out["ResponseBody"] = response if isinstance(response, str) else json.dumps(response, ensure_ascii=False)
        return dumps(out)

    def chat(content="Hello", role="user"):
        return {"model": "Llama-3-8B", "messages": [{"role": role, "content": content}]}

    def fresh_chat(rng: random.Random) -> bytes:
        """A distinct ~1-4 KB conversation: real traffic is mostly new text (segment-cache misses)."""
        seed = rng.randrange(10**9)
        request = {
            "model": rng.choice(["Llama-3-8B", "meta-llama/Llama-3.1-8B-Instruct", "llama3.2"]),
            "messages": [
                {"role": "system", "content": corpus.prose(rng.randint(50, 300), seed)},
                {"role": "user", "content": corpus.prose(rng.randint(200, 3000), seed + 1)},
            ],
        }
        response = corpus.chat_response((corpus.prose(rng.randint(50, 1000), seed + 2), "stop"))
        if rng.random() < 0.3:
            text = response["choices"][0]["message"]["content"]
            response = corpus.sse(corpus.delta_chunks(corpus.split_every(text, 5), "stop"))
        return env(request, response)

    kinds = []
    for name, case in sorted(corpus.CASES.items()):
        body = dumps(corpus.envelope(case))
        kinds.append(Kind(f"corpus:{name}", 2, {200}, lambda rng, b=body: b, golden=golden[name]))
    oversized = env(chat("x" * (max_body + 10_000)))
    kinds += [
        Kind("fresh_chat", 20, {200}, fresh_chat),
        Kind("health", 2, {200}, lambda rng: None, method="GET", path="/api/health"),
        Kind("invalid_json", 3, {400}, lambda rng: b'{"RequestBody": {"messages": [oops'),
        Kind("empty_body", 1, {400}, lambda rng: b""),
        # Any role name is rendered, as vLLM renders it; a role that is not a string is refused.
        Kind("bad_role", 3, {400}, lambda rng: env(chat(role=rng.choice([1, None, ["user"], {"r": 1}])))),
        # Families embedded since issue 15 are counted (Gemma's 2.7 s transformers load is left out: under this load it
        # can outlast the time budget, a 503 with Retry-After); one whose tokenizer is not here is refused.
        Kind("other_family", 2, {200}, lambda rng: env({**chat(), "model": rng.choice(["Qwen2.5", "Qwen3-8B"])})),
        Kind("unknown_family", 1, {422}, lambda rng: env({**chat(), "model": rng.choice(["Phi-3.5", "Qwen2.5-VL"])})),
        Kind(
            "image_part",
            3,
            {422},
            lambda rng: env(
                chat(
                    content=[
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ]
                )
            ),
        ),
        Kind(
            "lone_surrogate",
            1,
            {400},
            lambda rng: b'{"RequestBody": {"messages": [{"role": "user", "content": "a\\ud800b"}]}}',
        ),
        Kind(
            "nan",
            1,
            {400},
            lambda rng: b'{"RequestBody": {"messages": [{"role": "user", "content": "x"}], "temperature": NaN}}',
        ),
        Kind("too_deep", 1, {400}, lambda rng: b'{"RequestBody": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        Kind(
            "template_refuses",
            1,
            {422},
            lambda rng: env(
                {
                    "model": "llama-3.1",
                    "messages": [
                        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}] * 2}
                    ],
                }
            ),
        ),
        Kind("sse_garbage", 1, {400}, lambda rng: env(chat(), "data: {not json\r\n\r\ndata: [DONE]\r\n\r\n")),
        Kind("oversized", 1, {413}, lambda rng: oversized, fresh_connection=True),
        Kind("wrong_method_get", 1, {405}, lambda rng: None, method="GET"),
        Kind("wrong_method_put", 1, {405}, lambda rng: env(chat()), method="PUT"),
        Kind("wrong_method_delete", 1, {405}, lambda rng: None, method="DELETE"),
        Kind("unknown_path", 1, {404}, lambda rng: env(chat()), path="/api/nothing-here"),
    ]
    return kinds


def hostile_mix(max_body: int) -> list[Kind]:
    """The shapes that broke the service (issue 11), each with the answer it must get."""

    def env(request, response=None) -> bytes:
        out = {"RequestBody": json.dumps(request, ensure_ascii=False)}
        if response is not None:
            out["ResponseBody"] = json.dumps(response, ensure_ascii=False)
        return json.dumps(out, ensure_ascii=False).encode()

    def chat(content, **extra):
        return {"model": "llama-3.1", "messages": [{"role": "user", "content": content}], **extra}

    def answer(content):
        return {"choices": [{"index": 0, "message": {"content": content}, "finish_reason": "stop"}]}

    def whitespace(rng):
        run = rng.choice([" ", "\t", "\u00a0"]) * 1_000_000
        return env(chat("a" + run + "b"), answer("c" + run)) if rng.random() < 0.5 else env(chat("a" + run + "b"))

    def deep_tools(zeros):
        node = [0] * zeros
        for _ in range(58):
            node = {"x": node}
        return env(chat("hi", tools=[{"type": "function", "function": {"name": "f", "parameters": node}}]))

    def filler(item: str) -> bytes:
        head = '{"model": "llama-3.1", "messages": [{"role": "user", "content": "hi"}], "ignored": ['
        count = (max_body - 4096) // (len(json.dumps(item)) - 1) - 40
        return json.dumps({"RequestBody": head + ",".join([item] * count) + "]}"}).encode()

    deep, arrays, strings = deep_tools(min(1_000_000, max_body // 3)), filler("[]"), filler('"ab"')
    return [
        # 413 time_budget_exceeded when eight clients' work stretches its ~2 s past the 8 s budget.
        Kind("hostile:whitespace_run", 2, {200, 413}, whitespace),
        Kind("hostile:deep_tools", 1, {413}, lambda rng: deep),
        Kind("hostile:max_body_of_empty_arrays", 1, {413}, lambda rng: arrays),
        Kind("hostile:max_body_of_short_strings", 1, {200}, lambda rng: strings),
        Kind("hostile:infinite_float", 1, {400}, lambda rng: env(chat("x"))[:-2] + b', "t": 1e999}"}'),
    ]


def slow_clients(port: int, n: int, end: float, opened: Counter) -> None:
    """`n` connections that send a request's head and then one byte of body at a time, far apart: each holds a
    connection until the host's idle timeout closes it, then is opened again."""
    head = f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n{{".encode()
    socks: list[socket.socket] = []
    while time.monotonic() < end:
        socks = [s for s in socks if s.fileno() != -1]
        while len(socks) < n:
            try:
                sock = socket.create_connection((HOST, port), timeout=5)
                sock.sendall(head)
                socks.append(sock)
                opened["opened"] += 1
            except OSError:
                opened["refused"] += 1
                break
        for sock in list(socks):
            try:
                sock.sendall(b" ")
            except OSError:
                sock.close()
                opened["closed by host"] += 1
        time.sleep(5)
    for sock in socks:
        sock.close()


# --------------------------------------------------------------------------- the host


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Host:
    """`python -m tokencounter.localhost` in a child process of ours, stopped by its own handle."""

    def __init__(self, root: Path, max_body: int) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
            TOKENCOUNTER_MAX_BODY_BYTES=str(max_body),
            TOKENCOUNTER_DATE_STRING=DATE,
            TOKENCOUNTER_PRELOAD="true",
            TRANSFORMERS_VERBOSITY="error",
            PYTHONUNBUFFERED="1",
        )
        env.pop("TOKENCOUNTER_FUNCTION_KEY", None)
        self.log = tempfile.NamedTemporaryFile(prefix="tokencounter-load-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokencounter.localhost", "--host", HOST, "--port", str(self.port)],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.process = psutil.Process(self.proc.pid)

    def wait_healthy(self, timeout: float = 120.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the local host exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", "/api/health")
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"/api/health was not 200 within {timeout:.0f} s:\n{self.tail()}")

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def tail(self, n: int = 4000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def log_counts(self) -> dict:
        text = Path(self.log.name).read_text(errors="replace")
        loads = Counter(m.group(1) for m in re.finditer(r"tokenizer (\S+) loaded in", text))
        return {
            "Traceback": text.count("Traceback"),
            "ERROR": text.count(" ERROR "),
            "lines": text.count("\n"),
            "loads": loads,
        }

    def stop(self, keep_log: bool) -> None:
        stop_process(self.proc)
        self.log.close()
        if not keep_log:
            os.unlink(self.log.name)


# --------------------------------------------------------------------------- clients


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status = Counter()
        self.by_kind = Counter()
        self.unexpected = Counter()
        self.dropped = Counter()
        self.wrong_counts = Counter()
        self.latencies: list[float] = []
        self.worst: dict[str, float] = {}

    def merge(self, other: Stats) -> None:
        with self.lock:
            for name in ("status", "by_kind", "unexpected", "dropped", "wrong_counts"):
                getattr(self, name).update(getattr(other, name))
            self.latencies += other.latencies
            for name, seconds in other.worst.items():
                self.worst[name] = max(seconds, self.worst.get(name, 0.0))


def send(conn: http.client.HTTPConnection, kind: Kind, body: bytes | None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(kind.method, kind.path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def send_oversized(port: int, kind: Kind, body: bytes):
    """A body the host refuses before reading: a connection of its own, closed by the host after the 413."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        try:
            conn.request(kind.method, kind.path, body=body, headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the host answered before the body was all sent: read the answer it sent
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def client(port: int, kinds: list[Kind], seed: int, end: float, total: Stats) -> None:
    rng = random.Random(seed)
    weights = [k.weight for k in kinds]
    stats = Stats()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    while time.monotonic() < end:
        kind = rng.choices(kinds, weights)[0]
        body = kind.make(rng)
        started = time.perf_counter()
        try:
            if kind.fresh_connection:
                status, payload = send_oversized(port, kind, body)
            else:
                status, payload = send(conn, kind, body)
        except (OSError, http.client.HTTPException) as exc:
            stats.dropped[f"{kind.name}: {type(exc).__name__}"] += 1
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
            continue
        seconds = time.perf_counter() - started
        stats.latencies.append(seconds)
        stats.worst[kind.name] = max(seconds, stats.worst.get(kind.name, 0.0))
        stats.status[status] += 1
        stats.by_kind[kind.name] += 1
        if status not in kind.statuses:
            stats.unexpected[f"{kind.name} -> {status}"] += 1
        elif kind.golden is not None:
            usage = json.loads(payload)["usage"]
            if (usage["prompt_tokens"], usage["completion_tokens"]) != (
                kind.golden["prompt_tokens"],
                kind.golden["completion_tokens"],
            ):
                stats.wrong_counts[kind.name] += 1
    conn.close()
    total.merge(stats)


def probe(port: int, corpus) -> dict[str, tuple]:
    """Every corpus case once, on one connection: (status, prompt, completion) per case."""
    out = {}
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        for name, case in sorted(corpus.CASES.items()):
            conn.request(
                "POST",
                PATH,
                body=json.dumps(corpus.envelope(case)).encode(),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            payload = json.loads(response.read())
            usage = payload.get("usage") or {}
            out[name] = (response.status, usage.get("prompt_tokens"), usage.get("completion_tokens"))
    finally:
        conn.close()
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(args.root / "tests"))
    import corpus  # noqa: PLC0415 - tests/corpus.py: the real-shaped cases

    golden = json.loads((args.root / "tests" / "golden" / "counts.json").read_text(encoding="utf-8"))
    kinds = build_mix(corpus, golden, args.max_body_bytes)
    if args.hostile:
        kinds += hostile_mix(args.max_body_bytes)
    if args.only:
        kinds = [k for k in kinds if re.search(args.only, k.name)]
        if not kinds:
            print(f"no request kind matches {args.only!r}", file=sys.stderr)
            return 2
    try:
        host = Host(args.root, args.max_body_bytes)
    except OSError as exc:
        print(f"could not start the local host: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            ready_s = host.wait_healthy()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        rss_ready = host.rss_mb()
        before = probe(host.port, corpus)
        rss_start = host.rss_mb()
        peak = [rss_start]
        stats = Stats()
        end = time.monotonic() + args.seconds
        threads = [
            threading.Thread(
                target=client, args=(host.port, kinds, 1000 + i, end, stats), daemon=True, name=f"load-client-{i}"
            )
            for i in range(args.concurrency)
        ]
        slow = Counter()
        slow_thread = threading.Thread(
            target=slow_clients, args=(host.port, args.slow_clients, end, slow), daemon=True, name="slow-clients"
        )
        if args.hostile:
            slow_thread.start()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) and time.monotonic() < end + 60:
            peak.append(host.rss_mb())
            for thread in threads:
                thread.join(timeout=0.5 / len(threads))
        wall = time.perf_counter() - started
        stuck = sum(t.is_alive() for t in threads)
        if args.hostile:
            slow_thread.join(timeout=15)
        after = probe(host.port, corpus)
        rss_end = host.rss_mb()
        host_alive = host.proc.poll() is None
        logs = host.log_counts()
    finally:
        host.stop(args.keep_log)

    total = sum(stats.status.values())
    five_xx = sum(n for status, n in stats.status.items() if status >= 500)
    dropped = sum(stats.dropped.values())
    unexpected = sum(stats.unexpected.values())
    wrong = sum(stats.wrong_counts.values())
    stable = before == after
    probe_exact = all(before[n][1:] == (golden[n]["prompt_tokens"], golden[n]["completion_tokens"]) for n in before)
    ok = five_xx == 0 and dropped == 0 and unexpected == 0 and wrong == 0 and stable and stuck == 0 and host_alive

    worst_good = max((v for k, v in stats.worst.items() if k.startswith(("corpus:", "fresh_chat"))), default=0)
    print(f"## Load test: {args.concurrency} clients for {args.seconds:g} s against the local host\n")
    print("| metric | value |\n|---|---|")
    rows = [
        ("result", "PASS" if ok else "FAIL"),
        ("requests answered", f"{total} ({total / wall:.0f}/s over {wall:.1f} s)"),
        ("concurrency", f"{args.concurrency} keep-alive clients (oversized bodies on their own connections)"),
        ("status counts", ", ".join(f"{s}: {n}" for s, n in sorted(stats.status.items()))),
        ("5xx", five_xx),
        ("dropped connections / client exceptions", f"{dropped} {dict(stats.dropped) or ''}".strip()),
        ("unexpected statuses", f"{unexpected} {dict(stats.unexpected) or ''}".strip()),
        ("corpus answers with wrong counts", f"{wrong} {dict(stats.wrong_counts) or ''}".strip()),
        (
            "latency p50 / p99",
            f"{percentile(stats.latencies, 0.5) * 1000:.1f} ms / {percentile(stats.latencies, 0.99) * 1000:.1f} ms",
        ),
        (
            "host RSS ready / start / end / peak",
            f"{rss_ready:.0f} / {rss_start:.0f} / {rss_end:.0f} / {max(peak):.0f} MB",
        ),
        (f"probe counts ({len(before)} corpus cases) start == end", f"{stable} (exact vs golden: {probe_exact})"),
        ("worst request time (any kind)", f"{max(stats.worst.values(), default=0) * 1000:.0f} ms"),
        ("worst good request time (corpus, fresh chats)", f"{worst_good * 1000:.0f} ms"),
        ("clients that did not stop", stuck),
        ("host alive at the end", host_alive),
        ("host log", f"{logs['lines']} lines, {logs['ERROR']} ERROR, {logs['Traceback']} Traceback"),
        ("tokenizer loads (whole run)", f"{sum(logs['loads'].values())} {dict(logs['loads'])}"),
        ("host ready after", f"{ready_s:.1f} s; TOKENCOUNTER_MAX_BODY_BYTES={args.max_body_bytes}"),
    ]
    if args.hostile:
        rows.append(("slow clients (held open, trickling a body)", f"{args.slow_clients}: {dict(slow)}"))
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| kind | requests | worst time (ms) |\n|---|---:|---:|")
    for name, n in sorted(stats.by_kind.items(), key=lambda kv: (-kv[1], kv[0])):
        if not name.startswith("corpus:"):
            print(f"| {name} | {n} | {stats.worst.get(name, 0) * 1000:.0f} |")
    corpus_total = sum(n for name, n in stats.by_kind.items() if name.startswith("corpus:"))
    corpus_worst = max((v for k, v in stats.worst.items() if k.startswith("corpus:")), default=0)
    print(f"| corpus cases ({len(corpus.CASES)} kinds) | {corpus_total} | {corpus_worst * 1000:.0f} |")
    reloads = {name: n for name, n in logs["loads"].items() if n > 1}
    if reloads:
        print(f"\nWARNING: tokenizers loaded more than once (evicted and reloaded): {reloads}")
    if rss_end > 2 * rss_start:
        print(f"\nWARNING: host RSS grew from {rss_start:.0f} MB to {rss_end:.0f} MB")
    if not stable:
        changed = {n: (before[n], after[n]) for n in before if before[n] != after.get(n)}
        print(f"\nprobe counts that changed: {changed}")
    if args.keep_log:
        print(f"\nhost log: {host.log.name}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
