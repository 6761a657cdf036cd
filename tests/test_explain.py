"""/api/tokencounter/explain: the prompt as the model sees it, and counts that add up exactly.

Judged by the same oracles as the counts (Meta's reference on the golden corpus, vLLM's own answers, mistral-common
through vLLM), and each message's share by Meta's tokenizer on that message's text alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import GOLDEN, README_REQUEST, README_RESPONSE, chat, env
from corpus import CASES, envelope

from tokencounter import explain as explain_module
from tokencounter import service

GOLDENS = Path(__file__).parent / "golden"
VLLM = json.loads((GOLDENS / "vllm_prompt_tokens.json").read_text(encoding="utf-8"))
MISTRAL = json.loads((GOLDENS / "vllm_mistral_prompt_tokens.json").read_text(encoding="utf-8"))
COUNTED = sorted(n for n in CASES if GOLDEN[n]["source"] == "counted")


def explain(body, settings) -> service.Reply:
    return service.explain("POST", json.dumps(body).encode(), settings)


def assert_adds_up(payload: dict) -> None:
    usage = payload["usage"]
    assert sum(m["tokens"] for m in payload["messages"]) + payload["overhead_tokens"] == usage["prompt_tokens"]
    assert payload["overhead_tokens"] >= 0 and all(m["tokens"] >= 0 for m in payload["messages"])
    assert sum(c["completion_tokens"] for c in payload["choices"]) == usage["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if not payload["tokens_truncated"]:
        assert len(payload["tokens"]) == usage["prompt_tokens"]


@pytest.mark.parametrize("name", COUNTED)
def test_golden_corpus_explained_and_adding_up(name, settings):
    reply = explain(envelope(CASES[name]), settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"]["prompt_tokens"] == GOLDEN[name]["prompt_tokens"]
    assert reply.payload["usage"]["completion_tokens"] == GOLDEN[name]["completion_tokens"]
    assert_adds_up(reply.payload)


@pytest.mark.parametrize(
    ("case", "template"),
    [(c, t) for c in VLLM["cases"] for t, said in c["vllm"].items() if said["status"] == 200],
    ids=lambda v: v if isinstance(v, str) else v["class"],
)
def test_vllm_goldens_explained(case, template, settings):
    said = case["vllm"][template]
    reply = explain(env({**case["request"], "model": template}), settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"]["prompt_tokens"] == said["prompt_tokens"]
    assert_adds_up(reply.payload)


@pytest.mark.parametrize(
    ("case", "model"),
    [(c, m) for c in MISTRAL["cases"] for m, said in c["vllm"].items() if said["status"] == 200],
    ids=lambda v: v.split("/")[-1] if isinstance(v, str) else v["class"],
)
def test_mistral_goldens_explained(case, model, settings):
    reply = explain(env({**case["request"], "model": model}), settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"]["prompt_tokens"] == case["vllm"][model]["prompt_tokens"]
    assert reply.payload["template"] == "mistral-common"
    assert_adds_up(reply.payload)


def test_readme_example(settings):
    payload = explain(env(README_REQUEST, README_RESPONSE), settings).payload
    assert payload["usage"] == {"prompt_tokens": 28, "completion_tokens": 8, "total_tokens": 36}
    assert payload["template"] == "llama-3" and payload["tokenizer"] == "llama-3"
    assert payload["choices"] == [{"index": 0, "completion_tokens": 8, "stop_token_counted": True}]
    assert payload["rendered_prompt"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert [t["text"] for t in payload["tokens"] if t["special"]][:2] == ["<|begin_of_text|>", "<|start_header_id|>"]
    assert "".join(t["text"] for t in payload["tokens"]) == payload["rendered_prompt"]


@pytest.mark.parametrize(
    "texts",
    [
        ["You are a helpful assistant.", "What is the capital of France?"],
        ["  padded with spaces  ", "東京 🦙 naïve café"],
        ["Line one\nline two", "Numbers 1234567 and symbols !@#"],
    ],
)
def test_each_message_counts_its_own_text(texts, settings):
    """In Llama 3's template a message's text sits between "\\n\\n" and <|eot_id|>, so its share is exactly what
    Meta's tokenizer gives the trimmed text alone."""
    from llama_models.llama3.tokenizer import Tokenizer

    meta = Tokenizer.get_instance()
    messages = [{"role": role, "content": text} for role, text in zip(("system", "user"), texts, strict=True)]
    payload = explain(env({"model": "llama-3", "messages": messages}), settings).payload
    assert [m["tokens"] for m in payload["messages"]] == [
        len(meta.encode(t.strip(), bos=False, eos=False)) for t in texts
    ]


def test_completions_prompts_are_entries(settings):
    payload = explain(env({"model": "llama-3", "prompt": ["Once upon a time", [1, 2, 3]]}), settings).payload
    assert [m["role"] for m in payload["messages"]] == ["prompt", "prompt"]
    assert payload["messages"][1]["tokens"] == 3 and payload["overhead_tokens"] == 1  # the BOS of the text prompt
    assert_adds_up(payload)


def test_same_errors_as_the_count(settings):
    for body in (
        {"RequestBody": "{"},
        env({"messages": []}),
        env({"model": "gpt-4o", "messages": [chat()["messages"][0]]}),
    ):
        counted = service.handle("POST", json.dumps(body).encode(), settings)
        explained = explain(body, settings)
        assert (explained.status, explained.payload) == (counted.status, counted.payload)
    assert service.explain("GET", b"", settings).status == 405


@pytest.mark.parametrize("model", ["llama-3", "llama-3.1", "llama-4", "Mistral-Nemo-Instruct-2407"])
@pytest.mark.parametrize("kind", ["prompt", "chat"])
def test_a_long_prompt_is_refused_before_it_is_tokenized(model, kind, settings):
    """A million-space prompt would overflow tiktoken's regex if explain tokenized it whole: it is refused first
    (Mistral's chat encoder refuses it itself, as vLLM does); never a 5xx."""
    text = "x" + " " * 1_000_000 + "y"
    request = (
        {"model": model, "prompt": text}
        if kind == "prompt"
        else {"model": model, "messages": [chat(text)["messages"][0]]}
    )
    reply = explain(env(request), settings)
    assert reply.status in (413, 422), reply.payload
    if not (kind == "chat" and model.startswith("Mistral")):
        assert reply.payload["error"]["code"] == "payload_too_large"


def test_large_prompts_are_refused_not_listed(settings, monkeypatch):
    reply = explain(env(chat("word " * 50_000)), settings)
    assert reply.status == 413 and "/api/tokencounter" in reply.payload["error"]["message"]
    monkeypatch.setattr(explain_module, "MAX_LISTED_TOKENS", 10)
    payload = explain(env(chat("word " * 100)), settings).payload
    assert payload["tokens_truncated"] is True and len(payload["tokens"]) == 10
    assert_adds_up(payload)


def test_content_is_answered_never_logged(settings, caplog):
    marker = "SECRET-MARKER-4242"
    with caplog.at_level(logging.DEBUG):
        payload = explain(env(chat(marker), {"choices": [{"message": {"content": marker}}]}), settings).payload
    assert marker in payload["rendered_prompt"]
    assert marker not in caplog.text
