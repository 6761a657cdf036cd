"""Counting under threads, as the Functions Python worker runs sync handlers: same answers as sequential, no errors.

Both backends are driven by 16 threads sharing one loaded tokenizer: the tiktoken fast path (default settings)
and the AutoTokenizer path (`fast_path=False`, where an unlocked Rust tokenizer can raise
`RuntimeError: Already borrowed`). First loads race too: 16 threads asking for a model nobody has loaded yet
must load it once and agree on the answer.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import GOLDEN, GOLDEN_DATE, chat, env
from corpus import CASES, envelope

from tokencounter import registry, service
from tokencounter.fastbpe import SegmentCache, entry_bytes
from tokencounter.registry import REGISTRY, resolve
from tokencounter.settings import Settings

THREADS = 16
REQUESTS = 640  # per backend: 40 rounds of 16 threads

FAST = Settings(date_string=GOLDEN_DATE, preload=False)
HF = Settings(date_string=GOLDEN_DATE, preload=False, fast_path=False)

# Rejected inputs in the mix too: an error answer must be as stable under threads as a count.
BAD = {
    "bad_json": b"{oops",
    "bad_role": json.dumps(env(chat(role="wizard"))).encode(),
    "image_part": json.dumps(env(chat(content=[{"type": "image_url", "image_url": {"url": "data:,"}}]))).encode(),
    "surrogate": b'{"RequestBody": {"messages": [{"role": "user", "content": "a\\ud800"}]}}',
    "too_deep": b'{"RequestBody": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "template_refuses": json.dumps(
        env(
            {
                "model": "llama-3.1",
                "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}] * 2}],
            }
        )
    ).encode(),
}
BODIES = {name: json.dumps(envelope(case)).encode() for name, case in CASES.items()} | BAD


def workload(seed: int = 7) -> list[str]:
    """A realistic shuffled mix: every corpus case and every rejected input, repeated to REQUESTS requests."""
    names = sorted(BODIES)
    rng = random.Random(seed)
    mix = [names[i % len(names)] for i in range(REQUESTS)]
    rng.shuffle(mix)
    return mix


def answer(name: str, settings: Settings) -> tuple[int, str]:
    reply = service.handle("POST", BODIES[name], settings)
    return reply.status, json.dumps(reply.payload, sort_keys=True)


def run_threaded(names: list[str], settings: Settings) -> list[tuple[int, str]]:
    """Every request on a 16-thread pool; the first 16 start together behind a barrier for maximal contention."""
    barrier = threading.Barrier(THREADS)

    def one(i_name):
        i, name = i_name
        if i < THREADS:
            barrier.wait(timeout=60)
        return answer(name, settings)

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, enumerate(names)))


@pytest.fixture
def clean_registry():
    """An empty tokenizer cache for the test, and an empty one after it (later tests reload what they use)."""
    REGISTRY.clear()
    yield REGISTRY
    REGISTRY.clear()


def check_against_sequential(settings: Settings, fast: bool) -> None:
    names = workload()
    sequential = {name: answer(name, settings) for name in sorted(BODIES)}
    # The cache key is the model spec, not the settings: prove the backend under test is the one we meant
    # (every Llama 3 tokenizer on the fast path; everything on AutoTokenizer with fast_path=False).
    for name in CASES:
        spec = resolve(CASES[name]["request"].get("model"), settings)
        backend = REGISTRY.get(spec, settings)
        if not fast or spec.name.startswith("llama-3"):
            assert backend.fast is fast, (name, spec.name)
    started = time.perf_counter()
    threaded = run_threaded(names, settings)
    elapsed = time.perf_counter() - started
    pairs = zip(names, threaded, strict=True)
    mismatches = [(name, got, sequential[name]) for name, got in pairs if got != sequential[name]]
    assert mismatches == [], mismatches[:3]
    statuses = {status for status, _ in threaded}
    assert max(statuses) < 500, statuses
    # The corpus still counts exactly what Meta's tokenizer says (tests/golden) when counted concurrently.
    for name in CASES:
        status, payload = sequential[name]
        usage = json.loads(payload)["usage"]
        assert status == 200
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            GOLDEN[name]["prompt_tokens"],
            GOLDEN[name]["completion_tokens"],
        ), name
    print(f"{len(names)} requests on {THREADS} threads (fast={fast}) in {elapsed:.2f} s")


@pytest.mark.timeout(180)
def test_fast_path_threads_equal_sequential(clean_registry):
    check_against_sequential(FAST, fast=True)


@pytest.mark.timeout(300)
def test_autotokenizer_path_threads_equal_sequential(clean_registry):
    check_against_sequential(HF, fast=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("settings", [FAST, HF], ids=["fast", "autotokenizer"])
def test_concurrent_first_load_loads_once(settings, clean_registry, monkeypatch):
    """16 threads hit a model nobody has loaded: one load, every thread gets the same count."""
    calls: list[str] = []
    real = registry.load_backend

    def counting_load(spec, s):
        calls.append(spec.name)
        time.sleep(0.2)  # widen the race window: the other 15 threads arrive while the load is in progress
        return real(spec, s)

    monkeypatch.setattr(registry, "load_backend", counting_load)
    name = "llama31_tools_request"
    assert REGISTRY.loaded() == []
    replies = run_threaded([name] * THREADS, settings)
    assert calls == ["llama-3.1"]
    assert len(set(replies)) == 1, replies
    status, payload = replies[0]
    assert status == 200 and json.loads(payload)["usage"]["prompt_tokens"] == GOLDEN[name]["prompt_tokens"]
    assert REGISTRY.get(resolve("llama-3.1", settings), settings).fast is (settings is FAST)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("settings", [FAST, HF], ids=["fast", "autotokenizer"])
def test_concurrent_first_load_of_several_models(settings, clean_registry, monkeypatch):
    """Four models requested at once by 16 threads, none loaded yet: each loaded exactly once, counts exact."""
    calls: list[str] = []
    real = registry.load_backend
    monkeypatch.setattr(registry, "load_backend", lambda spec, s: calls.append(spec.name) or real(spec, s))
    names = ["simple", "llama31_plain", "llama32_plain", "llama33_multi"] * (THREADS // 4)
    replies = run_threaded(names, settings)
    assert sorted(calls) == ["llama-3", "llama-3.1", "llama-3.2", "llama-3.3"]
    for name, (status, payload) in zip(names, replies, strict=True):
        assert status == 200
        usage = json.loads(payload)["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            GOLDEN[name]["prompt_tokens"],
            GOLDEN[name]["completion_tokens"],
        ), name


@pytest.mark.timeout(120)
def test_segment_cache_under_threads():
    """The fast path's shared LRU stays bounded and never returns another text's count while 16 threads churn it."""
    cache = SegmentCache(max_bytes=20_000)
    texts = [f"segment {i} " * (1 + i % 40) for i in range(400)]
    errors: list[str] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(5_000):
            text = rng.choice(texts)
            count = cache.get(text)
            if count is None:
                cache.put(text, len(text))
            elif count != len(text):
                errors.append(text)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(churn, range(THREADS)))
    assert errors == []
    assert cache._bytes <= 20_000 and cache._bytes == sum(entry_bytes(t) for t in cache._items)


@pytest.mark.timeout(300)
def test_realistic_mix_loads_each_tokenizer_once(clean_registry, monkeypatch):
    """The corpus names every embedded generation (Llama 3, 3.1, 3.2, 3.3, 4): under default settings a steady
    mix of them must not evict and reload tokenizers (a Llama 4 reload takes ~1.5 s and ~300 MB)."""
    calls: list[str] = []
    real = registry.load_backend
    monkeypatch.setattr(registry, "load_backend", lambda spec, s: calls.append(spec.name) or real(spec, s))
    names = workload()[:320]
    threaded = run_threaded(names, FAST)
    assert max(status for status, _ in threaded) < 500
    specs = {resolve(CASES[n]["request"].get("model"), FAST).name for n in CASES}
    reloaded = {name: n for name, n in Counter(calls).items() if n > 1}
    assert reloaded == {}, f"{len(calls)} loads for {len(specs)} tokenizers ({sorted(specs)}): {reloaded}"
