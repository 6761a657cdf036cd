"""OpenAI's gpt-oss counted as vLLM 0.33 counts it, through openai_harmony (tests/golden/vllm_gptoss_prompt_tokens.json,
made by scripts/make_vllm_golden_gptoss.py from vLLM itself), and its completions rebuilt from vLLM's answer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import ROOT, env, post

from tokencounter import harmony, service
from tokencounter.errors import PayloadTooLarge, TokenCounterError
from tokencounter.harmony import DATA_DIR, O200K_SHA256, RANKS_FILE, HarmonyBackend
from tokencounter.payloads import parse_request

VLLM = json.loads((Path(__file__).parent / "golden" / "vllm_gptoss_prompt_tokens.json").read_text(encoding="utf-8"))
JUDGED = [(case, model, said) for case in VLLM["cases"] for model, said in case["vllm"].items()]
ACCEPTED = [j for j in JUDGED if j[2]["status"] == 200]
REFUSED = [j for j in JUDGED if j[2]["status"] != 200]


def ids(judged) -> str:
    case, model, _ = judged
    return f"{model.split('/')[-1]}-{case['class']}"


@pytest.fixture(scope="module")
def backend() -> HarmonyBackend:
    return HarmonyBackend()


def prompt(request: dict, settings):
    return parse_request(request, settings)


def via_service(request: dict, settings, response=None):
    """The service's answer; a gpt-oss name is counted by the harmony backend."""
    reply = post(env(request, response), settings)
    if reply.status == 200:
        assert reply.payload["tokenizer"] == "gpt-oss" and reply.payload["tokenizer_assumed"] is False
    return reply


def test_golden_is_vllms_and_the_pinned_harmony():
    assert VLLM["vllm"] == "0.33.0" and VLLM["oss_harmony"] == "0.0.11" == version("oss-harmony")
    assert len(ACCEPTED) >= 150 and REFUSED


@pytest.mark.parametrize("judged", ACCEPTED, ids=ids)
def test_counts_what_vllm_counts(judged, backend, settings):
    case, model, said = judged
    assert backend.count_chat(prompt({**case["request"], "model": model}, settings), {}) == said["prompt_tokens"]


@pytest.mark.parametrize("judged", ACCEPTED, ids=ids)
def test_service_counts_what_vllm_counts(judged, settings):
    case, model, said = judged
    reply = via_service({**case["request"], "model": model}, settings)
    assert reply.status == 200, reply.payload
    assert reply.payload["tokenizer_assumed"] is False
    assert reply.payload["usage"]["prompt_tokens"] == said["prompt_tokens"]


@pytest.mark.parametrize("judged", REFUSED, ids=ids)
def test_what_vllm_refuses_is_never_a_5xx(judged, backend, settings):
    case, model, _ = judged
    request = {**case["request"], "model": model}
    try:
        assert backend.count_chat(prompt(request, settings), {}) > 0
    except TokenCounterError as exc:
        assert 400 <= exc.status < 500
    reply = via_service(request, settings)
    assert reply.status < 500, reply.payload


def full_render(backend: HarmonyBackend, turns) -> list[int]:
    """harmony's own render of the conversation with every text in place (what vLLM renders)."""
    from openai_harmony import Conversation, Message, RenderConversationConfig, Role

    messages = []
    for turn in turns:
        message = turn.message
        if turn.texts:
            message = Message.from_dict(
                {**message.to_dict(), "content": [{"type": "text", "text": t} for t in turn.texts]}
            )
        messages.append(message)
    rendered = backend.harmony.render_conversation_for_completion(
        Conversation.from_messages(messages), Role.ASSISTANT, config=RenderConversationConfig(auto_drop_analysis=False)
    )
    return backend._legacy_tool_call_headers(rendered)


@pytest.mark.parametrize("judged", ACCEPTED[::2], ids=ids)
def test_explain_is_harmonys_own_render(judged, backend, settings):
    """The texts counted apart and put back after their <|message|> give the very ids harmony renders whole."""
    case, model, said = judged
    chat = prompt({**case["request"], "model": model}, settings)
    rendering = backend.explain_chat(chat, {}, 200_000)
    assert len(rendering.tokens) == backend.count_chat(chat, {}) == said["prompt_tokens"]
    assert [t[0] for t in rendering.tokens] == full_render(backend, backend.turns(chat))
    starts = [a for _, a, _, _ in rendering.tokens]
    assert starts == sorted(starts) and all(0 <= a <= b <= len(rendering.text) for _, a, b, _ in rendering.tokens)
    assert rendering.text.endswith("<|start|>assistant") and rendering.tokens[-2][3]


