"""Bounded work for every request: the attacks of issue 11, each answered clearly, within budget and memory."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import GOLDEN_DATE, ROOT, local_host, post
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencounter import fastbpe, jsonio
from tokencounter.fastbpe import SegmentCache
from tokencounter.settings import Settings

FAST = Settings(date_string=GOLDEN_DATE, preload=False)
REFERENCE = Settings(date_string=GOLDEN_DATE, preload=False, fast_path=False)
MiB = 1 << 20
# The documented bound (README, "Limits"): a request's peak memory is at most TOKENCOUNTER_MAX_RENDER_RATIO + 4
# times its body (12 at the defaults), plus 16 MiB.
MEMORY_MULTIPLE = FAST.max_render_ratio + 4


def envelope(request: dict | str, response: dict | str | None = None) -> bytes:
    """What APIM posts: the client's request and the model's response as JSON strings."""
    out = {"RequestBody": request if isinstance(request, str) else json.dumps(request, ensure_ascii=False)}
    if response is not None:
        out["ResponseBody"] = response if isinstance(response, str) else json.dumps(response, ensure_ascii=False)
    return json.dumps(out, ensure_ascii=False).encode()


def user(content: str, **extra) -> dict:
    return {"model": "llama-3.1", "messages": [{"role": "user", "content": content}], **extra}


def answer(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def timed(body: bytes, settings: Settings = FAST):
    started = time.perf_counter()
    reply = post(body, settings)
    return reply, time.perf_counter() - started


# --- 1. a million-character whitespace run (a panic in tiktoken's regex) ------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("run", [" ", "\t", "\u00a0"])
def test_a_million_character_whitespace_run_is_counted_over_http(run):
    """The repro, through the local host: answered 200, counted as the AutoTokenizer reference counts it."""
    text = "a" + run * 1_000_000 + "b"
    body = envelope(user(text), answer(text))
    with local_host(FAST) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/api/tokencounter", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = json.loads(response.read())
    assert response.status == 200, payload
    reference = post(body, REFERENCE)
    assert reference.status == 200 and payload["usage"] == reference.payload["usage"]


class Panic(BaseException):
    """What pyo3 raises for a Rust panic: a BaseException, not an Exception."""


def test_a_native_panic_is_a_json_error_not_a_dropped_connection(monkeypatch):
    def panic(self, text, deadline=None):
        raise Panic("stack overflow")

    monkeypatch.setattr(fastbpe.FastBackend, "count_plain", panic)
    body = envelope(user("hello"), answer("hi"))
    with local_host(FAST) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/api/tokencounter", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = json.loads(response.read())
        assert response.status == 500 and payload["error"]["code"] == "internal_error"
        # The same connection still serves the next request.
        connection.request("GET", "/api/health")
        assert connection.getresponse().status in (200, 503)


# --- 2. the time budget, inside rendering and the BPE -------------------------------------------------------


def deep_tools(zeros: int, depth: int = 60) -> dict:
    """The repro: tool parameters nested `depth` deep around `zeros` zeros (tojson(indent=4) multiplies it)."""
    node: object = [0] * zeros
    for _ in range(depth - 2):
        node = {"x": node}
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": node}}
    return user("hi", tools=[tool])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("zeros", [1_000_000, 100_000])
def test_deeply_nested_tools_are_refused_within_budget(zeros):
    """2 MB nested 60 deep rendered 120 times larger and took 48 s: now a 413 naming the setting, in time."""
    body = envelope(deep_tools(zeros))
    reply, seconds = timed(body)
    assert reply.status == 413 and reply.payload["error"]["code"] == "payload_too_large", reply.payload
    assert "TOKENCOUNTER_MAX_RENDER_RATIO" in reply.payload["error"]["message"]
    assert seconds < FAST.time_budget_ms / 1000 + 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("model", "text"),
    [
        ("llama-3.1", "<|" * 200_000 + "|>"),
        ("llama-3.1", "<|eot_id" * 50_000 + "|>"),
        ("Qwen/Qwen3-8B", "<" * 300_000 + ">"),
        ("Qwen/Qwen3-8B", "<think" * 60_000 + "</think>"),
    ],
)
def test_openers_without_a_near_closer_are_split_in_linear_time(model, text):
    """The added-token search looked for the closer as far as the text went, from every opener: 160 KB of "<|"
    then "|>" took 17.7 s, past the budget. A token is never longer than the longest one: the search stops there."""
    request = {**user(text), "model": model}
    reply, seconds = timed(envelope(request))
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"] == post(envelope(request), REFERENCE).payload["usage"]  # AutoTokenizer's count
    assert seconds < FAST.time_budget_ms / 1000 + 2


@pytest.mark.timeout(120)
def test_a_long_run_of_combining_marks_is_normalized_in_linear_time():
    """Qwen normalizes to NFC, and CPython orders a run of combining marks by insertion sort: 600,000 alternating
    marks took 274 s. Ordered first (canonically equivalent, so the same NFC), they count in well under a second,
    as AutoTokenizer (what vLLM runs) counts them."""
    request = {**user("a" + "\u0301\u0323" * 300_000), "model": "Qwen/Qwen3-8B"}
    reply, seconds = timed(envelope(request))
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"] == post(envelope(request), REFERENCE).payload["usage"]
    assert seconds < FAST.time_budget_ms / 1000 + 2


def test_tools_of_real_depth_still_count():
    """The render bound leaves real schemas alone: 50 tools nested 10 deep (5 times their size rendered)."""

    def schema(depth):
        if depth == 0:
            return {"type": "string"}
        return {"type": "object", "properties": {"a": schema(depth - 1), "b": {"type": "integer"}}}

    tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": schema(10)}} for i in range(50)]
    fast, reference = post(envelope(user("hi", tools=tools)), FAST), post(envelope(user("hi", tools=tools)), REFERENCE)
    assert fast.status == 200 and fast.payload["usage"] == reference.payload["usage"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "where, text",
    [("prompt", "0 " * 3_000_000), ("completion", "0 " * 3_000_000), ("prompt", "word " * 1_200_000)],
)
def test_the_budget_stops_the_bpe_between_segments(where, text):
    """A 6 MB text takes over a second of BPE: with a 150 ms budget it stops near 150 ms, not at the end."""
    settings = Settings(date_string=GOLDEN_DATE, preload=False, time_budget_ms=150)
    post(envelope(user("warm up")), settings)
    body = envelope(user(text), None) if where == "prompt" else envelope(user("hi"), answer(text))
    reply, seconds = timed(body, settings)
    assert reply.status == 413 and reply.payload["error"]["code"] == "time_budget_exceeded", reply.payload
    assert seconds < 0.15 + 0.5


# --- 3. memory: a documented multiple of the body -----------------------------------------------------------

HEAD = '{"model": "llama-3.1", "messages": [{"role": "user", "content": "hi"}], "ignored": ['


def filler(item: str, size: int = 8 * MiB - 4096) -> str:
    """A request whose ignored field repeats `item` so that the envelope is about `size` bytes."""
    escaped = len(json.dumps(item)) - 2 + 1  # as it sits in the RequestBody string, with its comma
    return HEAD + ",".join([item] * (size // escaped - 40)) + "]}"


HOSTILE = {
    "empty_arrays": (lambda: envelope(filler("[]")), 413),
    "empty_objects": (lambda: envelope(filler("{}")), 413),
    "short_strings": (lambda: envelope(filler('"ab"')), 200),
    "short_strings_and_a_surrogate": (lambda: envelope(filler('"ab"'), json.dumps(answer("\ud800"))), 200),
    "numbers": (lambda: envelope(filler("128000")), 200),
    "emoji_prompt": (lambda: envelope(user("🦙 " * ((8 * MiB - 4096) // 5 - 100))), 200),
    "deep_tools": (lambda: envelope(deep_tools(2_700_000)), 413),
    # The smallest stream events, a batch decoded per call (responses._from_batches), each a chunk and a choice;
    # their escapes once made the JSON-string regex keep 183 MiB of state.
    "tiny_stream_events": (lambda: envelope(user("hi"), events('data: {"choices":[{}]}\n\n')), 200),
    "empty_stream_events": (lambda: envelope(user("hi"), events("data: {}\n\n")), 200),
}


def events(event: str, size: int = 8 * MiB - 4096) -> str:
    """A stream of one event repeated until the envelope is about `size` bytes."""
    return event * (size // (len(json.dumps(event)) - 2))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_peak_memory_is_a_bounded_multiple_of_the_body(name):
    make, status = HOSTILE[name]
    body = make()
    assert 7 * MiB < len(body) <= FAST.max_body_bytes
    post(envelope(user("warm up"), answer("ok")), FAST)
    tracemalloc.start()
    try:
        reply = post(body, FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.status == status, reply.payload
    assert peak <= MEMORY_MULTIPLE * len(body) + 16 * MiB, f"{peak / MiB:.0f} MiB for a {len(body) / MiB:.1f} MiB body"


FOUR_AT_ONCE = """
import json, sys, threading
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
from test_bounds import HOSTILE, FAST, post, envelope, user, answer

