"""Chat templates: the embedded official Llama templates, and rendering them as transformers does.

The fast path renders with a jinja environment configured exactly like transformers' `apply_chat_template`
(sandboxed, trim_blocks, lstrip_blocks, loopcontrols, its tojson/raise_exception/strftime_now); the
property tests check it renders what transformers renders.
"""

from __future__ import annotations

import contextvars
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from .budget import Deadline
from .errors import PayloadTooLarge, TemplateRejected, TimeBudgetExceeded

# transformers' apply_chat_template parameters: accepted in chat_template_kwargs whatever the template reads,
# and consumed by apply_chat_template rather than handed to the template (documents and
# add_generation_prompt are handed on by name).
APPLY_PARAMS = frozenset(
    {
        "conversation",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "sanitize_control_tokens",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)
TEMPLATE_DIR = Path(__file__).parent / "data" / "templates"
EMBEDDED_TEMPLATES = ("llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4")


def embedded_template(name: str) -> str:
    if name not in EMBEDDED_TEMPLATES:
        raise ValueError(f"unknown embedded chat template {name!r}; choose one of {', '.join(EMBEDDED_TEMPLATES)}")
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def _raise_exception(message):
    raise TemplateRejected(f"the model's chat template refused this conversation: {message}")


# The request being rendered in this thread: its deadline bounds what the tojson filter may produce.
_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("tokencounter_render", default=None)
# tojson output pieces between two deadline checks.
_CHECK_EVERY = 4096


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: no HTML escaping, unicode kept.
    deadline = _DEADLINE.get()
    if indent is None or deadline is None:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    # Indented JSON of nested data grows with depth times size (60 levels made 2 MB into 240 MB): build it
    # piece by piece, within the request's render allowance and deadline (json.dumps builds the same pieces).
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    # Pieces are tiny strings (50 bytes of object each): joined every _CHECK_EVERY, they cost their characters.
    out, batch, size = [], [], 0
    for piece in encoder.iterencode(x):
        batch.append(piece)
        if len(batch) == _CHECK_EVERY:
            out.append("".join(batch))
            batch.clear()
            size += len(out[-1])
            deadline.fits(size)
            deadline.check()
    out.append("".join(batch))
    return "".join(out)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment():
    # jinja is imported where a template is first compiled or read: a plain Llama 3 chat is counted without it.
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template, what vLLM reads from its source before rendering it, and the template compiled on first
    render."""

    source: str
    content_format: str  # "string" or "openai": how message content reaches it
    variables: frozenset[str]  # the names it reads: which chat_template_kwargs it is given
    knows_developer: bool  # else developer turns become system turns
    embedded: str | None = None  # the embedded template this is, to the character (its source is one of ours)

    @functools.cached_property
    def compiled(self):
        return _environment().from_string(self.source)


# What chat_template reads from each embedded template (content format, variables), kept so that a plain Llama 3
# chat is counted without importing jinja (45 ms of a cold start); tests/test_llama3_chat.py checks them against
# the reading itself.
_LLAMA_VARIABLES = frozenset(
    "add_generation_prompt bos_token custom_tools date_string first_user_message messages system_message tools "
    "tools_in_user_message".split()
)
EMBEDDED_ANALYSIS = {
    "llama-3": ("string", frozenset({"add_generation_prompt", "bos_token", "messages"})),
    "llama-3.1": ("string", _LLAMA_VARIABLES | {"tool_call", "builtin_tools"}),
    "llama-3.2": ("string", _LLAMA_VARIABLES | {"tool_call"}),
    "llama-3.3": ("string", _LLAMA_VARIABLES | {"tool_call", "builtin_tools"}),
    "llama-4": ("openai", _LLAMA_VARIABLES | {"user_supplied_system_message"}),
}


@lru_cache(maxsize=32)
def chat_template(source: str) -> ChatTemplate:
    embedded = next((name for name in EMBEDDED_TEMPLATES if source == embedded_template(name)), None)
    if embedded is not None:
        form, variables = EMBEDDED_ANALYSIS[embedded]
    else:
        form, variables = read_template(source)
    # vLLM's test: the role's name appears quoted in the template.
    knows_developer = '"developer"' in source or "'developer'" in source
    template = ChatTemplate(source, form, variables, knows_developer, embedded)
    if embedded is None:
        template.compiled  # noqa: B018 - a configured template that does not compile fails its load, not a request
    return template


def read_template(source: str) -> tuple[str, frozenset[str]]:
    """What vLLM reads from a template's source: its content format and the variables it reads."""
    import jinja2
    import jinja2.meta

    try:
        variables = frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(source)))
    except jinja2.TemplateSyntaxError:
        variables = frozenset()
    return content_format(source), variables


