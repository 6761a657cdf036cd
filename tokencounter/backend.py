"""What every counting backend provides: tiktoken's fast path (fastbpe), AutoTokenizer (hfbackend) and
mistral-common (mistral)."""

from __future__ import annotations

import bisect
import itertools
import json
from dataclasses import dataclass
from typing import Protocol

from .budget import Deadline
from .datamodel import STOPPED, Choice, Prompt
from .errors import PayloadTooLarge
from .families import HFFamily, hermes_tool_calls_text


@dataclass
class Rendering:
    """A prompt as the model sees it: its text, and its tokens as (id, start, end, special) with character offsets
    into the text (a token the tokenizer adds, such as a BOS, has start == end == 0)."""

    text: str
    tokens: list[tuple[int, int, int, bool]]


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

    def count_reasoning(self, text: str, deadline: Deadline | None = None) -> int:
        """Tokens of a response's reasoning (vLLM's `reasoning` field) as generated, its markers included."""
        ...

    def count_generated(self, choice: Choice, count_stop_token: bool, deadline: Deadline | None = None) -> int:
        """Tokens the model generated for one choice; the stop token too if `count_stop_token` and it stopped."""
        ...

    def explain_chat(
        self, prompt: Prompt, defaults: dict, max_chars: int, deadline: Deadline | None = None
    ) -> Rendering:
        """The rendered prompt of a chat request and its tokens: as many as count_chat counts. A prompt of more
        than `max_chars` characters is refused (PayloadTooLarge) before it is tokenized."""
        ...

    def explain_text(self, text: str, add_special_tokens: bool) -> Rendering:
        """A completions/embeddings prompt and its tokens: as many as count_prompt_text counts."""
        ...


class GeneratedText:
    """count_generated for models whose answer is its text, reasoning and tool calls, then one stop token."""

    def count_generated(self, choice: Choice, count_stop_token: bool, deadline: Deadline | None = None) -> int:
        tokens = self.count_plain(choice.text, deadline)
        if choice.reasoning:
            tokens += self.count_reasoning(choice.reasoning, deadline)
        if choice.tool_calls:
            tokens += self.count_tool_calls(choice.tool_calls, deadline)
        return tokens + (1 if count_stop_token and choice.finish_reason in STOPPED else 0)

    def count_reasoning(self, text: str, deadline: Deadline | None = None) -> int:
        # No reasoning markers (Llama's templates, these Mistral tokenizers): the reasoning is plain generated text.
        return self.count_plain(text, deadline) if text else 0


class RenderedChat(GeneratedText):
    """count_chat, explain_chat, count_tool_calls and count_reasoning for backends that render a chat to text with
    a chat template (`render_chat`) and count that text (`count_prompt_text`, `explain_text`): the fast path and
    AutoTokenizer."""

    # An embedded family's tokenizer (families.py): what its models generate around their text. None: Llama's ways.
    family: HFFamily | None = None

    def count_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> int:
        rendered = self.render_chat(prompt, defaults, deadline)
        return self.count_prompt_text(rendered, prompt.add_special_tokens, deadline)

    def explain_chat(
        self, prompt: Prompt, defaults: dict, max_chars: int, deadline: Deadline | None = None
    ) -> Rendering:
        rendered = self.render_chat(prompt, defaults, deadline)
        check_explained_size(len(rendered), max_chars)
        return self.explain_text(rendered, prompt.add_special_tokens)

    def count_tool_calls(self, calls: list[dict], deadline: Deadline | None = None) -> int:
        if self.family is not None and self.family.tool_calls == "hermes":
            # <tool_call> and </tool_call> are added tokens, which count_plain keeps whole (special-token text in
            # the arguments stays text: a model that generated the real token would have stopped).
            return self.count_plain(hermes_tool_calls_text(calls), deadline)
        return self.count_plain(llama_tool_calls_text(calls), deadline)

    def count_reasoning(self, text: str, deadline: Deadline | None = None) -> int:
        """The reasoning text and the markers the model generated around it (added tokens: the text splits there,
        so the parts count apart exactly). Llama's templates have none: its reasoning is plain generated text."""
        think = self.family.think if self.family is not None else None
        if not text or think is None:
            return super().count_reasoning(text, deadline)
        opening, closing = think
        markers = self.count_prompt_text(closing, False)
        if not self.family.think_opened_by_prompt:
            markers += self.count_prompt_text(opening, False)
        return markers + self.count_plain(text, deadline)


def check_explained_size(chars: int, max_chars: int) -> None:
    """Explain lists every token of a prompt, from tokenizers' unsegmented encodes: only up to `max_chars`."""
    if chars > max_chars:
        raise PayloadTooLarge(
            f"the rendered prompt has {chars} characters; explain shows at most {max_chars} "
            "(POST to /api/tokencounter to count any size)"
        )


def byte_offsets_to_chars(text: str, pieces: list[bytes]) -> list[tuple[int, int]]:
    """Character (start, end) in `text` of consecutive byte pieces of its UTF-8 encoding: from the character
    holding a piece's first byte to the end of the one holding its last."""
    if text.isascii():
        ends = list(itertools.accumulate(len(p) for p in pieces))
        return list(zip([0, *ends][: len(ends)], ends, strict=True))
    bounds = list(itertools.accumulate((len(ch.encode("utf-8")) for ch in text), initial=0))
    out, position = [], 0
    for piece in pieces:
        end = position + len(piece)
        out.append((bisect.bisect_right(bounds, position) - 1, bisect.bisect_left(bounds, end)))
        position = end
    return out


def llama_tool_calls_text(calls: list[dict]) -> str:
    """Tool calls as Llama 3.1+ emits them in JSON mode: {"name": ..., "parameters": ...}, several joined by "; "."""
    return "; ".join(
        f'{{"name": {json.dumps(c["name"], ensure_ascii=False)}, "parameters": {c["arguments"] or "{}"}}}'
        for c in calls
    )
