"""The one data model of a count: the prompt a request asks to render, and the completion a response carries.

payloads.py and responses.py build these from the JSON APIM posts; the backends and the counting read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# finish_reason values after which the model generated its stop token (<|eot_id|>, <|im_end|>, <|return|>, ...).
STOPPED = ("stop", "tool_calls")


@dataclass
class Prompt:
    """What the prompt is counted from: a chat conversation, completion prompts or embedding inputs."""

    kind: str  # "chat" | "completion" | "embedding"
    model: str | None
    # Chat: the conversation and tools as vLLM parses them (conversation.py), the template arguments the
    # request asks for (its chat_template_kwargs under its flags), and whether the tokenizer adds its BOS.
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
    template_kwargs: dict = field(default_factory=lambda: {"add_generation_prompt": True})
    add_special_tokens: bool = False
    # The chat request as the client sent it: what a backend with its own request rules reads (mistral.py).
    request: dict = field(default_factory=dict)
    # Completion prompts / embedding inputs: text, or token ids already counted by the client.
    texts: list[str | list[int]] = field(default_factory=list)


@dataclass
class Choice:
    text: str = ""
    finish_reason: str | None = None
    # Each tool call the model emitted: {"name": str, "arguments": str}.
    tool_calls: list[dict] = field(default_factory=list)
    # What a reasoning parser took out of the generated text (vLLM's `reasoning`, formerly `reasoning_content`).
    reasoning: str = ""


@dataclass
class Completion:
    choices: list[Choice]
    usage: dict | None = None  # the model server's own usage, when it reported one
    streamed: bool = False


@dataclass
class CountRequest:
    prompt: Prompt
    completion: Completion | None
