"""Llama 3's chat templates, counted without rendering them, for the conversations they render plainly.

The templates (tokencounter/data/templates/llama-3*.jinja) print, for each plain message,
`<|start_header_id|>` role `<|end_header_id|>` "\\n\\n" + content|trim `<|eot_id|>`; the BOS text first; Llama
3.1-3.3 a system block first (`<|start_header_id|>system<|end_header_id|>`, the knowledge and today's dates, the
system message, `<|eot_id|>`); and `<|start_header_id|>assistant<|end_header_id|>\\n\\n` last when
add_generation_prompt is true. Every piece of text sits between two special tokens, and the BPE never joins text
across a special token, so the prompt's count is its special tokens plus each piece counted on its own: the same
count without building the prompt and walking it for special tokens. Within a piece, "\n\n" before trimmed
content is a piece of its own (Meta's pattern takes a newline run as one piece, and trimmed text starts with no
whitespace), so each message's content is counted on its own: an assistant turn costs nothing once its text was
counted as the completion that produced it. Anything else (tools, tool calls and
results, continue_final_message, an argument of another type) goes through jinja. tests/test_llama3_chat.py holds
this to the jinja render.
"""

from __future__ import annotations

from collections.abc import Callable

from .budget import Deadline
from .templates import strftime_now

# The embedded templates counted here, and the date each prints when none is given (None: no system block).
TEMPLATES: dict[str, Callable[[], str] | None] = {
    "llama-3": None,
    "llama-3.1": lambda: "26 Jul 2024",
    "llama-3.2": lambda: strftime_now("%d %b %Y"),
    "llama-3.3": lambda: "26 Jul 2024",
}
# Template arguments whose mere presence changes what these templates print (they test `is defined`), or that
# collide with the template's own `messages`.
_NOT_PLAIN_ARGS = ("messages", "custom_tools", "builtin_tools")
# <|start_header_id|>, <|end_header_id|>, <|eot_id|> around each message.
_SPECIALS_PER_MESSAGE = 3


def count(
    template: str,
    count_rendered: Callable[[str, Deadline | None], int],
    messages: list[dict],
    tools: list | None,
    kwargs: dict,
    deadline: Deadline | None = None,
) -> int | None:
    """Tokens of the prompt `template` renders for `messages` (content a string, as vLLM hands it to these
    templates) with the template arguments `kwargs` (bos_token included); None when it does not render them
    plainly. `count_rendered` counts text whose special-token text is a special token."""
    if template not in TEMPLATES or tools is not None or kwargs.get("continue_final_message"):
        return None
    if any(k in kwargs for k in _NOT_PLAIN_ARGS):
        return None
    bos = kwargs.get("bos_token")
    if not isinstance(bos, str):
        return None
    total = count_rendered(bos, deadline)
    default_date = TEMPLATES[template]
    if default_date is None:  # Llama 3.0: the BOS comes with the first message only
        total = total if messages else 0
    else:
        date = kwargs["date_string"] if "date_string" in kwargs else default_date()
        if not isinstance(date, str):
            return None
        system = ""
        if messages and messages[0]["role"] == "system":
            if type(messages[0]["content"]) is not str:
                return None
            system, messages = messages[0]["content"].strip(), messages[1:]
        block = f"\n\nCutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
        total += _SPECIALS_PER_MESSAGE + count_rendered("system", deadline) + count_rendered(block, deadline)
        total += count_rendered(system, deadline)
    # "\n\n" is a piece of its own before trimmed text (which starts with no whitespace), so the content is counted
    # apart: the same text, and the same cache entry, as when it was counted as a completion. A message's frame (its
    # specials, role and "\n\n") is counted once per role.
    # Llama 3.0 prints every message the plain way; 3.1+ print tool calls and tool results their own way.
    frames: dict[str, int] = {}
    newlines = count_rendered("\n\n", deadline)
    plain_tools = template == "llama-3"
    for message in messages:
        role, content = message["role"], message["content"]
        if type(content) is not str or not plain_tools and "tool_calls" in message:
            return None
        frame = frames.get(role)
        if frame is None:
            if not plain_tools and role in ("tool", "ipython"):
                return None
            frame = frames[role] = _SPECIALS_PER_MESSAGE + count_rendered(role, deadline) + newlines
        total += frame + count_rendered(content.strip(), deadline)
    if kwargs.get("add_generation_prompt"):
        total += 2 + count_rendered("assistant", deadline) + count_rendered("\n\n", deadline)
    return total
