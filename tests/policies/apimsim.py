"""A small API Management gateway for the policy tests: parse the policy XML, compile its C# expressions
with Mono, and run the policy flow (inbound, backend, outbound) against fake clients, model servers and
token-counter functions.

Only what the tokencounter policies use is modelled, after the APIM policy reference: set-variable,
set-header, set-body, choose/when/otherwise, send-request, send-one-way-request, emit-metric,
llm-emit-token-metric, return-response, rate-limit-by-key and forward-request (and its buffer-response).
Every C# expression runs in Mono against the stand-in `context` of csharp/Apim.cs; nothing is evaluated
in Python.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
POLICY_DIR = REPO / "policies"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
CSHARP_DIR = HERE / "csharp"
INSTALL_HINT = "Mono is needed for the policy tests: run `bash scripts/install-mono.sh` (or `make test`)."

# Stand-ins for the APIM named values: the policies must never inline these.
NAMED_VALUES = {
    "tokencounter-url": "https://tokencounter-test.azurewebsites.net/api/tokencounter",
    "tokencounter-key": "test-function-key",
    "tokencounter-namespace": "tokencounter-test",
    "tokencounter-tokens-per-minute": "1000",
    "tokencounter-tokens-per-day": "20000",
    "tokencounter-models": "llama-3-8b-instruct, meta-llama/Llama-3.1-8B-Instruct",
    "tokencounter-stream-include-usage": "true",
    "tokencounter-stream-recount": "false",
    "tokencounter-audit-percent": "0",
}


# The named-value settings the tests run the policies with (every variant's expressions are compiled).
VARIANTS = {
    "default": NAMED_VALUES,
    "recount": {**NAMED_VALUES, "tokencounter-stream-recount": "true"},
    "no-include-usage": {**NAMED_VALUES, "tokencounter-stream-include-usage": "false"},
    "audit": {**NAMED_VALUES, "tokencounter-audit-percent": "100"},
    "audit-off-by-typo": {**NAMED_VALUES, "tokencounter-audit-percent": "ten"},
    "unicode-models": {**NAMED_VALUES, "tokencounter-models": "lláma-3 ✓"},
}

# The dimensions emit-metric fills in itself when a dimension has no value (emit-metric policy reference).
DEFAULT_DIMENSIONS = ("API ID", "Operation ID", "Product ID", "Subscription ID", "User ID", "Location", "Gateway ID")

# Types a set-variable expression may return (set-variable policy reference, "Allowed types").
SET_VARIABLE_TYPES = {
    "System.Boolean",
    "System.SByte",
    "System.SByte[]",
    "System.Byte",
    "System.Byte[]",
    "System.UInt16",
    "System.UInt32",
    "System.UInt64",
    "System.Int16",
    "System.Int32",
    "System.Int64",
    "System.Decimal",
    "System.Single",
    "System.Double",
    "System.Guid",
    "System.String",
    "System.Char",
    "System.DateTime",
    "System.TimeSpan",
    "null",
}
_WIRE_TYPES = {
    "System.String": "string",
    "System.Int32": "int",
    "System.Int64": "long",
    "System.Double": "double",
    "System.Boolean": "bool",
    "null": "null",
}


# ---------------------------------------------------------------- XML


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[Node] = field(default_factory=list)
    text: str = ""
    parent: Node | None = None

    def find(self, tag: str) -> Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()


def substitute_named_values(text: str, named_values: dict[str, str] | None = None) -> str:
    """Replace {{name}} as APIM does before it parses the policy; an unknown name is an error."""
    values = NAMED_VALUES if named_values is None else named_values

    def replace(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"named value {{{{{match.group(1)}}}}} has no test value")
        return values[match.group(1)]

    return re.sub(r"\{\{([A-Za-z0-9._-]+)\}\}", replace, text)


def parse_xml(text: str) -> Node:
    """Parse with expat (raises on malformed XML); keeps line numbers for the C# #line directives."""
    parser = xml.parsers.expat.ParserCreate()
    parser.ordered_attributes = False
    stack: list[Node] = []
    root: list[Node] = []

    def start(tag, attrs):
        node = Node(tag, dict(attrs), parser.CurrentLineNumber, parent=stack[-1] if stack else None)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(tag):
        stack.pop()

    def chars(data):
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.Parse(text, True)
    return root[0]


