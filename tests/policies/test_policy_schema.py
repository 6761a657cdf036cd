"""Static checks of the policy XML: well-formed, only elements and attributes of APIM's policy reference,
named values instead of inlined endpoints and keys, the built-in token metrics' names and dimensions,
and C# that only touches the .NET types APIM allows in policy expressions."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field

import apimsim
import pytest

SECTIONS = {"inbound", "backend", "outbound", "on-error"}
REQUEST_SECTIONS = {"inbound", "outbound", "backend", "on-error"}
STATEMENT_PARENTS = SECTIONS | {"when", "otherwise"}


@dataclass(frozen=True)
class Spec:
    """One element of the policy reference: attribute -> policy expressions allowed, and where it may appear."""

    attrs: dict[str, bool] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    parents: frozenset[str] = frozenset(STATEMENT_PARENTS)  # direct parent element
    sections: frozenset[str] = frozenset(REQUEST_SECTIONS)  # enclosing policy section
    text: str | None = None  # None: no text; "literal"; "expression": a literal or a policy expression
    children: tuple[str, ...] | None = None  # allowed child elements, in the reference's order


def spec(attrs=None, required=(), parents=STATEMENT_PARENTS, sections=REQUEST_SECTIONS, text=None, children=None):
    return Spec(dict(attrs or {}), frozenset(required), frozenset(parents), frozenset(sections), text, children)


REQUEST_CHILDREN = (
    "set-url",
    "set-method",
    "set-header",
    "set-body",
    "authentication-certificate",
    "authentication-managed-identity",
    "proxy",
)

# From learn.microsoft.com/azure/api-management/<element>-policy (attribute tables, "Policy expressions
# are allowed" / "aren't allowed", Usage > Policy sections).
REFERENCE: dict[str, Spec] = {
    "policies": spec(parents=(), sections=(), children=("inbound", "backend", "outbound", "on-error")),
    "inbound": spec(parents={"policies"}, sections=()),
    "backend": spec(parents={"policies"}, sections=()),
    "outbound": spec(parents={"policies"}, sections=()),
    "on-error": spec(parents={"policies"}, sections=()),
    "base": spec(sections=SECTIONS),
    "set-variable": spec({"name": False, "value": True}, required={"name", "value"}),
    "set-header": spec(
        {"name": True, "exists-action": True},
        required={"name"},
        parents=STATEMENT_PARENTS | {"send-request", "send-one-way-request", "return-response"},
        children=("value",),
    ),
    "value": spec(parents={"set-header"}, sections=SECTIONS, text="expression"),
    "set-body": spec(
        {"template": False, "xsi-nil": False, "parse-date": False},
        parents=STATEMENT_PARENTS | {"send-request", "send-one-way-request", "return-response"},
        sections={"inbound", "outbound", "backend", "on-error"},
        text="expression",
    ),
    "set-status": spec(
        {"code": True, "reason": True}, required={"code"}, parents=STATEMENT_PARENTS | {"return-response"}
    ),
    "set-url": spec(parents={"send-request", "send-one-way-request"}, text="expression"),
    "set-method": spec(parents=STATEMENT_PARENTS | {"send-request", "send-one-way-request"}, text="literal"),
    "send-request": spec(
        {"mode": True, "response-variable-name": True, "timeout": True, "ignore-error": False},
        required={"response-variable-name"},
        children=REQUEST_CHILDREN,
    ),
    "send-one-way-request": spec({"mode": True, "timeout": True}, children=REQUEST_CHILDREN),
    "choose": spec(children=("when", "otherwise")),
    "when": spec({"condition": True}, required={"condition"}, parents={"choose"}),
    "otherwise": spec(parents={"choose"}),
    "emit-metric": spec({"name": False, "namespace": False, "value": True}, required={"name"}, children=("dimension",)),
    "dimension": spec(
        {"name": True, "value": True}, required={"name"}, parents={"emit-metric", "llm-emit-token-metric"}
    ),
    # llm-emit-token-metric-policy: namespace without expressions; Usage > Policy sections: inbound.
    "llm-emit-token-metric": spec({"namespace": False}, sections={"inbound"}, children=("dimension",)),
    "return-response": spec({"response-variable-name": False}, children=("set-status", "set-header", "set-body")),
    "rate-limit-by-key": spec(
        {
            "calls": True,
            "renewal-period": True,
            "counter-key": True,
            "increment-condition": True,
            "increment-count": True,
            "retry-after-header-name": False,
            "retry-after-variable-name": False,
            "remaining-calls-header-name": False,
            "remaining-calls-variable-name": False,
            "total-calls-header-name": False,
        },
        required={"calls", "renewal-period", "counter-key"},
        sections={"inbound"},
    ),
    "quota-by-key": spec(
        {
            "calls": False,
            "bandwidth": False,
            "renewal-period": False,
            "counter-key": True,
            "increment-condition": True,
            "increment-count": True,
            "first-period-start": False,
        },
        required={"counter-key", "renewal-period"},
        sections={"inbound"},
    ),
    "forward-request": spec(
        {
            "timeout": True,
            "follow-redirects": True,
            "buffer-request-body": False,
            "buffer-response": False,
            "fail-on-error-status-code": False,
        },
        sections={"backend"},
    ),
    "include-fragment": spec({"fragment-id": False}, required={"fragment-id"}),
}

ENUMS = {
    "exists-action": {"override", "skip", "append", "delete"},
    "mode": {"new", "copy"},
    "ignore-error": {"true", "false"},
}


def section_of(node: apimsim.Node) -> str | None:
    while node is not None and node.tag not in SECTIONS:
        node = node.parent
    return node.tag if node is not None else None


def reference_problems(root: apimsim.Node) -> list[str]:
    """Every way the document departs from the policy reference (an empty list: none)."""
    problems = []
    for node in root.iter():
        where = f"line {node.line} <{node.tag}>"
        ref = REFERENCE.get(node.tag)
        if ref is None:
            problems.append(f"{where}: not an element of the policy reference (or of this allow-list)")
            continue
        parent = node.parent.tag if node.parent is not None else None
        if (parent or "") not in ref.parents and not (parent is None and not ref.parents):
            problems.append(f"{where}: not allowed inside <{parent}>")
        section = section_of(node)
        if ref.sections and section not in ref.sections:
            problems.append(f"{where}: not allowed in the {section} section")
        for name, value in node.attrs.items():
            if name not in ref.attrs:
                problems.append(f"{where}: no attribute {name!r}")
            elif apimsim.expression_source(value) and not ref.attrs[name]:
                problems.append(f"{where}: {name!r} does not allow policy expressions")
            elif name in ENUMS and not apimsim.expression_source(value) and value not in ENUMS[name]:
                problems.append(f"{where}: {name}={value!r} is not one of {sorted(ENUMS[name])}")
            elif value.lstrip().startswith("@") and not apimsim.expression_source(value):
                problems.append(f"{where}: {name!r} looks like an expression but is not @(...) or @{{...}}")
        for name in ref.required - set(node.attrs):
            problems.append(f"{where}: missing required attribute {name!r}")
        text = node.text.strip()
        if text and ref.text is None:
            problems.append(f"{where}: has text")
        elif text and ref.text == "literal" and apimsim.expression_source(text):
            problems.append(f"{where}: text does not allow policy expressions")
        elif text.startswith("@") and not (text.endswith(")") or text.endswith("}")):
            problems.append(f"{where}: the expression must be the whole text")
        if ref.children is not None:
            order = [ref.children.index(c.tag) if c.tag in ref.children else -1 for c in node.children]
            if -1 in order:
                problems.append(f"{where}: children {[c.tag for c in node.children]} outside {ref.children}")
            elif order != sorted(order):
                problems.append(f"{where}: children out of the reference's order {ref.children}")
        if node.tag == "choose" and [c.tag for c in node.children].count("otherwise") > 1:
            problems.append(f"{where}: more than one <otherwise>")
    return problems


POLICY_NAMES = [p.name for p in apimsim.policy_files()]
SYNC = apimsim.REPO / "scripts" / "sync_policies.py"
sys.path.append(str(SYNC.parent))


def test_the_three_policies_exist():
    """The files issue 5 asks for."""
    assert {"emit-token-metrics.xml", "emit-token-metrics-oneway.xml", "token-limit.xml"} <= set(POLICY_NAMES)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_follows_the_reference(name, policies):
    """Well-formed (expat) and made only of documented elements and attributes, in their places."""
    assert reference_problems(policies[name].root) == []


BAD_DOCUMENTS = {
    "unknown element": "<policies><inbound><azure-openai-foo /></inbound></policies>",
    "unknown attribute": '<policies><inbound><set-variable name="a" value="b" colour="red" /></inbound></policies>',
    "expression in namespace": (
        '<policies><outbound><emit-metric name="n" namespace="@(&quot;x&quot;)">'
        '<dimension name="API ID" /></emit-metric></outbound></policies>'
    ),
    "rate limit in outbound": (
        '<policies><outbound><rate-limit-by-key calls="1" renewal-period="1" counter-key="k" /></outbound></policies>'
    ),
    "send-request children order": (
        '<policies><inbound><send-request response-variable-name="r">'
        "<set-method>POST</set-method><set-url>https://x</set-url></send-request></inbound></policies>"
    ),
    "bad exists-action": '<policies><inbound><set-header name="a" exists-action="replace" /></inbound></policies>',
    "missing required attribute": '<policies><inbound><set-variable name="a" /></inbound></policies>',
    "dimension outside emit-metric": '<policies><inbound><dimension name="API ID" /></inbound></policies>',
    "expression in set-method": (
        '<policies><inbound><send-request response-variable-name="r"><set-url>https://x</set-url>'
        "<set-method>@(&quot;POST&quot;)</set-method></send-request></inbound></policies>"
    ),
}


@pytest.mark.parametrize("what", sorted(BAD_DOCUMENTS))
def test_allow_list_rejects_what_apim_rejects(what):
    """The checker itself: each of these documents is wrong in one way and must be flagged."""
    assert reference_problems(apimsim.parse_xml(BAD_DOCUMENTS[what]))


def test_malformed_xml_is_rejected():
    """Unescaped < inside an attribute (the usual APIM-editor shorthand) is not XML."""
    with pytest.raises(Exception, match="not well-formed"):
        apimsim.parse_xml('<policies><inbound><set-variable name="a" value="@(x.As<string>())" /></inbound></policies>')


def test_docs_snippets_follow_the_reference():
    """The XML in docs/deployment.md is as valid as the policy files."""
    snippets = apimsim.doc_snippets(apimsim.DEPLOYMENT_DOC)
    assert snippets, "docs/deployment.md has no ```xml snippet"
    for line, snippet in snippets:
        assert reference_problems(apimsim.snippet_root(snippet)) == [], f"snippet at docs/deployment.md:{line}"


NAMED_VALUE = re.compile(r"\{\{([A-Za-z0-9._-]+)\}\}")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_endpoint_key_and_namespace_come_from_named_values(name, policies):
    """The function URL and key and the metric namespace are named values, never literals."""
    raw = policies[name].raw
    used = set(NAMED_VALUE.findall(raw))
    assert {"tokencounter-url", "tokencounter-key", "tokencounter-namespace"} <= used
    root = apimsim.parse_xml(raw)  # before substitution: what an admin pastes
    for node in root.iter():
        if node.tag == "set-url":
            assert node.text.strip() == "{{tokencounter-url}}"
        if node.tag == "set-header" and node.attrs["name"].lower() == "x-functions-key":
            assert [v.text.strip() for v in node.children] == ["{{tokencounter-key}}"]
        if node.tag == "emit-metric":
            assert node.attrs["namespace"] == "{{tokencounter-namespace}}"
    without_comments = re.sub(r"<!--.*?-->", "", raw, flags=re.S)
    assert "azurewebsites.net" not in without_comments and "https://" not in without_comments


def test_every_named_value_is_created_by_the_deployment_guide():
    """Each {{name}} the policies or the guide's snippets use has an `az apim nv create` in the guide."""
    doc = apimsim.DEPLOYMENT_DOC.read_text(encoding="utf-8")
    used = set()
    for path in apimsim.policy_files():
        used |= set(NAMED_VALUE.findall(path.read_text(encoding="utf-8")))
    for _, snippet in apimsim.doc_snippets(apimsim.DEPLOYMENT_DOC):
        used |= set(NAMED_VALUE.findall(snippet))
    created = set(re.findall(r"--named-value-id ([A-Za-z0-9._-]+)", doc))
    assert used <= created, f"not created in docs/deployment.md: {sorted(used - created)}"
    assert "--secret true" in doc.split("--named-value-id tokencounter-key", 1)[1].split("\n\n")[0]


