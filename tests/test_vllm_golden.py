"""The service counts every request vLLM 0.33 accepts as vLLM counts it (tests/golden/vllm_prompt_tokens.json,
made by scripts/make_vllm_golden.py with vLLM's own request preprocessing); requests vLLM refuses get a 4xx or
a lenient count, never a 5xx."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import GOLDEN, GOLDEN_DATE, env, post
from corpus import CASES, case_sha, envelope

VLLM = json.loads((Path(__file__).parent / "golden" / "vllm_prompt_tokens.json").read_text(encoding="utf-8"))
JUDGED = [(case, template, said) for case in VLLM["cases"] for template, said in case["vllm"].items()]


def ids(judged) -> str:
    case, template, _ = judged
    return f"{template}-{case['class']}"


def count(case: dict, template: str, settings):
    # The template is named by the request's model, as a client names it.
    return post(env({**case["request"], "model": template}), settings)


def test_golden_made_by_pinned_vllm():
    assert VLLM["vllm"] == "0.33.0"
    assert VLLM["server"]["default_chat_template_kwargs"] == {"date_string": GOLDEN_DATE}


@pytest.mark.parametrize("judged", [j for j in JUDGED if j[2]["status"] == 200], ids=ids)
def test_counts_what_vllm_counts(judged, settings):
    case, template, said = judged
    reply = count(case, template, settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"]["prompt_tokens"] == said["prompt_tokens"]


@pytest.mark.parametrize("judged", [j for j in JUDGED if j[2]["status"] != 200], ids=ids)
def test_what_vllm_refuses_is_never_a_5xx(judged, settings):
    case, template, _ = judged
    reply = count(case, template, settings)
    assert reply.status < 500, reply.payload
    if reply.status != 200:
        assert reply.payload["error"]["code"]


@pytest.mark.parametrize("name", sorted(VLLM["corpus"]))
def test_corpus_prompts_count_what_vllm_counts(name, settings):
    """The acceptance corpus (tests/corpus.py) as vLLM judged it: every chat and completions prompt."""
    said = VLLM["corpus"][name]
    assert said["case_sha256"] == case_sha(CASES[name]), "rerun scripts/make_vllm_golden.py"
    assert said["status"] == 200
    # Counted even where the response carries the backend's own usage.
    reply = post(envelope(CASES[name]), dataclasses.replace(settings, always_recount=True))
    assert reply.status == 200, reply.payload
    assert reply.payload["usage"]["prompt_tokens"] == said["prompt_tokens"]


def test_every_class_of_the_issue_is_judged():
    classes = {case["class"].split(":")[0] for case in VLLM["cases"]}
    assert {"tools", "tool_calls", "tool_results", "roles", "flags", "kwargs", "parts", "billing_header"} <= classes
    assert {"completions", "long_content", "refused"} <= classes
    assert {t for _, t, _ in JUDGED} == {"llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4"}


@pytest.mark.parametrize("name", sorted(n for n in VLLM["corpus"] if GOLDEN[n]["source"] == "counted"))
def test_the_two_oracles_agree(name):
    """Meta's tokenizer on the templates (tests/golden/counts.json) counts every corpus prompt as vLLM does: the
    embedded tokenizer files vLLM loaded are the ones Meta's reference encodes with."""
    assert GOLDEN[name]["prompt_tokens"] == VLLM["corpus"][name]["prompt_tokens"]
