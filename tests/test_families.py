"""Qwen, DeepSeek and Gemma counted as vLLM 0.33 counts them (tests/golden/vllm_families_prompt_tokens.json, made by
scripts/make_vllm_golden.py --only families), routed by their names, with their embedded files pinned to the
official hashes, and their completions as the models generate them."""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from pathlib import Path

import pytest
from conftest import env, post
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tokencounter import fastbpe, registry
from tokencounter.errors import TemplateRejected
from tokencounter.families import FAMILIES
from tokencounter.hfbackend import HFBackend
from tokencounter.payloads import parse_request
from tokencounter.registry import load_backend, resolve
from tokencounter.settings import Settings

VLLM = json.loads((Path(__file__).parent / "golden" / "vllm_families_prompt_tokens.json").read_text(encoding="utf-8"))
JUDGED = [(case, model, said) for case in VLLM["cases"] for model, said in case["vllm"].items()]
# The official sha256 of each embedded tokenizer.json (the Git LFS oid, or the file's hash on the hub).
OFFICIAL_SHA256 = {
    "qwen2.5": "c0382117ea329cdf097041132f6d735924b697924d6f6fc3945713e96ce87539",  # Qwen/Qwen2.5-7B-Instruct
    "qwen3": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",  # Qwen/Qwen3-8B
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-7B and -Llama-8B
    "deepseek-r1-distill-qwen": "88145e3c3249adc2546ede277e9819d6e405e19072456e4b521cbc724bd60773",
    "deepseek-r1-distill-llama": "b9c9eb63a8e03059914880f918cd28a880dec8b6e15e4461e1ff677e3743dbb8",
    "gemma-3": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",  # google/gemma-3-27b-it
}


def ids(judged) -> str:
    case, model, _ = judged
    return f"{model.split('/')[-1]}-{case['class']}"


def request_of(case: dict, model: str) -> dict:
    return {**case["request"], "model": model}


def test_every_family_is_judged():
    assert VLLM["vllm"] == "0.33.0"
    assert {said["tokenizer"] for said in VLLM["server"].values()} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_embedded_files_are_the_official_ones(name):
    directory = FAMILIES[name].directory
    provenance = json.loads((directory / "PROVENANCE.json").read_text(encoding="utf-8"))
    for filename, digest in provenance["files"].items():
        assert hashlib.sha256((directory / filename).read_bytes()).hexdigest() == digest, filename
    assert provenance["files"]["tokenizer.json"] == OFFICIAL_SHA256[name]
    assert (directory / "LICENSE").stat().st_size > 100 and (directory / "NOTICE").is_file()