def declared_dimensions() -> list[tuple[str, str | None]]:
    return [
        (d.attrs["name"], d.attrs.get("value"))
        for d in apimsim.parse_xml(apimsim.DIMENSIONS_FILE.read_text(encoding="utf-8")).children
    ]


def test_the_dimension_set_is_declared_once_and_every_policy_file_carries_it():
    """scripts/sync_policies.py --check: every marked region equals policies/dimensions.xml."""
    result = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sync_catches_a_policy_file_that_drifted(tmp_path, monkeypatch):
    """The check itself: a region edited by hand is reported, and rewriting restores it."""
    import sync_policies

    drifted = tmp_path / "emit-token-metrics.xml"
    text = (apimsim.POLICY_DIR / "emit-token-metrics.xml").read_text(encoding="utf-8")
    drifted.write_text(text.replace('<dimension name="API ID" />', '<dimension name="Operation ID" />', 1))
    monkeypatch.setattr(sync_policies, "policy_files", lambda: [drifted])
    assert sync_policies.main(["--check"]) == 1
    assert sync_policies.main([]) == 0
    assert drifted.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_metric_has_at_most_five_dimensions(name, policies):
    """Azure Monitor: 10 dimension keys per metric, 5 of them APIM's own; each metric gets the declared set."""
    declared = declared_dimensions()
    assert len(declared) <= 4
    emitters = [n for n in policies[name].root.iter() if n.tag in ("emit-metric", "llm-emit-token-metric")]
    if name != "emit-token-metrics-oneway.xml":
        assert {m.attrs.get("name") for m in emitters} >= {
            "Total Tokens",
            "Prompt Tokens",
            "Completion Tokens",
            "tokencounter-failed",
            None,
        }
    for metric in emitters:
        dimensions = [(d.attrs["name"], d.attrs.get("value")) for d in metric.children]
        assert len(dimensions) <= 5, f"{metric.attrs.get('name', metric.tag)}: {len(dimensions)} dimensions"
        extra = ["reason"] if metric.attrs.get("name") == "tokencounter-failed" else []
        assert dimensions[: len(declared)] == declared and [d for d, _ in dimensions[len(declared) :]] == extra
        for dim, value in dimensions:
            # A dimension without a value is one APIM fills in; it must be one of its defaults.
            assert value is not None or dim in apimsim.DEFAULT_DIMENSIONS


