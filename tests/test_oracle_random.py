"""Seeded random traffic of every shape, counted by the service and by Meta's oracle: they must be equal."""

from __future__ import annotations

import json
import random
import sys

import pytest
from conftest import ROOT, post
from corpus import UNICODE, WEATHER_TOOL, chat_response, delta_chunks, envelope, split_every, sse

sys.path.insert(0, str(ROOT / "scripts"))
import make_golden as oracle  # noqa: E402

PIECES = [
    "the",
    "Tokens",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "don't",
    "WE'LL",
    "12345",
    "3.14159",
    "日本語",
    "🦙",
    "é",
    "—",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|eot_id|",
    "<|<|start_header_id|>",
    '{"a": 1}',
    "```python\nprint('hi')\n```",
    "\u00a0",
    "\u3000",
    "!!!",
    "...",
    UNICODE,
]
MODELS = [
    "Llama-3-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "Llama-3.3-70B-Instruct",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct",
]
PER_SHAPE = 40


def text(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice(PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(0, n)))


def completion_text(rng):  # a model's output never holds a lone surrogate or our literal special-token quirks
    return text(rng).replace("<|", "< |")


def messages(rng, roles=("system", "user", "assistant")):
    out = [{"role": "system", "content": text(rng)}] if rng.random() < 0.5 else []
    for i in range(rng.randint(1, 6)):
        role = "user" if i % 2 == 0 else "assistant"
        out.append({"role": role, "content": text(rng)})
    return out


def shape_case(shape: str, rng: random.Random) -> dict:
    model = rng.choice(MODELS)
    finish = rng.choice(["stop", "length"])
    if shape == "chat":
        n = rng.randint(1, 3)
        return {
            "request": {"model": model, "messages": messages(rng)},
            "response": chat_response(*[(completion_text(rng), rng.choice(["stop", "length"])) for _ in range(n)]),
        }
    if shape == "content_parts":
        msgs = messages(rng)
        msgs[-1]["content"] = [{"type": "text", "text": text(rng)} for _ in range(rng.randint(1, 4))]
        return {
            "request": {"model": model, "messages": msgs},
            "response": chat_response((completion_text(rng), finish)),
        }
    if shape == "tools":
        model = rng.choice(MODELS[1:])
        msgs = messages(rng)
        if msgs[-1]["role"] == "assistant":
            msgs.append({"role": "user", "content": text(rng)})
        args = json.dumps({"city": rng.choice(["Paris", "東京", "Zürich"]), "n": rng.randint(0, 99)})
        response = chat_response(
            ("", "tool_calls"),
            tool_calls=[{"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": args}}],
        )
        return {"request": {"model": model, "tools": [WEATHER_TOOL], "messages": msgs}, "response": response}
    if shape == "stream":
        answer = completion_text(rng)
        size = rng.choice([1, 2, 3, 7, 50])
        return {
            "request": {"model": model, "stream": True, "messages": messages(rng)},
            "response": sse(
                delta_chunks(split_every(answer, size) or [""], finish),
                crlf=rng.random() < 0.5,
                keepalive=rng.random() < 0.5,
                ascii=rng.random() < 0.5,
            ),
        }
    if shape == "completions":
        prompts = [text(rng) or "x" for _ in range(rng.randint(1, 3))]
        return {
            "request": {"model": "Llama-3-8B", "prompt": prompts if len(prompts) > 1 else prompts[0]},
            "response": {
                "choices": [
                    {"index": i, "text": completion_text(rng), "finish_reason": finish} for i in range(len(prompts))
                ]
            },
        }
    if shape == "embeddings":
        return {
            "request": {"model": "Llama-3-8B", "input": [text(rng) or "x" for _ in range(rng.randint(1, 4))]},
            "response": None,
        }
    raise AssertionError(shape)


SHAPES = ["chat", "content_parts", "tools", "stream", "completions", "embeddings"]


@pytest.mark.parametrize("shape", SHAPES)
def test_random_traffic_matches_oracle(shape, settings):
    rng = random.Random(f"tokencounter-{shape}")
    mismatches = []
    for i in range(PER_SHAPE):
        case = shape_case(shape, rng)
        want = oracle.expected(case)
        got = post(envelope(case), settings)
        assert got.status == 200, (i, got.payload)
        usage = got.payload["usage"]
        if (usage["prompt_tokens"], usage["completion_tokens"]) != (want["prompt_tokens"], want["completion_tokens"]):
            mismatches.append((i, usage, want))
    assert mismatches == [], f"{len(mismatches)}/{PER_SHAPE} {shape} cases differ from the oracle"
