"""Why a count is what it is: the prompt as the model sees it, its tokens, and who they belong to.

The same envelope as a count, always counted (never the backend's own usage). Each token of the rendered prompt
belongs to the message whose content it starts in, or to the template's scaffolding (`overhead_tokens`: BOS,
headers, end-of-turn tokens, the generation prompt, tool definitions and rendered tool calls), so the messages'
tokens and the overhead add up to `prompt_tokens` exactly.
"""

from __future__ import annotations

import bisect

from .backend import Backend, Rendering, check_explained_size
from .budget import Deadline
from .counting import counted
from .datamodel import STOPPED, Choice, CountRequest, Prompt
from .registry import REGISTRY, ModelSpec, resolve
from .settings import Settings

# A rendered prompt longer than this is not explained (413): its token list would be megabytes of JSON, and
# tiktoken's unsegmented encode is only safe on bounded text. /api/tokencounter counts any size.
MAX_EXPLAINED_CHARS = 200_000
# At most this many tokens are listed with their text (`tokens_truncated` says when the list stops early);
# every count still covers the whole prompt.
MAX_LISTED_TOKENS = 20_000


def explain_request(request: CountRequest, settings: Settings, deadline: Deadline) -> dict:
    """The explain answer for one parsed envelope."""
    prompt = request.prompt
    spec = resolve(prompt.model, settings)
    backend = REGISTRY.get(spec, settings, wait_s=deadline.remaining_s())
    if prompt.kind == "chat":
        rendering = backend.explain_chat(prompt, settings.template_defaults, MAX_EXPLAINED_CHARS, deadline)
        parts = _attribute(rendering, [_message_texts(m) for m in prompt.messages])
        entries = [
            {"index": i, "role": m["role"], "tokens": n}
            for i, (m, n) in enumerate(zip(prompt.messages, parts, strict=True))
        ]
    else:
        rendering, entries = _explain_texts(backend, prompt)
    deadline.check()
    prompt_tokens = len(rendering.tokens)
    choices = [
        _choice(i, backend, choice, settings.count_stop_token, deadline)
        for i, choice in enumerate(request.completion.choices if request.completion else [])
    ]
    answer = counted(request, spec, prompt_tokens, sum(c["completion_tokens"] for c in choices))
    return {
        **answer,
        "template": template_name(spec),
        "rendered_prompt": rendering.text,
        "messages": entries,
        "overhead_tokens": prompt_tokens - sum(e["tokens"] for e in entries),
        "choices": choices,
        "tokens": [
            {"id": i, "text": rendering.text[a:b], "special": special}
            for i, a, b, special in rendering.tokens[:MAX_LISTED_TOKENS]
        ],
        "tokens_truncated": prompt_tokens > MAX_LISTED_TOKENS,
    }


def template_name(spec: ModelSpec) -> str:
    """Which template rendered the prompt, by name (never a configured path)."""
    if spec.tokenizer.startswith("mistral-"):
        return "mistral-common"
    if spec.tokenizer == "gpt-oss":
        return "harmony"
    if spec.chat_template is None:
        return "the tokenizer's own"
    return spec.chat_template.replace("\\", "/").rsplit("/", 1)[-1]


def _message_texts(message: dict) -> list[str]:
    """A message's own content as a template prints it: each text part, trimmed (templates trim content)."""
    content = message["content"]
    texts = [content] if isinstance(content, str) else [part["text"] for part in content]
    return [t for t in (text.strip() for text in texts) if t]


def _attribute(rendering: Rendering, owners: list[list[str]]) -> list[int]:
    """Tokens per owner: each owner's texts are found in the rendered text (in order, after the previous owner's,
    else anywhere not yet claimed: system messages may have been moved to the front), and a token belongs to the
    owner whose text it starts in. Tokens of text nobody owns are overhead."""
    text = rendering.text
    claimed: list[tuple[int, int, int]] = []  # (start, end, owner), kept sorted and disjoint
    cursor = 0
    for owner, texts in enumerate(owners):
        for piece in texts:
            start = _find_unclaimed(text, piece, cursor, claimed)
            if start is None:
                start = _find_unclaimed(text, piece, 0, claimed)
            if start is None:
                continue
            bisect.insort(claimed, (start, start + len(piece), owner))
            cursor = start + len(piece)
    counts = [0] * len(owners)
    starts = [c[0] for c in claimed]
    for _, a, b, special in rendering.tokens:
        if special or a == b:
            continue
        k = bisect.bisect_right(starts, a) - 1
        if k >= 0 and a < claimed[k][1]:
            counts[claimed[k][2]] += 1
    return counts


def _find_unclaimed(text: str, piece: str, start: int, claimed: list[tuple[int, int, int]]) -> int | None:
    """The first place at or after `start` where `piece` overlaps no claimed span."""
    position = text.find(piece, start)
    while position != -1:
        end = position + len(piece)
        k = bisect.bisect_left(claimed, (position,))
        clear_before = k == 0 or claimed[k - 1][1] <= position
        clear_after = k == len(claimed) or claimed[k][0] >= end
        if clear_before and clear_after:
            return position
        position = text.find(piece, position + 1)
    return None


def _explain_texts(backend: Backend, prompt: Prompt) -> tuple[Rendering, list[dict]]:
    """Completion prompts or embedding inputs, one after another; token-id prompts are listed by id alone."""
    text, tokens, entries = "", [], []
    for index, item in enumerate(prompt.texts):
        if isinstance(item, list):
            tokens += [(i, len(text), len(text), False) for i in item]
            entries.append({"index": index, "role": "prompt", "tokens": len(item)})
            continue
        check_explained_size(len(text) + len(item), MAX_EXPLAINED_CHARS)  # before the tokenizer sees it
        part = backend.explain_text(item, prompt.add_special_tokens)
        check_explained_size(len(text) + len(part.text), MAX_EXPLAINED_CHARS)
        offset = len(text)
        tokens += [(i, a + offset, b + offset, special) for i, a, b, special in part.tokens]
        entries.append({"index": index, "role": "prompt", "tokens": sum(1 for t in part.tokens if not t[3])})
        text += part.text
    return Rendering(text, tokens), entries


def _choice(index: int, backend: Backend, choice: Choice, count_stop_token: bool, deadline: Deadline) -> dict:
    return {
        "index": index,
        "completion_tokens": backend.count_generated(choice, count_stop_token, deadline),
        "stop_token_counted": count_stop_token and choice.finish_reason in STOPPED,
    }
