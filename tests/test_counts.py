"""Counts equal the independent oracle's (tests/golden/counts.json from Meta's tokenizer) on the whole corpus."""

from __future__ import annotations

import pytest
from conftest import GOLDEN, post
from corpus import CASES, case_sha, envelope


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("as_objects", [False, True], ids=["strings", "objects"])
def test_counts_match_oracle(name, as_objects, settings):
    reply = post(envelope(CASES[name], as_objects=as_objects), settings)
    assert reply.status == 200, reply.payload
    want = GOLDEN[name]
    usage = reply.payload["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (want["prompt_tokens"], want["completion_tokens"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert reply.payload["source"] == want["source"]


def test_golden_is_current():
    """Every case has a golden entry made from exactly this case (rerun scripts/make_golden.py otherwise)."""
    assert sorted(GOLDEN) == sorted(CASES)
    stale = [name for name, case in CASES.items() if GOLDEN[name]["case_sha256"] != case_sha(case)]
    assert stale == []


@pytest.mark.parametrize("name", sorted(n for n in GOLDEN if "chatformat_prompt_tokens" in GOLDEN[n]))
def test_oracles_agree(name):
    """The jinja-rendered oracle equals Meta's own ChatFormat wherever ChatFormat applies."""
    assert GOLDEN[name]["prompt_tokens"] == GOLDEN[name]["chatformat_prompt_tokens"]


def test_oracle_coverage():
    """ChatFormat cross-checks a real share of the corpus, including the long and unicode cases."""
    checked = {n for n in GOLDEN if "chatformat_prompt_tokens" in GOLDEN[n]}
    assert {"simple", "multi_turn", "unicode", "trimming", "long_100kb", "content_parts"} <= checked


@pytest.mark.parametrize("keys", [("requestBody", "responseBody"), ("request_body", "response_body")])
def test_envelope_key_spellings(keys, settings):
    env = envelope(CASES["simple"])
    reply = post({keys[0]: env["RequestBody"], keys[1]: env["ResponseBody"]}, settings)
    assert reply.status == 200
    assert reply.payload["usage"]["prompt_tokens"] == GOLDEN["simple"]["prompt_tokens"]
    assert reply.payload["usage"]["completion_tokens"] == GOLDEN["simple"]["completion_tokens"]