def expression_source(value: str | None) -> str | None:
    """The policy expression a value holds (APIM: the whole value is @(...) or @{...}), else None."""
    if value is None:
        return None
    stripped = value.strip()
    if stripped.startswith("@(") or stripped.startswith("@{"):
        return stripped
    return None


@dataclass
class Expression:
    source: str
    file: str
    line: int
    where: str  # e.g. "set-variable@value" or "set-body#text"


def expressions_in(root: Node, file: str) -> list[Expression]:
    found = []
    for node in root.iter():
        for name, value in node.attrs.items():
            source = expression_source(value)
            if source:
                found.append(Expression(source, file, node.line, f"{node.tag}@{name}"))
        source = expression_source(node.text)
        if source:
            found.append(Expression(source, file, node.line, f"{node.tag}#text"))
    return found


@dataclass
class Policy:
    name: str
    path: Path
    root: Node
    raw: str

    def section(self, name: str) -> Node:
        section = self.root.find(name)
        assert section is not None, f"{self.name} has no <{name}>"
        return section


def load_policy(path: Path, named_values: dict[str, str] | None = None) -> Policy:
    raw = path.read_text(encoding="utf-8")
    return Policy(path.name, path, parse_xml(substitute_named_values(raw, named_values)), raw)


DIMENSIONS_FILE = POLICY_DIR / "dimensions.xml"


def policy_files() -> list[Path]:
    """The pasteable policy documents (policies/dimensions.xml is their shared dimension set, not a policy)."""
    return sorted(p for p in POLICY_DIR.glob("*.xml") if p != DIMENSIONS_FILE)


# Deliberately broken copies of emit-token-metrics.xml, each with one flaw of the sample policy the
# project replaces; the tests must catch every one of them (test_policy_flows.py::test_mutant_is_caught).
MUTATIONS = {
    "response-body-consumed": (
        "context.Response.Body.As&lt;string&gt;(preserveContent: true)",
        "context.Response.Body.As&lt;string&gt;()",
    ),
    "request-body-read-in-outbound": (
        'new JProperty("RequestBody", context.Variables.GetValueOrDefault&lt;string&gt;('
        '"tokencounter-request-body", ""))',
        'new JProperty("RequestBody", context.Request.Body.As&lt;string&gt;(preserveContent: true))',
    ),
    "errors-not-ignored": ('ignore-error="true"', 'ignore-error="false"'),
    "hard-coded-model": (
        """<set-variable name="tokencounter-model" value='@{""",
        """<set-variable name="tokencounter-model" value="Llama-3-8B" x='@{""",
    ),
    "null-answer-cast": (
        'if (answer == null || answer.StatusCode != 200) { return ""; }',
        'if (answer.StatusCode != 200) { return ""; }',
    ),
}


# An expression APIM would refuse (System.IO is not an allowed type; DateTime.ToBinary not an allowed
# member): compiled with the others to prove the type audit catches such code.
CANARY = '@(System.IO.File.Exists("/tmp/x") ? DateTime.UtcNow.ToBinary().ToString() : "")'


def mutant(name: str) -> Policy:
    path = POLICY_DIR / "emit-token-metrics.xml"
    old, new = MUTATIONS[name]
    raw = path.read_text(encoding="utf-8")
    assert raw.count(old) >= 1, f"mutation {name} no longer applies"
    text = raw.replace(old, new)
    return Policy(f"mutant:{name}", path, parse_xml(substitute_named_values(text)), text)


def doc_snippets(path: Path) -> list[tuple[int, str]]:
    """The ```xml blocks of a Markdown file, with their first line number."""
    text = path.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```xml\n(.*?)```", text, re.S)]


def snippet_root(snippet: str) -> Node:
    """A docs snippet as a policy document: snippets that are not a whole <policies> go in <inbound>."""
    text = substitute_named_values(snippet.strip())
    if not text.startswith("<policies"):
        text = f"<policies><inbound>{text}</inbound></policies>"
    return parse_xml(text)


# ---------------------------------------------------------------- C# compilation


