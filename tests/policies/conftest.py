"""Session fixtures for the APIM policy tests: every C# expression compiled once, one Mono process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# apimsim and policy_samples, whatever pytest's import mode; appended, so that nothing here shadows
# a module of the same name elsewhere (tests/conftest.py is imported as `conftest`).
sys.path.append(str(Path(__file__).resolve().parent))

import apimsim  # noqa: E402


def all_expressions() -> list[apimsim.Expression]:
    """The expressions of every policy file, of the mutants and of every XML snippet in docs/deployment.md."""
    found = []
    for path in apimsim.policy_files():
        for values in apimsim.VARIANTS.values():
            found += apimsim.expressions_in(apimsim.load_policy(path, values).root, f"policies/{path.name}")
    for name in apimsim.MUTATIONS:
        found += apimsim.expressions_in(apimsim.mutant(name).root, f"mutant-{name}.xml")
    found.append(apimsim.Expression(apimsim.CANARY, "canary.xml", 1, "canary"))
    if apimsim.DEPLOYMENT_DOC.exists():
        for line, snippet in apimsim.doc_snippets(apimsim.DEPLOYMENT_DOC):
            for expression in apimsim.expressions_in(apimsim.snippet_root(snippet), "docs/deployment.md"):
                expression.line += line - 1
                found.append(expression)
    return found


@pytest.fixture(scope="session")
def mono(tmp_path_factory) -> apimsim.Mono:
    """All expressions compiled with one mcs call, served by one long-lived Mono process."""
    missing = apimsim.mono_missing()
    if missing:
        pytest.fail(missing, pytrace=False)
    exe, ids = apimsim.compile_expressions(all_expressions(), tmp_path_factory.mktemp("csharp"))
    runner = apimsim.Mono(exe, ids)
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def policies() -> dict[str, apimsim.Policy]:
    return {path.name: apimsim.load_policy(path) for path in apimsim.policy_files()}
