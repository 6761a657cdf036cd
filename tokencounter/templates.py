"""Chat templates: the embedded official Llama templates, and rendering them as transformers does.

The fast path renders with a jinja environment configured exactly like transformers' `apply_chat_template`
(sandboxed, trim_blocks, lstrip_blocks, loopcontrols, its tojson/raise_exception/strftime_now); the
property tests check it renders what transformers renders.
"""

from __future__ import annotations

import contextvars
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .budget import Deadline
from .errors import PayloadTooLarge, TemplateRejected, TimeBudgetExceeded

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


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def content_format(source: str) -> str:
    """ "openai" if the template loops over a message's content parts (Llama 4), else "string" (Llama 3).

    vLLM decides the same way: a template that iterates `message['content']` gets content as a list of
    parts; any other gets the text parts joined with newlines.
    """
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


def prepare_messages(messages: list[dict], fmt: str) -> list[dict]:
    """Messages as vLLM hands them to a template of this content format (text parts joined, or wrapped)."""
    out = []
    for message in messages:
        content = message.get("content")
        if fmt == "string" and isinstance(content, list):
            message = {**message, "content": "\n".join(part["text"] for part in content)}
        elif fmt == "openai" and isinstance(content, str):
            message = {**message, "content": [{"type": "text", "text": content}]}
        out.append(message)
    return out


def template_kwargs(date_string: str | None) -> dict:
    """Template variables the settings add (the pinned date, if set); each backend adds its special tokens."""
    return {"date_string": date_string} if date_string else {}


def render(
    template: jinja2.Template,
    messages: list[dict],
    tools,
    add_generation_prompt: bool,
    kwargs: dict,
    deadline: Deadline | None = None,
) -> str:
    """The template's output for this conversation; with a deadline, its time and size are bounded as it renders."""
    token = _DEADLINE.set(deadline)
    try:
        chunks = template.generate(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **kwargs
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
