"""The reference path: a Hugging Face AutoTokenizer and its own `apply_chat_template`, for every model."""

from __future__ import annotations

import threading

from . import conversation, templates
from .backend import RenderedChat, Rendering
from .budget import Deadline
from .datamodel import Prompt
from .errors import TemplateRejected
from .families import HFFamily


class HFBackend(RenderedChat):
    """Counts with transformers. One lock per tokenizer: a Rust tokenizer shared across threads can raise
    `RuntimeError: Already borrowed` when a call reconfigures it, and the calls hold the GIL anyway."""

    fast = False

    def __init__(self, tokenizer, chat_template: str | None, *, family: HFFamily | None = None) -> None:
        self.tokenizer = tokenizer
        self.family = family  # an embedded family: what its models generate around their text
        self.chat_template = chat_template  # None: the tokenizer's own
        own = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
        # What vLLM reads from the template's source (content format, variables, developer role).
        self.template = templates.chat_template(self.chat_template or own)
        self._lock = threading.Lock()

    def render_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> str:
        # The tokenizer's own apply_chat_template runs in one piece: the deadline is checked around it.
        if deadline is not None:
            deadline.check()
        kwargs = conversation.template_kwargs(defaults, prompt.template_kwargs, self.template)
        with self._lock:
            try:
                return self.tokenizer.apply_chat_template(
                    conversation.for_template(prompt.messages, self.template),
                    tools=prompt.tools,
                    documents=kwargs.get("documents"),
                    chat_template=self.chat_template,
                    add_generation_prompt=bool(kwargs.get("add_generation_prompt", False)),
                    continue_final_message=bool(kwargs.get("continue_final_message", False)),
                    tokenize=False,
                    **templates.template_variables(kwargs),
                )
            except TemplateRejected:
                raise
            except Exception as exc:  # noqa: BLE001 - a hub template is untrusted code: any failure is its own
                raise TemplateRejected(
                    f"the model's chat template failed on this conversation ({type(exc).__name__})"
                ) from None

    def explain_text(self, text: str, add_special_tokens: bool) -> Rendering:
        with self._lock:
            encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        special = set(self.tokenizer.all_special_ids)
        spans = encoded["offset_mapping"]
        return Rendering(text, [(i, a, b, i in special) for i, (a, b) in zip(encoded["input_ids"], spans, strict=True)])

    def count_plain(self, text: str, deadline: Deadline | None = None) -> int:
        if deadline is not None:
            deadline.check()
        if not text:
            return 0
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def count_prompt_text(self, text: str, add_special_tokens: bool, deadline: Deadline | None = None) -> int:
        if deadline is not None:
            deadline.check()
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
