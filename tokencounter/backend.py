"""What every counting backend provides: tiktoken's fast path (fastbpe) and AutoTokenizer (hfbackend)."""

from __future__ import annotations

from typing import Protocol

from .budget import Deadline
from .payloads import Prompt


class Backend(Protocol):
    # True for the tiktoken path (logged when it loads).
    fast: bool

    def count_chat(self, prompt: Prompt, kwargs: dict, deadline: Deadline | None = None) -> int:
        """Prompt tokens of a chat request: the rendered template, special tokens included."""
        ...

    def count_plain(self, text: str, deadline: Deadline | None = None) -> int:
        """Tokens of generated text, special-token text counted as plain text."""
        ...

    def count_prompt_text(self, text: str, deadline: Deadline | None = None) -> int:
        """Prompt tokens of a completions/embeddings prompt string."""
        ...