def find_newtonsoft() -> Path | None:
    candidates = [os.environ.get("TOKENCOUNTER_NEWTONSOFT_DLL", "")]
    try:
        libs = subprocess.run(["pkg-config", "--libs", "newtonsoft-json"], capture_output=True, text=True, timeout=10)
        candidates += [part[3:] for part in libs.stdout.split() if part.startswith("-r:")]
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += sorted(glob.glob("/usr/lib/cli/Newtonsoft.Json*/Newtonsoft.Json.dll"))
    candidates += sorted(glob.glob("/usr/lib/mono/gac/Newtonsoft.Json/*/Newtonsoft.Json.dll"))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def mono_missing() -> str | None:
    """Why the Mono toolchain is unusable, or None."""
    for tool in ("mcs", "mono"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed. {INSTALL_HINT}"
    if find_newtonsoft() is None:
        return f"Newtonsoft.Json.dll (libnewtonsoft-json-cil-dev) is not installed. {INSTALL_HINT}"
    return None


def generate_csharp(expressions: list[Expression]) -> tuple[str, dict[str, str]]:
    """One C# class with a method per distinct expression; returns the code and source -> method id."""
    ids: dict[str, str] = {}
    methods = []
    for expression in expressions:
        if expression.source in ids:
            continue
        ident = f"E{len(ids)}"
        ids[expression.source] = ident
        body = expression.source[2:-1]
        code = f"return (object)(\n{body}\n);" if expression.source.startswith("@(") else body
        # #line: compiler errors point at the policy file and line.
        methods.append(
            f'#line {expression.line} "{expression.file}"\n'
            f"    static object {ident}(IContext context) {{ {code} }}\n#line default\n"
        )
    table = ",\n        ".join(f'{{ "{ident}", {ident} }}' for ident in ids.values())
    code = (
        "using System;\nusing System.Collections.Generic;\nusing System.Linq;\nusing System.Text;\n"
        "using System.Text.RegularExpressions;\nusing Newtonsoft.Json;\nusing Newtonsoft.Json.Linq;\nusing Apim;\n\n"
        "public static class PolicyExpressions\n{\n"
        "    public static readonly Dictionary<string, Func<IContext, object>> All =\n"
        f"        new Dictionary<string, Func<IContext, object>> {{\n        {table}\n    }};\n\n"
        + "\n".join(methods)
        + "}\n"
    )
    return code, ids


def compile_expressions(expressions: list[Expression], workdir: Path) -> tuple[Path, dict[str, str]]:
    """Compile every expression, the stand-ins and the runner with one mcs call (C# 7, as APIM)."""
    newtonsoft = find_newtonsoft()
    code, ids = generate_csharp(expressions)
    (workdir / "PolicyExpressions.cs").write_text(code, encoding="utf-8")
    shutil.copy(newtonsoft, workdir / "Newtonsoft.Json.dll")
    exe = workdir / "policies.exe"
    result = subprocess.run(
        [
            "mcs",
            "-langversion:7",
            "-target:exe",
            f"-out:{exe}",
            "-r:Newtonsoft.Json.dll",
            "-nowarn:162,168,219",
            str(CSHARP_DIR / "Apim.cs"),
            str(CSHARP_DIR / "Runner.cs"),
            "PolicyExpressions.cs",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mcs failed:\n{result.stdout}\n{result.stderr}")
    return exe, ids


class Mono:
    """One long-lived `mono policies.exe serve` process: one JSON line per expression evaluation."""

    def __init__(self, exe: Path, ids: dict[str, str]):
        self.exe = exe
        self.ids = ids
        env = dict(os.environ, LANG="C.UTF-8")
        self.process = subprocess.Popen(
            ["mono", str(exe), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="ascii",
            env=env,
            cwd=exe.parent,
        )

    def evaluate(self, source: str, snapshot: dict) -> dict:
        if source not in self.ids:
            raise KeyError(f"expression was not compiled: {source[:80]}")
        self.process.stdin.write(json.dumps({"expr": self.ids[source], "ctx": snapshot}, ensure_ascii=True) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the Mono expression runner exited")
        reply = json.loads(line)
        if reply.get("harness"):
            raise RuntimeError(f"harness error: {reply['error']}")
        return reply

    def audit(self) -> list[dict]:
        result = subprocess.run(
            ["mono", str(self.exe), "audit"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.exe.parent,
            env=dict(os.environ, LANG="C.UTF-8"),
        )
        if result.returncode != 0:
            raise RuntimeError(f"audit failed: {result.stderr}")
        return json.loads(result.stdout)["references"]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


# ---------------------------------------------------------------- HTTP model


class Headers:
    """Case-insensitive header map keeping the caller's spelling; values are lists, as in APIM."""

    def __init__(self, items: dict[str, str | list[str]] | None = None):
        self._items: dict[str, tuple[str, list[str]]] = {}
        for name, value in (items or {}).items():
            self.set(name, value)

    def set(self, name: str, value: str | list[str]):
        self._items[name.lower()] = (name, list(value) if isinstance(value, list) else [value])

    def append(self, name: str, value: str):
        if name.lower() in self._items:
            self._items[name.lower()][1].append(value)
        else:
            self.set(name, value)

    def delete(self, name: str):
        self._items.pop(name.lower(), None)

    def get(self, name: str, default: str | None = None) -> str | None:
        found = self._items.get(name.lower())
        return ",".join(found[1]) if found else default

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def to_json(self) -> dict[str, list[str]]:
        return {name: values for name, values in self._items.values()}

    def copy(self) -> Headers:
        return Headers({name: list(values) for name, values in self._items.values()})


@dataclass
class Message:
    """An HTTP request or response as the gateway sees it."""

    status: int = 200
    reason: str = "OK"
    headers: Headers = field(default_factory=Headers)
    body: str | None = None
    method: str = "POST"
    url: str = "https://apim-test.azure-api.net/llama/v1/chat/completions"


def json_response(payload, status: int = 200, reason: str = "OK", content_type: str = "application/json") -> Message:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return Message(status=status, reason=reason, headers=Headers({"Content-Type": content_type}), body=body)


@dataclass
class Call:
    """One request a policy sent to the function."""

    url: str
    method: str
    headers: Headers
    body: str
    timeout: int
    one_way: bool

    def envelope(self) -> dict:
        return json.loads(self.body)


class CallFailed(Exception):
    """The function did not answer: a timeout or a connection failure."""


@dataclass
class Identity:
    """Who is calling, as APIM would know it (None: the API has no subscription/product/user)."""

    api_id: str = "llama-api"
    operation_id: str = "chat-completions"
    product_id: str | None = "starter"
    subscription_id: str | None = "sub-0001"
    user_id: str | None = "user-0001"
    region: str = "West Europe"
    gateway_id: str = "managed"
    ip: str = "203.0.113.7"

    def default_dimension(self, name: str) -> str:
        return {
            "API ID": self.api_id,
            "Operation ID": self.operation_id,
            "Product ID": self.product_id or "",
            "Subscription ID": self.subscription_id or "",
            "User ID": self.user_id or "",
            "Location": self.region,
            "Gateway ID": self.gateway_id,
        }[name]


@dataclass
class Metric:
    name: str
    namespace: str
    value: float
    dimensions: dict[str, str]
    # llm-emit-token-metric: "usage" (the backend's usage in the stream) or "estimate" (APIM's own count).
    meter: str | None = None


@dataclass
class Outcome:
    response: Message
    metrics: list[Metric]
    calls: list[Call]
    backend_requests: list[Message]
    variables: dict
    error: str | None
    response_read: bool = False  # did any expression read the model's response body (which buffers a stream)
    buffered: bool = True  # forward-request's buffer-response

    def metric(self, name: str) -> Metric:
        found = [m for m in self.metrics if m.name == name]
        assert len(found) == 1, f"expected one {name!r} metric, got {self.metrics}"
        return found[0]

    def values(self) -> dict[str, float]:
        return {m.name: m.value for m in self.metrics}


class PolicyError(Exception):
    """What APIM would turn into the on-error section: an expression threw or a policy failed."""


class _Returned(Exception):
    def __init__(self, response: Message):
        self.response = response


@dataclass
class RateLimits:
    """rate-limit-by-key counters: sliding windows of (time, count) per key, with a settable clock."""

    now: float = 0.0
    windows: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    remaining_type: str = "int"  # the type the gateway stores in remaining-calls-variable-name

    def used(self, key: str, period: int) -> tuple[int, float | None]:
        window = [(t, n) for t, n in self.windows.get(key, []) if t > self.now - period]
        self.windows[key] = window
        return sum(n for _, n in window), (window[0][0] if window else None)


# ---------------------------------------------------------------- the gateway


class Gateway:
    """Runs one policy document for one client request."""

    def __init__(
        self,
        mono: Mono,
        policy: Policy,
        *,
        backend,
        function,
        identity: Identity | None = None,
        limits: RateLimits | None = None,
        failed_call_variable: str = "null",
    ):
        # failed_call_variable: what send-request with ignore-error leaves after a failed call, "null" (the
        # documented behaviour) or "absent" (the variable is only created on success).
        self.failed_call_variable = failed_call_variable
        self.mono = mono
        self.policy = policy
        self.backend = backend
        self.function = function
        self.identity = identity or Identity()
        self.limits = limits or RateLimits()

    # -- entry point

    def run(self, request: Message) -> Outcome:
        self.request = Message(
            method=request.method, url=request.url, headers=request.headers.copy(), body=request.body
        )
        self.request_consumed = False
        self.response: Message | None = None
        self.response_consumed = False
        self.phase = "inbound"
        self.variables: dict[str, tuple[str, object]] = {}
        self.response_variable_consumed: dict[str, bool] = {}
        self.metrics: list[Metric] = []
        self.calls: list[Call] = []
        self.backend_requests: list[Message] = []
        self.deferred: list = []
        self.final_headers: dict[str, str] = {}
        self.response_read = False
        self.buffered = True
        self.meters: list = []
        error = None
        try:
            try:
                self.block(self.policy.section("inbound"))
                self.phase = "backend"
                self.block(self.policy.section("backend"))
                self.phase = "outbound"
                self.block(self.policy.section("outbound"))
            except _Returned as returned:
                self.response, self.response_consumed = returned.response, False
            self.finish()
        except PolicyError as failure:
            # The policies' on-error sections only hold <base />: the client gets APIM's 500.
            error = str(failure)
            self.response = json_response({"statusCode": 500, "message": "Internal server error"}, 500, "Error")
            self.response_consumed = False
        client = Message(
            status=self.response.status,
            reason=self.response.reason,
            headers=self.response.headers,
            body="" if self.response_consumed else self.response.body,
        )
        return Outcome(
            client,
            self.metrics,
            self.calls,
            self.backend_requests,
            {k: v for k, (_, v) in self.variables.items()},
            error,
            self.response_read,
            self.buffered,
        )

    def finish(self):
        # llm-emit-token-metric meters the response as it passes, once it is complete.
        for meter in self.meters:
            meter()
        # rate-limit-by-key: expression increments run at the end of the outbound section.
        for apply in self.deferred:
            apply()
        for name, value in self.final_headers.items():
            self.response.headers.set(name, value)

    # -- expressions

    def snapshot(self) -> dict:
        ident = self.identity
        request_body = self.request.body
        variables = {}
        for name, (kind, value) in self.variables.items():
            if kind == "response":
                message: Message | None = value
                variables[name] = {
                    "t": "response",
                    "v": {
                        "status": message.status,
                        "reason": message.reason,
                        "headers": message.headers.to_json(),
                        "body": message.body,
                        "consumed": self.response_variable_consumed.get(name, False),
                    },
                }
            else:
                variables[name] = {"t": kind, "v": value}
        response = None
        if self.response is not None:
            response = {
                "status": self.response.status,
                "reason": self.response.reason,
                "headers": self.response.headers.to_json(),
                "body": self.response.body,
                "consumed": self.response_consumed,
            }
        return {
            "request": {
                "method": self.request.method,
                "url": {
                    "scheme": "https",
                    "host": "apim-test.azure-api.net",
                    "port": 443,
                    "path": "/llama/v1/chat/completions",
                    "queryString": "",
                },
                "headers": self.request.headers.to_json(),
                "ip": ident.ip,
                "body": request_body,
                # Once forwarded, the request stream is spent: outbound reads get nothing.
                "consumed": self.request_consumed or self.phase == "outbound",
            },
            "response": response,
            "variables": variables,
            "api": {"id": ident.api_id, "name": ident.api_id, "path": "llama"},
            "operation": {
                "id": ident.operation_id,
                "method": "POST",
                "name": ident.operation_id,
                "urlTemplate": "/v1/chat/completions",
            },
            "product": {"id": ident.product_id, "name": ident.product_id} if ident.product_id else None,
            "subscription": (
                {"id": ident.subscription_id, "name": ident.subscription_id, "key": "k"}
                if ident.subscription_id
                else None
            ),
            "user": {"id": ident.user_id, "email": f"{ident.user_id}@example.com"} if ident.user_id else None,
            "deployment": {"gatewayId": ident.gateway_id, "region": ident.region, "serviceName": "apim-test"},
        }

    def evaluate(self, source: str, where: str) -> tuple[str, object]:
        reply = self.mono.evaluate(source, self.snapshot())
        consumed = reply.get("consumed", {})
        if consumed.get("request") and self.phase != "outbound":
            self.request_consumed = True
        if consumed.get("response"):
            self.response_consumed = True
        if consumed.get("responseRead") and self.phase == "outbound":
            self.response_read = True
        for name, flag in consumed.get("variables", {}).items():
            self.response_variable_consumed[name] = flag
        if not reply["ok"]:
            raise PolicyError(f"{where}: {reply['error']}")
        return reply["type"], reply["value"]

    def value(self, raw: str | None, where: str) -> tuple[str, object]:
        """An attribute or text value: evaluated when it is an expression, else the literal string."""
        source = expression_source(raw)
        if source is None:
            return "System.String", raw
        return self.evaluate(source, where)

    def text(self, raw: str | None, where: str) -> str | None:
        kind, value = self.value(raw, where)
        if value is None:
            return None
        if kind == "System.Boolean":
            return "True" if value else "False"  # C#'s bool.ToString()
        return str(value)

    # -- policies

    def block(self, section: Node):
        for node in section.children:
            handler = getattr(self, "do_" + node.tag.replace("-", "_"), None)
            if handler is None:
                raise AssertionError(f"the test gateway does not model <{node.tag}>")
            handler(node)

    def do_base(self, node: Node):
        if self.phase == "backend":
            self.do_forward_request(node)

    def do_forward_request(self, node: Node):
        self.buffered = node.attrs.get("buffer-response", "true") != "false"
        sent = Message(
            method=self.request.method,
            url=self.request.url,
            headers=self.request.headers.copy(),
            body="" if self.request_consumed else self.request.body,
        )
        self.backend_requests.append(sent)
        self.response = self.backend(sent)
        self.response_consumed = False

    def do_set_variable(self, node: Node):
        kind, value = self.value(node.attrs["value"], f"set-variable {node.attrs['name']}")
        if kind not in SET_VARIABLE_TYPES:
            raise PolicyError(f"set-variable {node.attrs['name']} returned {kind}, not a type set-variable allows")
        if kind not in _WIRE_TYPES:
            raise AssertionError(f"the test gateway does not carry {kind} variables")
        self.variables[node.attrs["name"]] = (_WIRE_TYPES[kind], value)

    def do_choose(self, node: Node):
        for branch in node.children:
            if branch.tag == "otherwise":
                self.block(branch)
                return
            kind, value = self.value(branch.attrs["condition"], "when condition")
            if kind != "System.Boolean":
                raise PolicyError(f"when condition returned {kind}")
            if value:
                self.block(branch)
                return

    def _headers(self, node: Node, headers: Headers):
        name = self.text(node.attrs["name"], "set-header name")
        action = node.attrs.get("exists-action", "override")
        if action == "delete":
            headers.delete(name)
            return
        if action == "skip" and name in headers:
            return
        values = [self.text(v.text, f"set-header {name}") for v in node.children if v.tag == "value"]
        if action == "append":
            for value in values:
                headers.append(name, value)
        else:
            headers.set(name, values)

    def do_set_header(self, node: Node):
        if self.phase == "outbound":
            self._headers(node, self.response.headers)
        else:
            self._headers(node, self.request.headers)

    def _request(self, node: Node, one_way: bool) -> Call:
        url = method = body = None
        headers = Headers()
        for child in node.children:
            if child.tag == "set-url":
                url = self.text(child.text.strip(), "set-url")
            elif child.tag == "set-method":
                method = child.text.strip()
            elif child.tag == "set-header":
                self._headers(child, headers)
            elif child.tag == "set-body":
                body = self.text(child.text.strip(), "set-body")
        timeout = int(self.text(node.attrs.get("timeout", "60"), "timeout"))
        call = Call(url, method, headers, body or "", timeout, one_way)
        self.calls.append(call)
        return call

    def do_send_request(self, node: Node):
        name = node.attrs["response-variable-name"]
        call = self._request(node, one_way=False)
        try:
            answer = self.function(call)
        except CallFailed as failure:
            if node.attrs.get("ignore-error") != "true":
                raise PolicyError(f"send-request failed: {failure}") from None
            # ignore-error: "the response variable will contain a null value".
            if self.failed_call_variable == "null":
                self.variables[name] = ("null", None)
            return
        self.variables[name] = ("response", answer)
        self.response_variable_consumed[name] = False

    def do_set_body(self, node: Node):
        target = self.response if self.phase == "outbound" else self.request
        target.body = self.text(node.text.strip(), "set-body")

    def do_send_one_way_request(self, node: Node):
        call = self._request(node, one_way=True)
        try:
            self.function(call)
        except CallFailed:
            pass  # fire and forget: nobody waits for the answer or hears of its failure

    def do_emit_metric(self, node: Node):
        kind, value = self.value(node.attrs.get("value", "1"), f"emit-metric {node.attrs['name']} value")
        if kind == "System.String":
            value = float(value)
        elif kind not in ("System.Double", "System.Int32", "System.Int64", "System.Single", "System.Decimal"):
            raise PolicyError(f"emit-metric value returned {kind}")
        dimensions = self.dimensions(node)
        self.metrics.append(
            Metric(node.attrs["name"], node.attrs.get("namespace", "API Management"), float(value), dimensions)
        )

    def do_llm_emit_token_metric(self, node: Node):
        """APIM's stream-aware meter: its dimensions are evaluated here, its metrics once the response has passed.

        Modelled after the policy reference: the backend's usage when the response reports one (for a stream,
        in a chunk), else an estimate of APIM's own (here: characters / 4, flagged as meter="estimate")."""
        if self.phase != "inbound":
            raise PolicyError("llm-emit-token-metric is only allowed in the inbound section")
        namespace = node.attrs.get("namespace", "API Management")
        dimensions = self.dimensions(node)

        def meter():
            response = self.response
            if response is None or response.status // 100 != 2:
                return
            usage = stream_usage(response.body or "")
            if usage:
                values, kind = usage, "usage"
            else:
                prompt = len(self.request.body or "") // 4
                completion = len(response.body or "") // 4
                values, kind = {"prompt_tokens": prompt, "completion_tokens": completion}, "estimate"
            prompt, completion = values["prompt_tokens"], values.get("completion_tokens", 0)
            for name, value in (
                ("Total Tokens", prompt + completion),
                ("Prompt Tokens", prompt),
                ("Completion Tokens", completion),
            ):
                self.metrics.append(Metric(name, namespace, float(value), dict(dimensions), kind))

        self.meters.append(meter)

    def dimensions(self, node: Node) -> dict[str, str]:
        dimensions = {}
        for dim in node.children:
            name = self.text(dim.attrs["name"], "dimension name")
            if "value" in dim.attrs:
                dimensions[name] = self.text(dim.attrs["value"], f"dimension {name}")
            elif name in DEFAULT_DIMENSIONS:
                dimensions[name] = self.identity.default_dimension(name)
            else:
                raise PolicyError(f"dimension {name!r} has no value and is not a default dimension")
        return dimensions

    def do_return_response(self, node: Node):
        response = Message(status=200, reason="OK", headers=Headers(), body="")
        for child in node.children:
            if child.tag == "set-status":
                response.status = int(self.text(child.attrs["code"], "set-status code"))
                response.reason = self.text(child.attrs.get("reason", ""), "set-status reason")
            elif child.tag == "set-header":
                self._headers(child, response.headers)
            elif child.tag == "set-body":
                response.body = self.text(child.text.strip(), "set-body")
        raise _Returned(response)

    def do_rate_limit_by_key(self, node: Node):
        calls = int(self.text(node.attrs["calls"], "calls"))
        period = int(self.text(node.attrs["renewal-period"], "renewal-period"))
        key = self.text(node.attrs["counter-key"], "counter-key")
        # APIM defers increment-condition/increment-count to the end of the outbound section when they
        # are expressions (rate-limit-by-key reference); the check itself happens now.
        deferred = any(expression_source(node.attrs.get(a)) for a in ("increment-count", "increment-condition"))
        used, oldest = self.limits.used(key, period)
        increment = 1 if deferred else int(node.attrs.get("increment-count", "1"))
        remaining_header = node.attrs.get("remaining-calls-header-name")
        total_header = node.attrs.get("total-calls-header-name")
        if (used >= calls) if deferred else (used + increment > calls):
            retry = max(1, math.ceil((oldest + period - self.limits.now) if oldest is not None else period))
            if "retry-after-variable-name" in node.attrs:
                self.variables[node.attrs["retry-after-variable-name"]] = ("int", retry)
            response = json_response(
                {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {retry} seconds."},
                429,
                "Too Many Requests",
            )
            response.headers.set(node.attrs.get("retry-after-header-name", "Retry-After"), str(retry))
            if remaining_header:
                response.headers.set(remaining_header, "0")
            if total_header:
                response.headers.set(total_header, str(calls))
            raise _Returned(response)
        remaining = calls - used
        if "remaining-calls-variable-name" in node.attrs:
            self.variables[node.attrs["remaining-calls-variable-name"]] = (self.limits.remaining_type, remaining)
        if remaining_header:
            self.final_headers[remaining_header] = str(remaining)
        if total_header:
            self.final_headers[total_header] = str(calls)

        def apply():
            if "increment-condition" in node.attrs:
                kind, condition = self.value(node.attrs["increment-condition"], "increment-condition")
                if kind != "System.Boolean":
                    raise PolicyError(f"increment-condition returned {kind}")
                if not condition:
                    return
            count = int(self.text(node.attrs.get("increment-count", "1"), "increment-count"))
            self.limits.windows.setdefault(key, []).append((self.limits.now, count))

        if deferred:
            self.deferred.append(apply)
        else:
            apply()


# ---------------------------------------------------------------- fakes


def stream_usage(body: str) -> dict | None:
    """The usage object of the last SSE data event that has one (or of a JSON body); None without one."""
    events = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")] or [body]
    for data in reversed(events):
        try:
            usage = json.loads(data).get("usage")
        except (ValueError, AttributeError):
            continue
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            return usage
    return None


def usage_payload(prompt: int, completion: int, model: str | None = None, source: str = "counted") -> dict:
    """The function's 200 answer (the contract in the issue)."""
    return {
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "model": model,
        "tokenizer": "llama-3",
        "source": source,
    }


class FakeFunction:
    """The token-counter function: answers full counts and prompt-only counts, or fails as told.

    A behaviour is "ok", "timeout", or a Message to answer with.
    """

    def __init__(self, prompt: int = 21, completion: int = 7, full="ok", prompt_only="ok"):
        self.prompt, self.completion = prompt, completion
        self.full, self.prompt_only = full, prompt_only
        self.calls: list[Call] = []

    def __call__(self, call: Call) -> Message:
        self.calls.append(call)
        envelope = json.loads(call.body)
        only_prompt = envelope.get("ResponseBody") in (None, "")
        behaviour = self.prompt_only if only_prompt else self.full
        if behaviour == "timeout":
            raise CallFailed(f"no answer within {call.timeout} s")
        if isinstance(behaviour, Message):
            return behaviour
        try:
            model = json.loads(envelope["RequestBody"]).get("model")
        except (KeyError, TypeError, ValueError):
            # As the function does: no countable request, a 400 with the error shape of the contract.
            return json_response({"error": {"code": "invalid_field", "message": "RequestBody is required"}}, 400)
        completion = 0 if only_prompt else self.completion
        return json_response(usage_payload(self.prompt, completion, model))


class FakeModel:
    """The self-hosted model server behind the API: answers every request with one response."""

    def __init__(self, response: Message):
        self.response = response
        self.requests: list[Message] = []

    def __call__(self, request: Message) -> Message:
        self.requests.append(request)
        return Message(
            status=self.response.status,
            reason=self.response.reason,
            headers=self.response.headers.copy(),
            body=self.response.body,
        )