def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024

post(envelope(user("warm up"), answer("ok")), FAST)
bodies = [HOSTILE[n][0]() for n in ("short_strings_and_a_surrogate", "numbers", "emoji_prompt", "deep_tools")]
before = hwm()
threads = [threading.Thread(target=post, args=(b, FAST)) for b in bodies]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"before": before, "growth": hwm() - before}))
"""


@pytest.mark.timeout(180)
def test_four_concurrent_8_mib_bodies_stay_under_1_gb():
    """The repro (four at once reached 3.1 GB), in a fresh process: the peak RSS grows by less than 1 GB."""
    out = subprocess.run(
        [sys.executable, "-c", FOUR_AT_ONCE, str(ROOT)], capture_output=True, text=True, timeout=170, check=True
    )
    growth = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    assert growth < 1024 * MiB, f"peak RSS grew {growth / MiB:.0f} MiB"
    print(f"four 8 MiB bodies at once: peak RSS +{growth / MiB:.0f} MiB")


def test_the_segment_cache_holds_what_it_is_documented_to_hold():
    """Charged for what its entries really cost: 100 K distinct 64-character texts in a 4 MiB cache take 4 MiB."""
    cache = SegmentCache(4 * MiB)
    tracemalloc.start()
    try:
        for i in range(100_000):
            cache.put(f"{i:064d}", i)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache) < 100_000  # it did evict
    assert held <= 4 * MiB * 1.05, f"{held / MiB:.1f} MiB held"


# --- 5. the small ones ------------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "1E400", "123456789e999"])
@pytest.mark.parametrize("where", ["request", "response", "envelope"])
def test_numbers_past_a_float_are_refused(literal, where):
    request = json.dumps(user("hi"))[:-1] + f', "temperature": {literal}}}'
    response = '{"choices": [], "x": ' + literal + "}"
    if where == "envelope":
        body = ('{"RequestBody": ' + json.dumps(json.dumps(user("hi"))) + ', "t": ' + literal + "}").encode()
    else:
        body = envelope(request if where == "request" else user("hi"), response if where == "response" else None)
    reply = post(body, FAST)
    assert reply.status == 400 and reply.payload["error"]["code"] == "invalid_json", reply.payload
    assert "finite" in reply.payload["error"]["message"] and literal not in reply.payload["error"]["message"]


@pytest.mark.parametrize(
    "usage, trusted",
    [
        ({"prompt_tokens": 12, "completion_tokens": 3}, True),
        ({"prompt_tokens": 10_000_000, "completion_tokens": 0}, True),  # Llama 4 Scout's whole context
        ({"prompt_tokens": 2**24 + 1, "completion_tokens": 3}, False),
        ({"prompt_tokens": 12, "completion_tokens": 2**53}, False),
    ],
)
def test_absurd_upstream_usage_is_recounted_not_trusted(usage, trusted):
    reply = post(envelope(user("hello"), {**answer("hi"), "usage": usage}), FAST)
    assert reply.status == 200
    assert reply.payload["source"] == ("upstream" if trusted else "counted")
    if not trusted:
        counted = post(envelope(user("hello"), answer("hi")), FAST).payload["usage"]
        assert reply.payload["usage"] == counted


def test_the_container_bound_counts_only_structure_not_brackets_in_text():
    """Brackets inside strings (code, markdown) are text: a prompt of 300 K "[" is counted, not refused."""
    text = "[{" * 150_000
    assert jsonio.containers(json.dumps({"a": text})) == 1
    reply = post(envelope(user(text)), FAST)
    assert reply.status == 200 and reply.payload["usage"]["prompt_tokens"] > 0


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(max_size=40),
    run=st.sampled_from([" ", "\t", "\n", "\u00a0", " \n", "\u2003", "\r\n"]),
    length=st.integers(fastbpe.LONG_WHITESPACE - 3, fastbpe.LONG_WHITESPACE * 2),
    padding=st.integers(0, 30_000),
    after=st.text(max_size=40),
)
def test_the_long_whitespace_shortcut_agrees_with_the_search(before, run, length, padding, after):
    """has_long_whitespace skips the full search when no stretch between two sample points is whitespace: the
    answer is the search's, for runs just under and over the length, anywhere in the text."""
    text = "x" * padding + before + run * (length // len(run)) + after
    assert fastbpe.has_long_whitespace(text) == (fastbpe._LONG_WHITESPACE.search(text) is not None)