@pytest.mark.parametrize("judged", [j for j in JUDGED if j[2]["status"] == 200], ids=ids)
def test_counts_what_vllm_counts(judged, settings):
    case, model, said = judged
    reply = post(env(request_of(case, model)), settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["tokenizer"] == resolve(model, settings).name and reply.payload["tokenizer_assumed"] is False
    assert reply.payload["usage"]["prompt_tokens"] == said["prompt_tokens"]


@pytest.mark.parametrize("judged", [j for j in JUDGED if j[2]["status"] != 200], ids=ids)
def test_what_vllm_refuses_is_never_a_5xx(judged, settings):
    case, model, _ = judged
    reply = post(env(request_of(case, model)), settings)
    assert reply.status < 500, reply.payload


@pytest.mark.parametrize(
    ("model", "tokenizer"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5"),
        ("qwen2.5:72b", "qwen2.5"),
        ("Qwen2.5-7B-Instruct-devlab", "qwen2.5"),
        ("qwen2.5-coder:7b", "qwen2.5"),
        ("Qwen2.5-Coder-32B-Instruct", "qwen2.5"),
        ("Qwen/Qwen3-8B", "qwen3"),
        ("qwen3:30b-a3b", "qwen3"),
        ("Qwen3-235B-A22B", "qwen3"),
        ("google/gemma-3-27b-it", "gemma-3"),
        ("gemma3:4b", "gemma-3"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-r1-distill-qwen"),
        ("DeepSeek-R1-Distill-Qwen-32B", "deepseek-r1-distill-qwen"),
        ("deepseek-r1:14b", "deepseek-r1-distill-qwen"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "deepseek-r1-distill-llama"),
        ("deepseek-r1:70b", "deepseek-r1-distill-llama"),
    ],
)
def test_names_route_to_their_family(model, tokenizer):
    spec = resolve(model, Settings(preload=False))
    assert (spec.name, spec.assumed) == (tokenizer, False)


@pytest.mark.parametrize(
    "model",
    ["Qwen2.5-VL-7B-Instruct", "qwen2.5vl:7b", "Qwen2.5-Math-7B-Instruct", "Qwen3-235B-A22B-Instruct-2507",
     "Qwen3-Coder-30B-A3B", "gemma-3n-E4B-it", "gemma-2-9b-it", "QwQ-32B", "Qwen2-7B-Instruct", "deepseek-r1:8b",
     "DeepSeek-R1-0528-Qwen3-8B", "deepseek-v3"],
)  # fmt: skip
def test_variants_with_another_template_are_refused(model, settings):
    """Their template or tokenizer differs from the embedded one: a 422 naming TOKENCOUNTER_MODELS, not a guess."""
    reply = post(env({"model": model, "messages": [{"role": "user", "content": "hi"}]}), settings)
    assert reply.status == 422 and reply.payload["error"]["code"] == "unknown_model"


def test_models_setting_maps_a_name_to_a_family(settings):
    mapped = Settings(models={"prod-chat": {"tokenizer": "qwen3"}}, preload=False)
    reply = post(env({"model": "prod-chat", "messages": [{"role": "user", "content": "hi"}]}), mapped)
    assert reply.status == 200 and reply.payload["tokenizer"] == "qwen3"


@functools.cache
def tokenizer_of(model: str):
    """The oracle: transformers' AutoTokenizer on the family's files, as vLLM loads them."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(FAMILIES[resolve(model, Settings(preload=False)).name].directory))


@pytest.mark.parametrize(
    ("model", "stop"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "<|im_end|>"),
        ("Qwen/Qwen3-8B", "<|im_end|>"),
        ("DeepSeek-R1-Distill-Qwen-7B", "<｜end▁of▁sentence｜>"),
        ("DeepSeek-R1-Distill-Llama-8B", "<｜end▁of▁sentence｜>"),
        ("gemma-3-27b-it", "<end_of_turn>"),
    ],
)
def test_completion_is_the_generated_text_and_its_stop_token(model, stop, settings):
    tokenizer = tokenizer_of(model)
    text = "Paris is the capital of France. <|im_start|> 東京 naïve"
    expected = len(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    assert len(tokenizer(stop, add_special_tokens=False)["input_ids"]) == 1  # one generated token
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    reply = post(env({"model": model, "messages": [{"role": "user", "content": "q"}]}, response), settings)
    assert reply.payload["usage"]["completion_tokens"] == expected + 1
    response["choices"][0]["finish_reason"] = "length"
    reply = post(env({"model": model, "messages": [{"role": "user", "content": "q"}]}, response), settings)
    assert reply.payload["usage"]["completion_tokens"] == expected


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
@pytest.mark.parametrize(
    ("model", "opened_by_prompt"),
    [("Qwen/Qwen3-8B", False), ("DeepSeek-R1-Distill-Qwen-7B", True), ("DeepSeek-R1-Distill-Llama-8B", True)],
)
def test_reasoning_counts_as_generated_with_its_markers(model, opened_by_prompt, field, settings):
    """vLLM's reasoning parsers split "<think>R</think>C" into reasoning R and content C (the R1 distills' prompt
    already ends with "<think>\n", so they generate "R</think>C"): the generated tokens are those of that text,
    which the added tokens <think> and </think> split into parts."""
    tokenizer = tokenizer_of(model)
    reasoning, content = "The user asks for a sum: 2 + 2 = 4.\n", "\n\nThe answer is 4."
    generated = ("" if opened_by_prompt else "<think>") + f"{reasoning}</think>{content}"
    expected = len(tokenizer(generated, add_special_tokens=False)["input_ids"]) + 1
    request = {"model": model, "messages": [{"role": "user", "content": "2+2?"}]}
    message = {"role": "assistant", "content": content, field: reasoning}
    response = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    assert post(env(request, response), settings).payload["usage"]["completion_tokens"] == expected
    deltas = [({field: reasoning[:9]}, None), ({field: reasoning[9:]}, None), ({"content": content}, "stop")]
    stream = "".join(
        f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n"
        for delta, finish in deltas
    )
    reply = post(env(request, stream + "data: [DONE]\n\n"), settings)
    assert reply.payload["usage"]["completion_tokens"] == expected


def test_qwen_tool_calls_count_in_hermes_form(settings):
    tokenizer = tokenizer_of("Qwen/Qwen2.5-7B-Instruct")
    generated = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    expected = len(tokenizer(generated, add_special_tokens=False)["input_ids"]) + 1
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    response = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    reply = post(
        env({"model": "Qwen/Qwen2.5-7B-Instruct", "messages": [{"role": "user", "content": "w?"}]}, response), settings
    )
    assert reply.payload["usage"]["completion_tokens"] == expected


# --- the fast path (tiktoken) equals AutoTokenizer for the families it serves ------------------------------------

FAST = [name for name, family in sorted(FAMILIES.items()) if family.ranks]
# Where the two could differ: NFC (Qwen normalizes), added tokens real, broken and next to combining marks (">"
# and "<" compose with U+0338 under NFC), digits one by one, whitespace runs, contractions, scripts.
FAMILY_PIECES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.sampled_from(["e\u0301", "A\u030a", "\u212b", "\u2126", "\u1100\u1161\u11a8", "\u0338", ">\u0338", "<\u0338"]),
    st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>"]),
    st.sampled_from(
        ["<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|eot_id|>"]
    ),
    st.sampled_from(["<think", "<<think>>", "<|im_end|", "< think>", "<｜User|>", "<>", "<", ">", "<|", "|>"]),
    st.text(st.sampled_from(" \t\n\r\u00a0\u3000"), min_size=1, max_size=8),
    st.integers(0, 10**12).map(str),
    st.sampled_from(["'s", "'LL", "don't", " the", " café", "東京", "🦙", "👩‍💻", "ß", "İ", "½", "\ufeff"]),
)
family_texts = st.lists(FAMILY_PIECES, max_size=40).map("".join)


@functools.cache
def both(name: str):
    """(fast, AutoTokenizer) backends of an embedded family, built as the service builds them."""
    spec = resolve(name, Settings(preload=False))
    fast = load_backend(spec, Settings(fast_path=True, preload=False))
    hf = load_backend(spec, Settings(fast_path=False, preload=False))
    assert isinstance(fast, fastbpe.FastBackend) and isinstance(hf, HFBackend)
    return fast, hf


@pytest.mark.parametrize("name", FAST)
def test_fast_ranks_are_the_vocabulary(name):
    """The tiktoken ranks the fast path counts with are exactly the tokenizer.json vocabulary (byte-level strings
    mapped back to bytes), and its split pattern and normalizer are the family's."""
    fast, _ = both(name)
    tokenizer_json = json.loads((FAMILIES[name].directory / "tokenizer.json").read_text(encoding="utf-8"))
    bpe = fastbpe.FAMILIES[fastbpe.sha256(FAMILIES[name].ranks_file)]
    assert registry._vocab_matches(tokenizer_json, FAMILIES[name].ranks_file, bpe)
    assert fastbpe.family_special_tokens(tokenizer_json, bpe)


@pytest.mark.parametrize("name", FAST)
@hsettings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=family_texts)
def test_fast_counts_equal_autotokenizer(name, text):
    fast, hf = both(name)
    with hf._lock:
        ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert fast.count_rendered(text) == len(ids)
    assert [i for i, *_ in fast.explain_text(text, False).tokens] == ids  # id for id
    assert fast.count_plain(text) == hf.count_plain(text)
    assert fast.count_prompt_text(text, True) == hf.count_prompt_text(text, True)
    long = text * 8 + FILLER  # through the segment cache
    assert fast.count_plain(long) == hf.count_plain(long)


