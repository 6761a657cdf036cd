"""Mistral's own models counted as vLLM counts them in tokenizer mode `mistral`: with mistral-common.

vLLM 0.33 serves a repo in Mistral's format (a `tekken.json` or `tokenizer.model.vN`) through mistral-common,
not through a jinja template. Followed, step by step: `renderers/online_renderer.py` (maybe_serialize_tool_calls,
truncate_tool_call_ids, validate_request_params), `tokenizers/mistral.py` (_validate_apply_chat_template_args,
apply_chat_template), transformers' `MistralCommonBackend.apply_chat_template` (content parts without a type
dropped), then mistral-common's `ChatCompletionRequest.from_openai` and `encode_chat_completion`.

The tokenizer files are mistral-common's own (`mistral_common/data/`, Apache-2.0), loaded in its test
validation mode as vLLM loads them. mistral-common is imported only when a Mistral model is first counted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .backend import GeneratedText, Rendering, check_explained_size
from .budget import Deadline
from .datamodel import Prompt
from .errors import InvalidField, TemplateRejected
from .fastbpe import count_by_pieces, has_long_whitespace
from .templates import check_continue_flags

# Tokenizer name -> its file in mistral_common/data (the versions mistral-common's model table and the model
# cards name: v3 SentencePiece for Mistral-7B-Instruct-v0.3, Mixtral-8x22B, Codestral-22B and Mistral-Large-2407;
# Tekken 240718 for Mistral-Nemo; v7 SentencePiece for Mistral-Large-2411).
TOKENIZER_FILES = {
    "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3",
    "mistral-v3-tekken": "tekken_240718.json",
    "mistral-v7": "mistral_instruct_tokenizer_241114.model.v7",
}
# A SentencePiece byte-fallback piece, "<0x0A>".
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
# vLLM keeps the last 9 characters of a longer tool-call id (Mistral's ids are 9 characters).
TOOL_CALL_ID_CHARS = 9


def data_dir() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


class MistralBackend(GeneratedText):
    """Counts with mistral-common's tokenizer and instruct encoder (the ones vLLM's mistral mode calls)."""

    fast = False

    def __init__(self, name: str) -> None:
        from mistral_common.protocol.instruct.validator import ValidationMode
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        self.mistral = MistralTokenizer.from_file(str(data_dir() / TOKENIZER_FILES[name]), mode=ValidationMode.test)
        self.tokenizer = self.mistral.instruct_tokenizer.tokenizer
        self.version = int(str(self.tokenizer.version.value).split("v")[-1])
        # Tekken's pre-tokenizer pattern in the `regex` module, for texts tiktoken's own regex cannot take.
        self.pieces = None
        if isinstance(self.tokenizer, Tekkenizer):
            import regex

            self.pieces = regex.compile(self.tokenizer._model._pat_str)

    def count_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> int:
        return len(self.encode_chat(prompt, deadline))

    def explain_chat(
        self, prompt: Prompt, defaults: dict, max_chars: int, deadline: Deadline | None = None
    ) -> Rendering:
        # mistral-common encodes to ids (its own errors become 422s); the text is rebuilt from them.
        rendering = self._rendering(self.encode_chat(prompt, deadline))
        check_explained_size(len(rendering.text), max_chars)
        return rendering

    def explain_text(self, text: str, add_special_tokens: bool) -> Rendering:
        return self._rendering(self.tokenizer.encode(text, bos=add_special_tokens, eos=False))

    def _rendering(self, ids: list[int]) -> Rendering:
        """The prompt's text rebuilt from its tokens (mistral-common encodes a chat to ids, never to text)."""
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        text, tokens = [], []
        position = 0
        for i in ids:
            special = self.tokenizer.is_special(i)
            if special or not hasattr(self.tokenizer, "id_to_byte_piece"):
                piece = self.tokenizer.id_to_piece(i).replace("\u2581", " ")
                if not special and (byte := _BYTE_PIECE.fullmatch(piece)):  # SentencePiece's byte fallback
                    piece = bytes.fromhex(byte.group(1)).decode("utf-8", "replace")
            else:
                piece = self.tokenizer.id_to_byte_piece(i, SpecialTokenPolicy.KEEP).decode("utf-8", "replace")
            text.append(piece)
            tokens.append((i, position, position + len(piece), special))
            position += len(piece)
        return Rendering("".join(text), tokens)

    def encode_chat(self, prompt: Prompt, deadline: Deadline | None = None) -> list[int]:
        """The prompt's token ids as vLLM's mistral mode encodes the chat request (server-side chat_template_kwargs
        do not apply: vLLM refuses them for Mistral tokenizers)."""
        from mistral_common.exceptions import MistralCommonException
        from mistral_common.protocol.instruct.request import ChatCompletionRequest
        from pydantic import ValidationError

        request = prompt.request
        if request.get("chat_template") is not None or request.get("chat_template_kwargs") is not None:
            raise InvalidField(
                "RequestBody.chat_template_kwargs is not supported for Mistral tokenizers (vLLM refuses it); remove it"
            )
        kwargs = prompt.template_kwargs
        add_generation_prompt = bool(kwargs.get("add_generation_prompt"))
        continue_final_message = bool(kwargs.get("continue_final_message"))
        messages = [_adapted(m) for m in request["messages"]]
        _check_flags(messages, add_generation_prompt, continue_final_message)
        if deadline is not None:
            deadline.check()
        extra = {}
        if self.version >= 15 and request.get("reasoning_effort") is not None:
            extra["reasoning_effort"] = request["reasoning_effort"]
        try:
            chat = ChatCompletionRequest.from_openai(
                messages=messages, tools=prompt.tools, continue_final_message=continue_final_message, **extra
            )
            tokens = self.mistral.encode_chat_completion(chat).tokens
        except (AssertionError, MistralCommonException, ValidationError, ValueError, TypeError, KeyError) as exc:
            # mistral-common's messages may quote the conversation: only the kind of refusal is named.
            raise TemplateRejected(
                f"the Mistral tokenizer refused this conversation ({type(exc).__name__}); check roles, tool calls "
                "and message order"
            ) from None
        if deadline is not None:
            deadline.check()
        return tokens

    def count_plain(self, text: str, deadline: Deadline | None = None) -> int:
        """Generated text: mistral-common never reads control-token text as a control token."""
        if self.pieces is not None and has_long_whitespace(text):
            # Tekken is tiktoken underneath, whose regex stack a long whitespace run overflows (a ValueError):
            # the same pre-tokenizer split, done by the `regex` module, counts it exactly.
            return count_by_pieces(self.tokenizer._model, self.pieces, text)
        return len(self.tokenizer.encode(text, bos=False, eos=False))

    def count_prompt_text(self, text: str, add_special_tokens: bool, deadline: Deadline | None = None) -> int:
        bos = 1 if add_special_tokens else 0
        return bos + self.count_plain(text, deadline)

    def count_tool_calls(self, calls: list[dict], deadline: Deadline | None = None) -> int:
        """`[TOOL_CALLS]` and the calls as the JSON list these tokenizer versions emit (an approximation: whitespace the
        model wrote differently from this serialisation is not seen)."""
        text = json.dumps([{"name": c["name"], "arguments": _arguments(c["arguments"])} for c in calls])
        return 1 + self.count_plain(text, deadline)


