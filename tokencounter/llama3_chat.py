"""Llama 3's chat template, counted without rendering it.

The template (tokencounter/data/templates/llama-3.jinja) prints, for each message,
`<|start_header_id|>` role `<|end_header_id|>` "\\n\\n" + content|trim `<|eot_id|>`, the BOS text before the first,
and `<|start_header_id|>assistant<|end_header_id|>\\n\\n` after the last when add_generation_prompt is true. Every
piece of text it prints sits between two special tokens, and the BPE never joins text across a special token, so
the rendered prompt's count is the special tokens plus the count of each piece on its own: the same count, without
building the prompt and walking it for special tokens (tests/test_llama3_chat.py holds it to the jinja render).
"""

from __future__ import annotations

from collections.abc import Callable

from .budget import Deadline

# <|start_header_id|>, <|end_header_id|>, <|eot_id|> around each message.
SPECIALS_PER_MESSAGE = 3


def count(
    count_rendered: Callable[[str, Deadline | None], int],
    messages: list[dict],
    bos: str | None,
    kwargs: dict,
    deadline: Deadline | None = None,
) -> int:
    """Tokens of the prompt the template renders for `messages` (content already a string, as vLLM hands it to this
    template), `bos` the template's bos_token and `kwargs` its arguments; `count_rendered` counts text whose
    special-token text is a special token."""
    total = count_rendered(bos, deadline) if bos and messages else 0
    for message in messages:
        content = message.get("content")
        text = content.strip() if isinstance(content, str) else ""
        total += SPECIALS_PER_MESSAGE + count_rendered(message["role"], deadline)
        total += count_rendered("\n\n" + text, deadline)
    if kwargs.get("add_generation_prompt"):
        total += 2 + count_rendered("assistant", deadline) + count_rendered("\n\n", deadline)
    return total