def test_the_model_dimension_is_bounded_by_the_allow_list(policies):
    """The model dimension is the tokencounter-model variable, which only returns allow-listed names or "other"."""
    assert ("model", '@(context.Variables.GetValueOrDefault<string>("tokencounter-model", "other"))') in (
        declared_dimensions()
    )
    for name in POLICY_NAMES:
        raw = apimsim.parse_xml(policies[name].raw)  # before named values are substituted
        [model] = [n for n in raw.iter() if n.tag == "set-variable" and n.attrs["name"] == "tokencounter-model"]
        assert '"{{tokencounter-models}}".Split' in model.attrs["value"]
        assert 'return "other";' in model.attrs["value"]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_calls_to_the_function_cannot_fail_the_request(name, policies):
    """send-request ignores errors and has a short timeout; one-way calls have a timeout too."""
    calls = [n for n in policies[name].root.iter() if n.tag in ("send-request", "send-one-way-request")]
    assert calls
    for call in calls:
        assert call.attrs.get("mode") == "new"
        assert 1 <= int(call.attrs["timeout"]) <= 20
        if call.tag == "send-request":
            assert call.attrs["ignore-error"] == "true"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_bodies_are_always_read_with_preserve_content(name, policies):
    """A body read without preserveContent is gone: the backend or the client would get nothing."""
    expressions = apimsim.expressions_in(policies[name].root, name)
    reads = [m for e in expressions for m in re.finditer(r"Body\.As<\w+>\(([^)]*)\)", e.source)]
    assert reads
    assert all(m.group(1).replace(" ", "") == "preserveContent:true" for m in reads), [m.group(0) for m in reads]