def _arguments(arguments: str):
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


def _adapted(message: dict) -> dict:
    """One message as vLLM hands it to mistral-common: tool calls always a list (ids cut to their last 9
    characters), a tool result's id cut the same way, content parts without a type dropped."""
    message = dict(message)
    role = message.get("role")
    if role == "assistant":
        calls = []
        for call in message.get("tool_calls") or []:
            call = dict(call)
            if isinstance(call.get("id"), str):
                call["id"] = call["id"][-TOOL_CALL_ID_CHARS:]
            calls.append(call)
        message["tool_calls"] = calls
    elif role == "tool" and isinstance(message.get("tool_call_id"), str):
        message["tool_call_id"] = message["tool_call_id"][-TOOL_CALL_ID_CHARS:]
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = [p for p in content if not isinstance(p, dict) or p.get("type")]
    return message


def _check_flags(messages: list[dict], add_generation_prompt: bool, continue_final_message: bool) -> None:
    """vLLM's checks before a Mistral tokenizer encodes a chat."""
    check_continue_flags(add_generation_prompt, continue_final_message)
    last = messages[-1].get("role")
    if add_generation_prompt and last == "assistant":
        raise TemplateRejected(
            "the last message is the assistant's: set add_generation_prompt false and continue_final_message true "
            "to continue it (vLLM refuses this for Mistral tokenizers)"
        )
    if continue_final_message and last != "assistant":
        raise TemplateRejected("continue_final_message needs the assistant's message last")
