"""What every counting backend provides: tiktoken's fast path (fastbpe), AutoTokenizer (hfbackend) and
mistral-common (mistral)."""

from __future__ import annotations

import json
from typing import Protocol

from .budget import Deadline
from .payloads import Prompt


class Backend(Protocol):
    # True for the tiktoken path (logged when it loads).
    fast: bool

    def count_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> int:
        """Prompt tokens of a chat request as vLLM renders it; `defaults`: the server's chat_template_kwargs."""
        ...

    def count_plain(self, text: str, deadline: Deadline | None = None) -> int:
        """Tokens of generated text, special-token text counted as plain text."""
        ...

    def count_prompt_text(self, text: str, add_special_tokens: bool, deadline: Deadline | None = None) -> int:
        """Prompt tokens of text with special-token text parsed, the BOS first with add_special_tokens."""
        ...

    def count_tool_calls(self, calls: list[dict], deadline: Deadline | None = None) -> int:
        """Tokens of a response's tool calls ({"name", "arguments"} each) as the model emits them."""
        ...


def llama_tool_calls_text(calls: list[dict]) -> str:
    """Tool calls as Llama 3.1+ emits them in JSON mode: {"name": ..., "parameters": ...}, several joined by "; "."""
    return "; ".join(
        f'{{"name": {json.dumps(c["name"], ensure_ascii=False)}, "parameters": {c["arguments"] or "{}"}}}'
        for c in calls
    )
