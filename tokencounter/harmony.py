"""OpenAI's gpt-oss models counted as vLLM 0.33 counts them: rendered with openai_harmony, not a chat template.

vLLM serves a model whose config says `model_type: gpt_oss` through its harmony path. Followed, step by step:
`renderers/online_renderer.py` (render_chat, _make_request_with_harmony; server-side chat_template_kwargs and the
request's template flags are not read), `entrypoints/openai/parser/harmony_utils.py`
(extract_instructions_from_messages, build_harmony_preamble, parse_chat_input_to_harmony_message,
render_for_completion, _use_legacy_tool_call_headers), with oss-harmony 0.0.11, the fork vLLM pins (tests hold
the service to vLLM's own answers: tests/golden/vllm_gptoss_prompt_tokens.json).

The prompt is: a system message (model identity, knowledge cutoff, today's date, reasoning effort, the channels),
a developer message when the request has instructions (a first system or developer message) or tools, the
conversation, and `<|start|>assistant`. harmony encodes each message's text on its own, as plain text, between
`<|message|>` and the message's end: that text is counted here with tiktoken (the o200k ranks shipped in
data/gpt-oss, pinned by sha256), and harmony renders the rest with the text left out. Huge or whitespace-heavy
messages thus never reach harmony's encoder, which recurses through a whitespace run (quadratic, and a native
stack overflow past a few hundred thousand characters).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .backend import Rendering, byte_offsets_to_chars, check_explained_size
from .budget import Deadline
from .datamodel import STOPPED, Choice, Prompt
from .errors import InvalidField, InvalidRole, PayloadTooLarge, TemplateRejected
from .fastbpe import LLAMA4_PATTERN, Family, TiktokenText, has_long_whitespace

DATA_DIR = Path(__file__).parent / "data" / "gpt-oss"
RANKS_FILE = DATA_DIR / "o200k_base.tiktoken"
# tiktoken's expected_hash for o200k_base (and the hash harmony checks a TIKTOKEN_ENCODINGS_BASE file against).
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# o200k's pre-tokenizer pattern is the one Llama 4 took over (fastbpe.LLAMA4_PATTERN); the specials start at 199998.
O200K_HARMONY = Family("o200k_harmony", O200K_SHA256, LLAMA4_PATTERN, 199998, ranks_in_order=True)
# vLLM's harmony_utils.REASONING_EFFORT: the efforts harmony has; others are refused (400 in vLLM).
REASONING_EFFORTS = ("low", "medium", "high")
ROLES = ("user", "assistant", "system", "developer", "tool")
# gpt-oss's generation_config eos ids: vLLM stops on <|return|> (an answer) or <|call|> (a tool call).
RETURN, CALL = "<|return|>", "<|call|>"
# Runs of non-whitespace text harmony's encoder may take at once in the text it formats: the sum of their squared
# lengths, about 1.5 s of its merging (4e8 took 0.15 s), and the shortest run counted.
MAX_RUN_WORK = 4 * 10**9
MAX_RUN_CHARS = 1000
_LONG_RUN = re.compile(rf"\S{{{MAX_RUN_CHARS},}}")
# The harmony render reads TIKTOKEN_ENCODINGS_BASE only while it loads; the lock keeps loads from overlapping.
_LOAD_LOCK = threading.Lock()


@dataclass
class _Turn:
    """One harmony message as vLLM builds it, its texts held apart: `texts` go after its `<|message|>`, each
    encoded alone, and the message itself is rendered with empty text parts in their place."""

    message: object
    texts: list[str] = field(default_factory=list)


def load_harmony():
    """openai_harmony's HarmonyGptOss encoding, its ranks read from data/gpt-oss.

    oss-harmony reads its o200k ranks from $TIKTOKEN_ENCODINGS_BASE when that is set, checking them against the
    sha256 above, and else from a copy embedded in its binary. Unset, it is pointed at the project's pinned file
    for the load only (and unset again: the variable is process-wide); a value the operator set is left alone,
    since harmony checks the file it names against the same hash.
    """
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    with _LOAD_LOCK:
        if os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(DATA_DIR)
        try:
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        finally:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)


def start_date() -> str:
    """The date vLLM renders: today's (the server's local date), or a date pinned with vLLM's
    VLLM_SYSTEM_START_DATE. Every YYYY-MM-DD date takes as many tokens (tests/test_harmony.py), so today's counts
    for all of them."""
    return datetime.datetime.now().strftime("%Y-%m-%d")


class HarmonyBackend(TiktokenText):
    """Counts gpt-oss prompts: harmony renders the structure, tiktoken counts the text (the same o200k BPE), as the
    fast path counts it (segment cache, long-whitespace pieces, deadline between segments)."""

    fast = True

    def __init__(self, cache_bytes: int = 32 * 1024 * 1024) -> None:
        import openai_harmony

        self.h = openai_harmony
        self.harmony = load_harmony()
        # harmony's specials fill the ids from 199998 up, one per name (checked: the names are all of them).
        names = self.harmony.special_tokens_set
        specials = {
            self.harmony.decode([i]): i for i in range(O200K_HARMONY.base_vocab, O200K_HARMONY.base_vocab + len(names))
        }
        if set(specials) != names:
            raise RuntimeError("openai_harmony's special tokens are not the o200k_harmony ones this backend expects")
        # fastbpe.load_ranks checks the file against O200K_SHA256 before a rank is read.
        self._use_encoding(O200K_HARMONY, RANKS_FILE, specials, cache_bytes)
        self.ids = {name: specials[name] for name in ("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>")}

    # --- prompts ------------------------------------------------------------------------------------------------

    def count_chat(self, prompt: Prompt, defaults: dict, deadline: Deadline | None = None) -> int:
        turns = self.turns(prompt, deadline)
        ids = self.render(turns, deadline)
        count = len(ids)
        for turn in turns:
            for text in turn.texts:
                if deadline is not None:
                    deadline.check()
                count += self.count_plain(text, deadline)
        return count

    def explain_chat(
        self, prompt: Prompt, defaults: dict, max_chars: int, deadline: Deadline | None = None
    ) -> Rendering:
        turns = self.turns(prompt, deadline)
        ids = self.render(turns, deadline)
        pieces = [bytes(self.harmony._inner.decode_bytes([i])) for i in ids]
        chars = sum(len(p) for p in pieces) + sum(len(t) for turn in turns for t in turn.texts)
        check_explained_size(chars, max_chars)  # an upper bound of the characters, before any text is encoded
        # The texts go back in after their message's <|message|>: the rendered messages are the turns in order.
        out: list[tuple[int, bytes]] = []
        texts = iter(turns)
        for token_id, piece in zip(ids, pieces, strict=True):
            out.append((token_id, piece))
            if token_id == self.ids["<|message|>"]:
                for text in next(texts).texts:
                    out += [
                        (i, self.encoding.decode_single_token_bytes(i)) for i in self.encoding.encode_ordinary(text)
                    ]
        return self._rendering(out)

    def explain_text(self, text: str, add_special_tokens: bool) -> Rendering:
        """Completions prompts: o200k_harmony has no BOS, so `add_special_tokens` adds nothing."""
        ids = self.encoding.encode(text, allowed_special=self.special_tokens, disallowed_special=())
        return self._rendering([(i, self.encoding.decode_single_token_bytes(i)) for i in ids], text)

    def count_prompt_text(self, text: str, add_special_tokens: bool, deadline: Deadline | None = None) -> int:
        """Prompt text with special-token text parsed (no BOS: the tokenizer has none to add)."""
        return self.count_rendered(text, deadline)

    def _rendering(self, tokens: list[tuple[int, bytes]], text: str | None = None) -> Rendering:
        """Tokens with their spans in the text they decode to (whole characters: every text went in whole)."""
        pieces = [p for _, p in tokens]
        text = b"".join(pieces).decode("utf-8", "replace") if text is None else text
        spans = byte_offsets_to_chars(text, pieces) if pieces else []
        return Rendering(text, [(i, a, b, i in self.special_ids) for (i, _), (a, b) in zip(tokens, spans, strict=True)])

    # --- the conversation as vLLM builds it -----------------------------------------------------------------------

    def turns(self, prompt: Prompt, deadline: Deadline | None = None) -> list[_Turn]:
        """The harmony messages of a chat request, as _make_request_with_harmony builds them (analysis messages
        before the last final answer dropped, as render_for_completion drops them)."""
        h = self.h
        request = prompt.request
        messages = list(request["messages"])
        effort = request.get("reasoning_effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            raise InvalidField(
                "RequestBody.reasoning_effort must be low, medium or high for gpt-oss (vLLM's harmony path refuses "
                "other values)"
            )
        instructions = None
        if isinstance(messages[0], dict) and messages[0].get("role") in ("system", "developer"):
            instructions = _flatten(messages.pop(0).get("content"))
        system = h.SystemContent.new()
        if effort is not None:
            system = system.with_reasoning_effort(h.ReasoningEffort[effort.upper()])
        system = system.with_conversation_start_date(start_date())
        turns = [_Turn(h.Message.from_role_and_content(h.Role.SYSTEM, system))]
        tools = prompt.tools or []  # `tools: []` takes the tools path with no function tools: the same render
        formatted = _Formatted()
        if instructions or tools:
            turns.append(_Turn(self._developer(instructions, tools, formatted)))
        ids_to_names: dict = {}
        for message in messages:
            for call in _calls(message):
                if isinstance(call.get("id"), str):  # another type names no call (and cannot key a dict)
                    ids_to_names[call["id"]] = (call.get("function") or {}).get("name")
        for message in messages:
            if deadline is not None:
                deadline.check()
            turns += self._turns(message, ids_to_names, formatted)
        return _drop_analysis(turns)

    def _developer(self, instructions: str | None, tools: list[dict], formatted: _Formatted):
        h = self.h
        content = h.DeveloperContent.new()
        if instructions is not None:
            formatted.check(instructions, "a system or developer message")
            content = content.with_instructions(instructions)
        described = []
        for tool in tools:
            function = tool["function"]
            # Names, descriptions and schemas are formatted into the developer message by harmony itself.
            formatted.check(json.dumps(function, ensure_ascii=False), "RequestBody.tools")
            described.append(
                h.ToolDescription.new(
                    name=function["name"],
                    description=function.get("description") or "",
                    parameters=function.get("parameters"),
                )
            )
        if described:
            content = content.with_function_tools(described)
        return h.Message.from_role_and_content(h.Role.DEVELOPER, content)

    def _turns(self, message: dict, ids_to_names: dict, formatted: _Formatted) -> list[_Turn]:
        """parse_chat_input_to_harmony_message, the texts held apart."""
        h = self.h
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRole("gpt-oss takes the roles user, assistant, system, developer and tool (harmony's)")
        calls = _calls(message)
        if role == "assistant" and calls:
            out = []
            content = _flatten(message.get("content"))
            if content:
                out.append(self._assistant("commentary", content))
            reasoning = message.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                out.append(self._assistant("analysis", reasoning))
            for call in calls:
                function = call.get("function") or {}
                formatted.check(str(function.get("name", "")), "a tool call's function name")
                turn = self._assistant("commentary", _arguments(function.get("arguments")))
                turn.message = turn.message.with_recipient(f"functions.{function.get('name', '')}").with_content_type(
                    "json"
                )
                out.append(turn)
            return out
        if role == "tool":
            call_id = message.get("tool_call_id", "")
            name = (ids_to_names.get(call_id, "") if isinstance(call_id, str) else "") or ""
            formatted.check(str(name), "a tool call's function name")
            author = h.Author.new(h.Role.TOOL, f"functions.{name}")
            turn = _Turn(h.Message.from_author_and_content(author, ""), [_flatten(message.get("content")) or ""])
            turn.message = turn.message.with_channel("commentary").with_recipient("assistant")
            return [turn]
        out = []
        reasoning = message.get("reasoning")
        if role == "assistant" and reasoning and isinstance(reasoning, str):
            out.append(self._assistant("analysis", reasoning))
        content = message.get("content") or ""
        if isinstance(content, str):
            texts = [content]
        else:
            # vLLM reads each part's "text" (a bare string part fails there with a 500; here it is its text).
            texts = [p if isinstance(p, str) else _text(p.get("text", "")) for p in content]
        if role == "assistant":
            if texts and texts[0]:
                out.append(self._assistant("final", *texts))
        elif role in ("system", "developer"):
            instructions = _flatten(message.get("content"))
            if instructions is not None:
                out.append(_Turn(self._developer(instructions, [], formatted)))
        else:
            parts = [h.TextContent(text="") for _ in texts]
            out.append(_Turn(h.Message.from_role_and_contents(h.Role.USER, parts), texts))
        return out

    def _assistant(self, channel: str, *texts: str) -> _Turn:
        h = self.h
        parts = [h.TextContent(text="") for _ in texts]
        return _Turn(h.Message.from_role_and_contents(h.Role.ASSISTANT, parts).with_channel(channel), list(texts))

    def render(self, turns: list[_Turn], deadline: Deadline | None = None) -> list[int]:
        """render_for_completion on the messages (their texts left out): the prompt's token ids, headers of earlier
        tool calls in the legacy form vLLM rewrites them to."""
        h = self.h
        if deadline is not None:
            deadline.check()
        conversation = h.Conversation.from_messages([t.message for t in turns])
        config = h.RenderConversationConfig(auto_drop_analysis=False)
        try:
            ids = self.harmony.render_conversation_for_completion(conversation, h.Role.ASSISTANT, config=config)
        except h.HarmonyError:
            raise TemplateRejected("harmony refused this conversation; check roles, tools and tool calls") from None
        if deadline is not None:
            deadline.check()
        return self._legacy_tool_call_headers(ids, deadline)

    def _legacy_tool_call_headers(self, ids: list[int], deadline: Deadline | None = None) -> list[int]:
        """vLLM's _use_legacy_tool_call_headers: `assistant<|channel|>commentary to=X <|constrain|>json<|message|>`
        becomes `assistant to=X<|channel|>commentary json<|message|>` (token for token as vLLM rewrites it; its
        headers decoded and encoded with the same o200k BPE in tiktoken, which takes microseconds where harmony's
        own calls took milliseconds per header)."""
        start, channel, constrain, message = (
            self.ids[n] for n in ("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>")
        )
        decode, encode = self.encoding.decode, self.encoding.encode_ordinary
        out: list[int] = []
        index = done = 0
        while True:
            try:
                index = ids.index(start, index)
                header_end = ids.index(message, index + 1)
            except ValueError:
                break
            if deadline is not None:
                deadline.check()
            header = ids[index + 1 : header_end]
            try:
                channel_at = header.index(channel)
                constrain_at = header.index(constrain, channel_at + 1)
            except ValueError:
                index += 1
                continue
            author = decode(header[:channel_at])
            channel_and_recipient = decode(header[channel_at + 1 : constrain_at])
            content_type = decode(header[constrain_at + 1 :])
            recipient = channel_and_recipient[:-1].split(" to=", 1)
            if (
                author != "assistant"
                or " to=" not in channel_and_recipient
                or not channel_and_recipient.endswith(" ")
                or not all(recipient)
                or not content_type
            ):
                index = header_end + 1
                continue
            channel_name, recipient = recipient
            out += ids[done:index]
            out += [start, *encode(f"assistant to={recipient}"), channel, *encode(f"{channel_name} {content_type}")]
            out.append(message)
            index = done = header_end + 1
        return out + ids[done:]

    # --- completions --------------------------------------------------------------------------------------------

    def count_tool_calls(self, calls: list[dict], deadline: Deadline | None = None) -> int:
        """Tool calls as gpt-oss emits them, without the final stop token (count_generated counts a whole choice):
        each `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`, the arguments as compact JSON,
        `<|call|>` after all but the last and `<|start|>assistant` between them."""
        parts = [_call_part(call) for call in calls]
        return max(0, self._count_parts(parts, deadline) - 1)

    def count_reasoning(self, text: str, deadline: Deadline | None = None) -> int:
        """A response's reasoning as generated: `<|channel|>analysis<|message|>...<|end|>` and the
        `<|start|>assistant` of the message after it (count_completion_parts counts a whole choice)."""
        return self._count_parts([("<|channel|>analysis<|message|>", text, "<|end|>")], deadline) + 2 if text else 0

    def count_generated(self, choice: Choice, count_stop_token: bool, deadline: Deadline | None = None) -> int:
        finish_reason = choice.finish_reason if count_stop_token else None
        return self.count_completion_parts(choice.text, choice.reasoning, choice.tool_calls, finish_reason, deadline)

    def count_completion_parts(
        self,
        content: str | None,
        reasoning: str | None,
        tool_calls: list[dict] | None,
        finish_reason: str | None,
        deadline: Deadline | None = None,
    ) -> int:
        """The tokens gpt-oss generated for one choice, rebuilt from what vLLM answered: after the prompt's
        `<|start|>assistant`, the reasoning as `<|channel|>analysis<|message|>...<|end|>`, the content as
        `<|channel|>final<|message|>...<|return|>` (a `<|channel|>commentary<|message|>...<|end|>` preamble when
        tool calls follow), each tool call as count_tool_calls writes it ending in `<|call|>`, and
        `<|start|>assistant` before every message but the first. When finish_reason is neither "stop" nor
        "tool_calls" the last message's end (`<|return|>`, `<|call|>` or `<|end|>`) was not generated. `tool_calls`
        are {"name", "arguments"} each. An answer with nothing in it still generated its header and stop token."""
        calls = tool_calls or []
        parts = []
        if reasoning:
            parts.append(("<|channel|>analysis<|message|>", reasoning, "<|end|>"))
        if content and calls:
            parts.append(("<|channel|>commentary<|message|>", content, "<|end|>"))
        elif content or not (parts or calls):
            parts.append(("<|channel|>final<|message|>", content or "", RETURN))
        parts += [_call_part(call) for call in calls]
        stopped = finish_reason in STOPPED
        return self._count_parts(parts, deadline) - (0 if stopped else 1)

    def _count_parts(self, parts: list[tuple[str, str, str]], deadline: Deadline | None) -> int:
        """Generated messages (header, text, end), `<|start|>assistant` (2 tokens) between them."""
        total = 2 * (len(parts) - 1) if parts else 0
        for header, text, end in parts:
            total += self.count_prompt_text(header + end, False) + self.count_plain(text, deadline)
        return total


def _call_part(call: dict) -> tuple[str, str, str]:
    header = f"<|channel|>commentary to=functions.{call['name']} <|constrain|>json<|message|>"
    return header, _compact(call.get("arguments") or ""), CALL


def _flatten(content) -> str | None:
    """flatten_input_text_content: a string as it is; parts' texts joined with nothing; None when there is none."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [p if isinstance(p, str) else p.get("text") for p in content if isinstance(p, (str, dict))]
    texts = [_text(t) for t in texts if t is not None]
    return "".join(texts) if texts else None


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _calls(message) -> list[dict]:
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _arguments(arguments) -> str:
    """Tool-call arguments as vLLM hands them to harmony: the client's string as sent ("" for none)."""
    if not arguments:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _compact(arguments: str) -> str:
    """vLLM answers arguments re-serialised by json.dumps; gpt-oss writes them compact ({"city":"Paris"})."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False, separators=(",", ":")) if arguments else "{}"
    except (ValueError, RecursionError):  # not JSON, or nested past the decoder: counted as written
        return arguments


def _drop_analysis(turns: list[_Turn]) -> list[_Turn]:
    """auto_drop_analysis_messages: analysis messages before the last final answer are dropped."""
    last = -1
    for i, turn in enumerate(turns):
        if turn.message.author.role == "assistant" and turn.message.channel == "final":
            last = i
    return [t for i, t in enumerate(turns) if not (i < last and t.message.channel == "analysis")]


class _Formatted:
    """The text of one request that harmony formats and encodes itself (instructions, tools, function names): its
    encoder recurses through whitespace runs, and merges a long piece in time growing with its square (20,000
    letters: 0.15 s; 500,000: 89 s), so such text is refused before it gets there, the work of all of a request's
    such text summed (a message's own content is counted here, unbounded)."""

    def __init__(self) -> None:
        self.work = 0

    def check(self, text: str, where: str) -> None:
        """Refuse `text`, which harmony will encode, if it or all such text so far would take harmony too long."""
        if has_long_whitespace(text):
            raise PayloadTooLarge(f"{where} holds a whitespace run too long for the harmony renderer; shorten it")
        # A piece never spans whitespace: runs without any bound what every piece can cost.
        self.work += sum(len(run) ** 2 for run in _LONG_RUN.findall(text))
        if self.work > MAX_RUN_WORK:
            raise PayloadTooLarge(
                f"{where} holds text without spaces too long for the harmony renderer (runs over "
                f"{MAX_RUN_CHARS} characters, in all of the request); shorten it"
            )
