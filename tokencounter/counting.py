"""Count a parsed request: prompt tokens as the model's chat template renders them, completion tokens as generated."""

from __future__ import annotations

import itertools
import logging

from .backend import Backend
from .budget import Deadline
from .conversation import VLLM_VERSION
from .datamodel import Completion, CountRequest, Prompt
from .registry import REGISTRY, ModelSpec, resolve
from .settings import Settings

log = logging.getLogger("tokencounter")
_ASSUMED = itertools.count(1)  # requests counted with an assumed tokenizer, in this process


def count_request(request: CountRequest, settings: Settings, deadline: Deadline, *, recount: bool = False) -> dict:
    """The answer for one request: usage, which tokenizer counted, and whether the usage is upstream's.

    recount: count even when the response carries the backend's usage (then both are answered)."""
    spec = resolve(request.prompt.model, settings)
    upstream = request.completion.usage if request.completion else None
    if upstream and not recount:
        return {"usage": upstream, **describe(request.prompt, spec), "source": "upstream"}
    backend = REGISTRY.get(spec, settings, wait_s=deadline.remaining_s())
    prompt_tokens = count_prompt(backend, request.prompt, settings, deadline)
    completion_tokens = count_completion(backend, request.completion, settings, deadline)
    result = counted(request, spec, prompt_tokens, completion_tokens)
    if upstream:
        _log_drift(spec, result["usage"], upstream)
    return result


def describe(prompt: Prompt, spec: ModelSpec) -> dict:
    """What every answer says besides the usage: the model asked for, the tokenizer that counted, whether it was
    assumed, and the engine whose counts these are."""
    return {
        "model": prompt.model,
        "tokenizer": spec.name,
        "tokenizer_assumed": spec.assumed,
        "follows": f"vLLM {VLLM_VERSION}",
    }


def counted(request: CountRequest, spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> dict:
    """The answer for counts made here (the backend's own usage beside them, when the response had one)."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    result = {"usage": usage, **describe(request.prompt, spec), "source": "counted"}
    if spec.assumed:
        _log_assumed(spec)
    if request.completion and request.completion.usage:
        result["upstream_usage"] = request.completion.usage
    return result


def count_prompt(backend: Backend, prompt: Prompt, settings: Settings, deadline: Deadline) -> int:
    if prompt.kind == "chat":
        return backend.count_chat(prompt, settings.template_defaults, deadline)
    total = 0
    for text in prompt.texts:
        deadline.check()
        if isinstance(text, list):
            total += len(text)
        else:
            total += backend.count_prompt_text(text, prompt.add_special_tokens, deadline)
    return total


def count_completion(backend: Backend, completion: Completion | None, settings: Settings, deadline: Deadline) -> int:
    if completion is None:
        return 0
    total = 0
    for choice in completion.choices:
        deadline.check()
        total += backend.count_generated(choice, settings.count_stop_token, deadline)
    return total


def _log_assumed(spec: ModelSpec) -> None:
    # The name is the caller's: only the running count is logged.
    log.warning("model not recognised: counted with the default tokenizer %s (%d so far)", spec.name, next(_ASSUMED))


def _log_drift(spec: ModelSpec, counted: dict, upstream: dict) -> None:
    log.info(
        "usage drift tokenizer=%s prompt=%+d completion=%+d (counted minus upstream)",
        spec.name,
        counted["prompt_tokens"] - upstream["prompt_tokens"],
        counted["completion_tokens"] - upstream["completion_tokens"],
    )