def content_format(source: str) -> str:
    """ "openai" if the template loops over a message's content parts (Llama 4), else "string" (Llama 3).

    vLLM decides the same way: a template that iterates `message['content']` gets content as a list of
    parts; any other gets the text parts joined with newlines.
    """
    import jinja2.ext

    try:
        tree = jinja2.Environment(extensions=[jinja2.ext.loopcontrols]).parse(source)
    except jinja2.TemplateSyntaxError:
        return "string"
    for loop in tree.find_all(jinja2.nodes.For):
        target = loop.iter
        if isinstance(target, jinja2.nodes.Getitem) and isinstance(target.arg, jinja2.nodes.Const):
            if target.arg.value == "content":
                return "openai"
        if isinstance(target, jinja2.nodes.Getattr) and target.attr == "content":
            return "openai"
    return "string"


def render(
    template: ChatTemplate,
    messages: list[dict],
    tools: list[dict] | None,
    kwargs: dict,
    deadline: Deadline | None = None,
) -> str:
    """The template's output as transformers' apply_chat_template renders it: `kwargs` are the template
    arguments (special tokens under the request's), continue_final_message cuts the output where the final
    message ends. With a deadline, time and size are bounded as it renders."""
    add_generation_prompt = bool(kwargs.get("add_generation_prompt", False))
    if not kwargs.get("continue_final_message"):
        return _generate(template, messages, tools, add_generation_prompt, kwargs, deadline)
    check_continue_flags(add_generation_prompt, continue_final_message=True)
    messages, final = _tag_final_message(messages)
    rendered = _generate(template, messages, tools, False, kwargs, deadline)
    if final.strip() not in rendered or CONTINUE_TAG.strip() not in rendered:
        raise TemplateRejected("continue_final_message is set but the template does not render the final message")
    cut = rendered.rindex(CONTINUE_TAG.strip())
    # A template that keeps the message's trailing spaces keeps the tag's space too; else it trimmed both.
    return rendered[:cut] if rendered.startswith(CONTINUE_TAG, cut) else rendered[:cut].rstrip()


def check_continue_flags(add_generation_prompt: bool, continue_final_message: bool) -> None:
    """transformers and vLLM refuse a request that both continues the final message and adds a generation prompt."""
    if add_generation_prompt and continue_final_message:
        raise TemplateRejected(
            "continue_final_message and add_generation_prompt cannot both be true; set add_generation_prompt false"
        )


def template_variables(kwargs: dict) -> dict:
    """The arguments a template sees by name besides messages, tools, documents and add_generation_prompt."""
    return {k: v for k, v in kwargs.items() if k not in APPLY_PARAMS}


# What transformers appends to the final message to find where it ends in the rendered prompt.
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _tag_final_message(messages: list[dict]) -> tuple[list[dict], str]:
    """The messages with CONTINUE_TAG after the final message's text (its last text part), and that text."""
    if not messages or messages[-1].get("content") is None:
        raise TemplateRejected("continue_final_message is set but the final message has no content to continue")
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        final, last["content"] = content, content + CONTINUE_TAG
    else:
        parts = [dict(p) if isinstance(p, dict) else p for p in content]
        texts = [i for i, p in enumerate(parts) if isinstance(p, dict) and "text" in p]
        index = texts[-1] if texts else None
        if index is None:
            raise TemplateRejected("continue_final_message is set but the final message has no text to continue")
        final = parts[index]["text"]
        parts[index]["text"] = final + CONTINUE_TAG
        last["content"] = parts
    return [*messages[:-1], last], final


def _generate(
    template: ChatTemplate,
    messages: list[dict],
    tools: list[dict] | None,
    add_generation_prompt: bool,
    kwargs: dict,
    deadline: Deadline | None,
) -> str:
    import jinja2

    token = _DEADLINE.set(deadline)
    try:
        chunks = template.compiled.generate(
            messages=messages,
            tools=tools,
            documents=kwargs.get("documents"),
            add_generation_prompt=add_generation_prompt,
            **template_variables(kwargs),
        )
        if deadline is None:
            return "".join(chunks)
        out = []
        for chunk in chunks:
            deadline.render(len(chunk))
            out.append(chunk)
            if len(out) % 256 == 0:
                deadline.check()
        return "".join(out)
    except (TemplateRejected, PayloadTooLarge, TimeBudgetExceeded):
        raise
    except jinja2.TemplateError as exc:
        raise TemplateRejected(f"the model's chat template failed on this conversation: {type(exc).__name__}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TemplateRejected(
            f"the model's chat template cannot render this conversation ({type(exc).__name__}); "
            "check the message and tool fields"
        ) from None
    finally:
        _DEADLINE.reset(token)
