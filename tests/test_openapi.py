"""openapi.json: a valid OpenAPI 3.1 contract that names every error, and a bounded schemathesis run against the
local host that finds no 5xx and no answer outside the contract."""

from __future__ import annotations

import json

import pytest
import schemathesis
from conftest import GOLDEN_DATE, ROOT, local_host
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import checks

import tokencounter
from tokencounter import errors
from tokencounter.settings import Settings

SPEC = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))
KEY = "schemathesis-key"


def test_the_contract_is_valid_openapi_3_1():
    validate(SPEC)
    assert SPEC["openapi"].startswith("3.1")
    assert SPEC["info"]["version"] == tokencounter.__version__


def test_every_error_code_is_in_the_contract():
    def codes(cls):
        for sub in cls.__subclasses__():
            yield sub.code
            yield from codes(sub)

    produced = {
        errors.TokenCounterError.code,
        *codes(errors.TokenCounterError),
        *errors.HTTPProtocolError.CODES.values(),
    }
    assert produced == set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    for path in ("/api/tokencounter", "/api/tokencounter/explain"):
        assert {"200", "400", "401", "405", "413", "422", "500", "503"} <= set(SPEC["paths"][path]["post"]["responses"])


@pytest.fixture(scope="module")
def host():
    with local_host(Settings(date_string=GOLDEN_DATE, preload=False, function_key=KEY, max_body_bytes=64_000)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def api(host):
    schema = schemathesis.openapi.from_path(ROOT / "openapi.json")
    schema.config.update(base_url=host)
    return schema


@pytest.mark.slow
@pytest.mark.parametrize("operation", ["POST /api/tokencounter", "POST /api/tokencounter/explain", "GET /api/health"])
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_contract(api, operation):
    """Each operation's generated cases (valid and invalid bodies), sent with the key; schemathesis's checks: no
    5xx, status codes, content types, headers and bodies as documented."""
    method, path = operation.split()
    strategy = api[path][method].as_strategy()

    @given(case=strategy)
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        # positive_data_acceptance is left out: RequestBody is a string that must hold a JSON request, which JSON
        # Schema cannot say, so a schema-valid "" is rightly a 400. Every other check of schemathesis runs.
        case.call_and_validate(
            headers={"x-functions-key": KEY}, timeout=30, excluded_checks=[checks.positive_data_acceptance]
        )

    run()