@pytest.mark.parametrize("section", ["inbound", "backend", "outbound", "on-error"])
def test_token_limit_contains_the_metrics_policy(section, policies):
    """token-limit.xml is emit-token-metrics.xml plus the budget: the shared part must not drift."""
    emit = policies["emit-token-metrics.xml"].section(section).children
    limit = policies["token-limit.xml"].section(section).children

    def shape(node):
        return (node.tag, tuple(sorted(node.attrs.items())), node.text.strip(), tuple(shape(c) for c in node.children))

    assert [shape(n) for n in limit[: len(emit)]] == [shape(n) for n in emit]
    if section in ("inbound", "backend"):  # the one-way variant meters streams the same way
        oneway = policies["emit-token-metrics-oneway.xml"].section(section).children
        assert [shape(n) for n in oneway] == [shape(n) for n in emit]


# ---- the .NET types and members a policy expression may use ----

# "Type | Supported members" from the policy expressions reference (api-management-policy-expressions).
ALLOWED_TYPES_TABLE = """
Newtonsoft.Json.Formatting|All
Newtonsoft.Json.JsonConvert|SerializeObject, DeserializeObject
Newtonsoft.Json.Linq.Extensions|All
Newtonsoft.Json.Linq.JArray|All
Newtonsoft.Json.Linq.JConstructor|All
Newtonsoft.Json.Linq.JContainer|All
Newtonsoft.Json.Linq.JObject|All
Newtonsoft.Json.Linq.JProperty|All
Newtonsoft.Json.Linq.JRaw|All
Newtonsoft.Json.Linq.JToken|All
Newtonsoft.Json.Linq.JTokenType|All
Newtonsoft.Json.Linq.JValue|All
System.Array|All
System.BitConverter|All
System.Boolean|All
System.Byte|All
System.Char|All
System.Collections.Generic.Dictionary<TKey, TValue>|All
System.Collections.Generic.HashSet<T>|All
System.Collections.Generic.ICollection<T>|All
System.Collections.Generic.IDictionary<TKey, TValue>|All
System.Collections.Generic.IEnumerable<T>|All
System.Collections.Generic.IEnumerator<T>|All
System.Collections.Generic.IList<T>|All
System.Collections.Generic.IReadOnlyCollection<T>|All
System.Collections.Generic.IReadOnlyDictionary<TKey, TValue>|All
System.Collections.Generic.ISet<T>|All
System.Collections.Generic.KeyValuePair<TKey, TValue>|All
System.Collections.Generic.List<T>|All
System.Collections.Generic.Queue<T>|All
System.Collections.Generic.Stack<T>|All
System.Convert|All
System.DateTime|(Constructor), Add, AddDays, AddHours, AddMilliseconds, AddMinutes, AddMonths, AddSeconds
System.DateTime|AddTicks, AddYears, Date, Day, DayOfWeek, DayOfYear, DaysInMonth, Hour, IsDaylightSavingTime
System.DateTime|IsLeapYear, MaxValue, Millisecond, Minute, MinValue, Month, Now, Parse, Second, Subtract
System.DateTime|Ticks, TimeOfDay, Today, ToString, UtcNow, Year
System.DateTimeKind|Utc
System.DateTimeOffset|All
System.Decimal|All
System.Double|All
System.Exception|All
System.Guid|All
System.Int16|All
System.Int32|All
System.Int64|All
System.IO.StringReader|All
System.IO.StringWriter|All
System.Linq.Enumerable|All
System.Math|All
System.MidpointRounding|All
System.Net.IPAddress|All
System.Net.WebUtility|All
System.Nullable|All
System.Random|All
System.SByte|All
System.Single|All
System.String|All
System.StringComparer|All
System.StringComparison|All
System.StringSplitOptions|All
System.Text.Encoding|All
System.Text.RegularExpressions.Capture|Index, Length, Value
System.Text.RegularExpressions.CaptureCollection|Count, Item
System.Text.RegularExpressions.Group|Captures, Success
System.Text.RegularExpressions.GroupCollection|Count, Item
System.Text.RegularExpressions.Match|Empty, Groups, Result
System.Text.RegularExpressions.Regex|(Constructor), IsMatch, Match, Matches, Replace, Unescape, Split
System.Text.RegularExpressions.RegexOptions|All
System.Text.StringBuilder|All
System.TimeSpan|All
System.Tuple|All
System.UInt16|All
System.UInt32|All
System.UInt64|All
System.Uri|All
System.UriPartial|All
"""