FILLER = " the gateway counts every token of every request exactly, streamed or not."
chat_texts = st.lists(FAMILY_PIECES, max_size=12).map("".join)
chats = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": chat_texts}),
            min_size=1,
            max_size=6,
        )
    },
    optional={"add_generation_prompt": st.booleans(), "chat_template_kwargs": st.just({"enable_thinking": False})},
)


@pytest.mark.parametrize("name", FAST)
@hsettings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(request=chats)
def test_fast_chat_counts_equal_autotokenizer(name, request):
    """The family's own template rendered by the fast path's jinja and by transformers' apply_chat_template."""
    fast, hf = both(name)
    prompt = parse_request({**request, "model": name}, Settings(preload=False))
    outcomes = []
    for backend in (fast, hf):
        try:
            outcomes.append(backend.count_chat(prompt, {}))
        except TemplateRejected:
            outcomes.append("rejected")
    assert outcomes[0] == outcomes[1]


@hsettings(max_examples=300, deadline=None, derandomize=True)
@given(
    text=st.text(
        st.sampled_from([*map(chr, range(0x300, 0x370)), "\u0591", "\u1dc0", "\u0345", "a", "\u1100", "\u1161", " "]),
        min_size=32,
        max_size=200,
    )
)
def test_ordering_marks_first_leaves_the_nfc_unchanged(text):
    """fastbpe.canonically_ordered sorts long runs of combining marks before NFC: canonically equivalent text."""
    assert unicodedata.normalize("NFC", fastbpe.canonically_ordered(text)) == unicodedata.normalize("NFC", text)
