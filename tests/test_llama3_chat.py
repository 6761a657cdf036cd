"""Llama 3's template counted without rendering (tokencounter/llama3_chat.py) equals the jinja render counted, on
random conversations: any role names, whitespace, special-token text, unicode, the flags and template arguments."""

from __future__ import annotations

import pytest
from conftest import GOLDEN_DATE
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencounter import conversation
from tokencounter.backend import RenderedChat
from tokencounter.errors import TokenCounterError
from tokencounter.payloads import parse_request
from tokencounter.registry import REGISTRY, resolve
from tokencounter.settings import Settings

SETTINGS = Settings(date_string=GOLDEN_DATE, preload=False)
PIECES = st.sampled_from(
    ["hello", " world", "  ", "\n", "\n\n", "\t", " \u00a0", "東京", "🦙", "e\u0301", "123", "<|eot_id|>",
     "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|", "|>", "<|eot_id", "'s", "!!", "\r\n"]
)  # fmt: skip
TEXT = st.lists(PIECES, max_size=8).map("".join)
ROLE = st.sampled_from(["system", "user", "assistant", "tool", "developer", "ipython", "wizard"]) | TEXT.filter(bool)
CONTENT = TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), max_size=3)
KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "bos_token": st.sampled_from(["<|begin_of_text|>", "", "BOS ", "<|start_header_id|>"]),
        "add_generation_prompt": st.booleans(),
        "date_string": st.just("1 Jan 2025"),
        "messages": st.just([{"role": "user", "content": "x"}]),
        "continue_final_message": st.booleans(),
    },
)


def backend():
    return REGISTRY.get(resolve("llama-3", SETTINGS), SETTINGS)


def outcome(count, prompt, defaults):
    try:
        return count(prompt, defaults)
    except TokenCounterError as exc:
        return exc.code


@settings(max_examples=500, deadline=None)
@given(
    messages=st.lists(st.fixed_dictionaries({"role": ROLE, "content": CONTENT}), max_size=6),
    flags=st.fixed_dictionaries(
        {}, optional={"add_generation_prompt": st.booleans(), "add_special_tokens": st.booleans()}
    ),
    kwargs=KWARGS,
    defaults=KWARGS,
)
def test_counted_without_rendering_equals_the_render(messages, flags, kwargs, defaults):
    fast = backend()
    assert fast.template.embedded == "llama-3"
    request = {"model": "llama-3", "messages": messages or [{"role": "user", "content": ""}], **flags}
    if kwargs:
        request["chat_template_kwargs"] = kwargs
    prompt = parse_request(request, SETTINGS)
    structural = outcome(lambda p, d: fast.count_chat(p, d), prompt, defaults)
    rendered = outcome(lambda p, d: RenderedChat.count_chat(fast, p, d), prompt, defaults)
    assert structural == rendered


@pytest.mark.parametrize("template", ["llama-3.1", "llama-4"])
def test_other_templates_are_rendered(template):
    assert backend().template.embedded == "llama-3"
    other = REGISTRY.get(resolve(template, SETTINGS), SETTINGS)
    assert other.template.embedded == template


def test_continue_final_message_is_rendered():
    prompt = parse_request(
        {
            "model": "llama-3",
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "The answer is "}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
        SETTINGS,
    )
    fast = backend()
    assert fast.count_chat(prompt, {}) == RenderedChat.count_chat(fast, prompt, {})
    assert conversation.template_kwargs({}, prompt.template_kwargs, fast.template)["continue_final_message"]