# What C# itself emits for allowed code: object members on every value, the delegates behind lambdas
# (needed by the allowed System.Linq.Enumerable), the interfaces behind foreach, and the implicit empty
# `params JsonConverter[]` of JToken.ToString(Formatting).
IMPLICIT = {
    "System.Object": None,
    "System.Collections.IEnumerator": None,
    "System.IDisposable": None,
    **{f"System.Func`{n}": None for n in range(1, 6)},
    **{f"System.Action`{n}": None for n in range(1, 6)},
    "Newtonsoft.Json.JsonConverter": {"<type argument>"},
}


def allowed_types() -> dict[str, set[str] | None]:
    allowed: dict[str, set[str] | None] = dict(IMPLICIT)
    for row in ALLOWED_TYPES_TABLE.strip().splitlines():
        name, members = row.split("|")
        generic = re.match(r"(.*)<(.*)>$", name)
        if generic:
            name = f"{generic.group(1)}`{generic.group(2).count(',') + 1}"
        if name == "System.Nullable":
            allowed["System.Nullable`1"] = None
        if members == "All":
            allowed[name] = None
        else:  # a long member list may span several rows
            allowed[name] = (allowed.get(name) or set()) | {m.strip() for m in members.split(",")}
    return allowed


def member_name(member: str) -> str:
    if member == ".ctor":
        return "(Constructor)"
    return re.sub(r"^(get_|set_)", "", member)