def test_explain_through_the_service_adds_up(settings):
    case = next(c for c, _, _ in ACCEPTED if c["class"] == "tool_calls:content_and_reasoning")
    reply = via_service({**case["request"], "model": "openai/gpt-oss-20b"}, settings)
    body = json.dumps(env({**case["request"], "model": "openai/gpt-oss-20b"})).encode()
    explained = service.explain("POST", body, settings).payload
    assert explained["usage"] == reply.payload["usage"]
    assert sum(m["tokens"] for m in explained["messages"]) + explained["overhead_tokens"] == len(explained["tokens"])


@pytest.mark.parametrize("date", ["1999-12-31", "2025-08-05", "2099-01-01"])
def test_any_date_takes_as_many_tokens(date, backend, settings, monkeypatch):
    """vLLM renders today's date (or the one VLLM_SYSTEM_START_DATE pins): every YYYY-MM-DD takes as many tokens,
    so counting with today's is exact for all of them."""
    chat = prompt({"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}]}, settings)
    today = backend.count_chat(chat, {})
    monkeypatch.setattr(harmony, "start_date", lambda: date)
    assert backend.count_chat(chat, {}) == today
    assert f"Current date: {date}\n" in backend.explain_chat(chat, {}, 10_000).text


@pytest.mark.parametrize("run", [" ", "\n", "\t", " \n", "\u00a0"])
def test_a_million_whitespace_characters_are_counted_exactly(run, backend, settings):
    """harmony's own encoder overflows its native stack on such a run (a panic, not an exception): message text is
    counted with the piece path, which agrees with harmony where harmony still copes (50,000 characters)."""
    text = "Hello 東京 12 " + run * 25_000 + " x"
    assert backend.count_plain(text) == len(backend.harmony.encode(text, disallowed_special=()))
    huge = run * (1_000_000 // len(run))
    empty = backend.count_chat(prompt({"messages": [{"role": "user", "content": ""}]}, settings), {})
    chat = prompt({"model": "gpt-oss-20b", "messages": [{"role": "user", "content": huge}]}, settings)
    assert backend.count_chat(chat, {}) == empty + backend.count_plain(huge) > empty
    with pytest.raises(PayloadTooLarge):
        backend.explain_chat(chat, {}, 200_000)


def test_a_million_spaces_through_the_service(settings):
    request = {"model": "openai/gpt-oss-120b", "messages": [{"role": "user", "content": " " * 1_000_000}]}
    reply = via_service(request, settings)
    assert reply.status == 200 and reply.payload["usage"]["prompt_tokens"] > 7_000
    request["messages"].insert(0, {"role": "system", "content": " " * 1_000_000})
    assert via_service(request, settings).status == 413  # instructions are formatted by harmony: refused, cleanly


def test_plain_text_is_harmonys_encoding(backend):
    """count_plain (tiktoken on the shipped ranks) equals harmony's encode, special-token text as text."""
    import random

    rng = random.Random(5)
    alphabet = [*"abc XYZ 123 \n\t  .,;'s 東京🦙é\u0301", "<|end|>", "<|start|>", "'ll", "\r\n", "  "]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert backend.count_plain(text) == len(backend.harmony.encode(text, disallowed_special=()))
    assert backend.count_prompt_text("a<|end|>b", True) == 3  # prompt text: special-token text is special, no BOS


def spelled(backend: HarmonyBackend, text: str) -> int:
    return len(backend.harmony.encode(text, allowed_special="all"))


def test_completion_of_an_answer_with_reasoning(backend):
    reasoning, content = "The user asks for a capital. Paris.", "The capital of France is Paris."
    generated = (
        f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant<|channel|>final<|message|>{content}"
    )
    assert backend.count_completion_parts(content, reasoning, None, "stop") == spelled(
        backend, generated + "<|return|>"
    )
    assert backend.count_completion_parts(content, reasoning, None, "length") == spelled(backend, generated)
    assert backend.count_completion_parts(content, None, [], "stop") == spelled(
        backend, f"<|channel|>final<|message|>{content}<|return|>"
    )
    assert backend.count_completion_parts(None, None, None, "stop") == spelled(
        backend, "<|channel|>final<|message|><|return|>"
    )


def test_completion_of_a_tool_call(backend):
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}  # vLLM answers json.dumps'd arguments
    generated = (
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'
    )
    assert backend.count_completion_parts(None, "Need the weather.", [call], "tool_calls") == spelled(
        backend, generated
    )
    preamble = "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
    header = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}'
    assert backend.count_completion_parts("Checking.", None, [call], "tool_calls") == spelled(
        backend, f"{preamble}{header}<|call|>"
    )
    # count_generated adds the stop token itself: count_tool_calls leaves the <|call|> out.
    assert backend.count_tool_calls([call]) == spelled(backend, header)


def test_reasoning_effort_and_roles_vllm_refuses_are_4xx(backend, settings):
    for request in (
        {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"},
        {"messages": [{"role": "narrator", "content": "x"}]},
    ):
        with pytest.raises(TokenCounterError) as caught:
            backend.count_chat(prompt(request, settings), {})
        assert 400 <= caught.value.status < 500
        assert "narrator" not in caught.value.message and "max" not in caught.value.message


def test_shipped_ranks_are_pinned_with_their_provenance():
    assert hashlib.sha256(RANKS_FILE.read_bytes()).hexdigest() == O200K_SHA256
    provenance = json.loads((DATA_DIR / "PROVENANCE.json").read_text(encoding="utf-8"))
    assert provenance["source_sha256"] == O200K_SHA256 and "gpt-tokenizer@4.0.0" in provenance["source"]
    for name, digest in provenance["files"].items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache" in (DATA_DIR / "NOTICE").read_text() and "MIT" in (DATA_DIR / "LICENSE").read_text()
    requirements = (ROOT / "requirements.txt").read_text()
    assert "oss-harmony==0.0.11" in requirements


def test_openai_harmony_is_imported_lazily_and_reads_the_shipped_ranks(tmp_path):
    """Importing the module loads nothing; loading points harmony at data/gpt-oss only while it loads, and leaves
    an operator's TIKTOKEN_ENCODINGS_BASE alone (harmony checks that file against the same sha256)."""
    script = (
        "import os, sys\n"
        "import tokencounter.harmony as h\n"
        "assert 'openai_harmony' not in sys.modules\n"
        "h.load_harmony()\n"
        "print(os.environ.get('TIKTOKEN_ENCODINGS_BASE'))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_ENCODINGS_BASE"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "None", run.stderr
    # A directory without the file: harmony reads the variable, so the shipped file is what it read when unset.
    environ["TIKTOKEN_ENCODINGS_BASE"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert run.returncode != 0 and "HarmonyError" in run.stderr


def _call(name: str) -> dict:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "messages",
    [
        # harmony formats function names itself: a million spaces panicked its encoder (a 500), 500,000 letters
        # took 89 s and 300,000 spaces inside a name 63 s, all past the time budget.
        [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [_call(" " * 1_000_000)]}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [_call("f" * 500_000)]}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [_call("f" + " " * 300_000 + "g")]},
            {"role": "tool", "tool_call_id": "c1", "content": "x"},
        ],
        [{"role": "system", "content": " ".join(["f" * 10_000] * 50)}, {"role": "user", "content": "hi"}],
    ],
    ids=["name-spaces", "name-letters", "result-name-spaces", "instructions-runs"],
)
def test_text_harmony_formats_is_refused_before_it_can_run_away(messages, settings):
    started = time.perf_counter()
    reply = post(env({"model": "gpt-oss-20b", "messages": messages}), settings)
    assert reply.status == 413 and reply.payload["error"]["code"] == "payload_too_large", reply.payload
    assert time.perf_counter() - started < settings.time_budget_ms / 1000 + 2


def test_long_text_harmony_formats_within_bounds_still_counts(backend, settings):
    """A 20,000-letter run in the instructions (0.15 s of harmony's merging) and a megabyte of prose are counted:
    as many tokens as harmony renders for the whole conversation."""
    for instructions in ("f" * 20_000, "counting tokens exactly " * 40_000):
        messages = [{"role": "system", "content": instructions}, {"role": "user", "content": "hi"}]
        request = {"model": "gpt-oss-20b", "messages": messages}
        whole = full_render(backend, backend.turns(prompt(request, settings)))
        assert post(env(request), settings).payload["usage"]["prompt_tokens"] == len(whole) > 2000
