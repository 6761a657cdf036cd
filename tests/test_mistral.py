"""Mistral's models counted as vLLM 0.33 counts them in tokenizer mode "mistral"
(tests/golden/vllm_mistral_prompt_tokens.json, made by scripts/make_vllm_golden.py), and their completions as
mistral-common's tokenizer encodes the generated text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import env, post

from tokencounter.mistral import MistralBackend

VLLM = json.loads((Path(__file__).parent / "golden" / "vllm_mistral_prompt_tokens.json").read_text(encoding="utf-8"))
JUDGED = [(case, model, said) for case in VLLM["cases"] for model, said in case["vllm"].items()]
# The tokenizer each listed model is counted with (mistral-common's model table and the model cards).
TOKENIZERS = {
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral-v3",
    "mistralai/Mixtral-8x22B-Instruct-v0.1": "mistral-v3",
    "mistralai/Codestral-22B-v0.1": "mistral-v3",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-v3-tekken",
    "mistralai/Mistral-Large-Instruct-2411": "mistral-v7",
}


def ids(judged) -> str:
    case, model, _ = judged
    return f"{model.split('/')[-1]}-{case['class']}"


def test_every_listed_model_is_judged():
    assert set(VLLM["server"]["models"]) == set(TOKENIZERS)
    assert VLLM["vllm"] == "0.33.0" and VLLM["server"]["tokenizer_mode"] == "mistral"


@pytest.mark.parametrize("judged", [j for j in JUDGED if j[2]["status"] == 200], ids=ids)
def test_counts_what_vllm_counts(judged, settings):
    case, model, said = judged
    reply = post(env({**case["request"], "model": model}), settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["tokenizer"] == TOKENIZERS[model] and reply.payload["tokenizer_assumed"] is False
    assert reply.payload["usage"]["prompt_tokens"] == said["prompt_tokens"]


@pytest.mark.parametrize("judged", [j for j in JUDGED if j[2]["status"] != 200], ids=ids)
def test_what_vllm_refuses_is_a_4xx(judged, settings):
    case, model, _ = judged
    reply = post(env({**case["request"], "model": model}), settings)
    assert 400 <= reply.status < 500, reply.payload
    assert reply.payload["error"]["code"]


@pytest.mark.parametrize("model", sorted(TOKENIZERS))
def test_completion_is_the_generated_text_and_eos(model, settings):
    """Generated text as mistral-common encodes it (no BOS; control-token text stays text), plus the EOS on stop."""
    backend = MistralBackend(TOKENIZERS[model])
    text = "Paris is the capital of France. [INST] </s> 東京"
    expected = len(backend.tokenizer.encode(text, bos=False, eos=False))
    assert expected > 10
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    reply = post(env({"model": model, "messages": [{"role": "user", "content": "q"}]}, response), settings)
    assert reply.payload["usage"]["completion_tokens"] == expected + 1
    response["choices"][0]["finish_reason"] = "length"
    reply = post(env({"model": model, "messages": [{"role": "user", "content": "q"}]}, response), settings)
    assert reply.payload["usage"]["completion_tokens"] == expected


def test_legacy_completion_prompt_takes_the_bos(settings):
    backend = MistralBackend("mistral-v3")
    text = "Once upon a time"
    plain = len(backend.tokenizer.encode(text, bos=False, eos=False))
    reply = post(env({"model": "Mistral-7B-Instruct-v0.3", "prompt": text}), settings)
    assert reply.payload["usage"]["prompt_tokens"] == plain + 1
    reply = post(env({"model": "Mistral-7B-Instruct-v0.3", "prompt": text, "add_special_tokens": False}), settings)
    assert reply.payload["usage"]["prompt_tokens"] == plain


@pytest.mark.parametrize("run", [" ", "\t", "\u00a0", "\n", " \n"])
def test_tekken_long_whitespace_runs_are_counted_exactly(run, settings):
    """Runs past fastbpe.LONG_WHITESPACE go through the piece path; where tiktoken's own regex still copes, both
    agree, and a run that overflows it (1M characters) is still answered."""
    backend = MistralBackend("mistral-v3-tekken")
    for tail in ("", "x", " y", "\n"):
        text = "Hello 東京 12 " + run * 25_000 + tail
        assert backend.count_plain(text) == len(backend.tokenizer.encode(text, bos=False, eos=False))
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": run * 500_000}}]}
    request = {"model": "Mistral-Nemo-Instruct-2407", "messages": [{"role": "user", "content": "q"}]}
    reply = post(env(request, response), settings)
    assert reply.status == 200 and reply.payload["usage"]["completion_tokens"] > 0
