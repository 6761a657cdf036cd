"""A message's content reaches the template in the template's format, converted once from what the client sent: a
string stays a string for "string" templates and tool results, and becomes one text part for "openai" templates;
parts are joined (empty ones dropped; a tool result's kept) or kept (vLLM 0.33's chat_message rules)."""

from __future__ import annotations

import pytest

from tokencounter import conversation
from tokencounter.templates import ChatTemplate

PARTS = [{"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "text", "text": "b", "cache": 1}]


def template(content_format: str) -> ChatTemplate:
    return ChatTemplate("{{ messages }}", content_format, frozenset(), knows_developer=True)


@pytest.mark.parametrize(
    ("role", "content", "string", "openai"),
    [
        ("user", "hi", "hi", [{"type": "text", "text": "hi"}]),
        ("user", "", "", [{"type": "text", "text": ""}]),
        ("assistant", None, "", []),
        ("user", PARTS, "a\nb", [{"type": "text", "text": "a"}, {"type": "text", "text": ""}, PARTS[2]]),
        ("tool", "result", "result", "result"),
        ("tool", PARTS, "a\nb", "a\n\nb"),
        ("user", ["x", "y"], "x\ny", [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]),
    ],
    ids=["string", "empty_string", "none", "parts", "tool_string", "tool_parts", "bare_strings"],
)
def test_content_reaches_the_template_in_its_format(role, content, string, openai):
    (message,) = conversation.parse_messages([{"role": role, "content": content}], "messages", 64)
    for content_format, expected in (("string", string), ("openai", openai)):
        (rendered,) = conversation.for_template([message], template(content_format))
        assert rendered == {"role": role, "content": expected}


def test_a_string_is_kept_as_sent_until_the_template_is_known():
    (message,) = conversation.parse_messages([{"role": "user", "content": "hi"}], "messages", 64)
    assert message == {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x-anthropic-billing-header: 1\nbe brief", "be brief"), ("x-anthropic-billing-header: 1", "")],
)
def test_the_billing_line_leaves_system_text(text, expected):
    (message,) = conversation.parse_messages([{"role": "system", "content": text}], "messages", 64)
    (rendered,) = conversation.for_template([message], template("string"))
    assert rendered["content"] == expected