def refusals(references: list[dict], ids: dict[str, str]) -> dict[str, list[str]]:
    """Expression source -> the types and members of its IL that the reference does not allow."""
    allowed = allowed_types()
    sources = {ident: source for source, ident in ids.items()}
    found: dict[str, list[str]] = {}
    for ref in references:
        ident = re.search(r"\bE\d+\b|(?<=<)E\d+(?=>)", ref["method"])
        source = sources[ident.group(0)] if ident else ref["method"]
        if ref["own"]:
            # The context stand-ins (APIM's own context API) and the compiler's closures for our lambdas.
            if not ref["type"].startswith(("Apim.", "PolicyExpressions")):
                found.setdefault(source, []).append(ref["type"])
            continue
        outer = ref["type"].split("+")[0]  # nested types (List`1+Enumerator) go with their type
        members = allowed.get(outer, "missing")
        if members == "missing":
            found.setdefault(source, []).append(f"{ref['type']}::{ref['member']}")
        elif members is None:
            continue
        elif ref["member"].startswith("<"):
            if outer in IMPLICIT and ref["member"] not in members:
                found.setdefault(source, []).append(f"{ref['type']} as {ref['member']}")
        elif member_name(ref["member"]) not in members:
            found.setdefault(source, []).append(f"{ref['type']}::{ref['member']}")
    return found


def test_expressions_use_only_types_apim_allows(mono):
    """Every type and member in the compiled IL of every expression is on the reference's list."""
    found = refusals(mono.audit(), mono.ids)
    found.pop(apimsim.CANARY, None)
    assert found == {}


def test_type_audit_catches_forbidden_code(mono):
    """The audit reads the IL for real: the canary expression's forbidden type and member are caught."""
    found = refusals(mono.audit(), mono.ids)
    assert "System.IO.File::Exists" in found[apimsim.CANARY]
    assert "System.DateTime::ToBinary" in found[apimsim.CANARY]
