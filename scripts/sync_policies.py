"""Copy the dimension set of policies/dimensions.xml into every policy file (`make policies`).

The set goes into every emit-metric and llm-emit-token-metric: the one-line <dimension> elements right after
the opening tag are replaced (a multi-line dimension after them, such as tokencounter-failed's "reason", stays).
Between <!-- tokencounter:dimensions-json --> and <!-- /tokencounter:dimensions-json --> goes a set-variable that
builds the same set as JSON, for the metrics the function emits itself. (APIM may drop comments inside policy
elements, so markers only stand between elements.)
`--check` changes nothing and exits 1 when a file is out of date (the tests run it).
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

POLICIES = Path(__file__).resolve().parents[1] / "policies"
DECLARATION = POLICIES / "dimensions.xml"
MAX_DIMENSIONS = 4  # emit-metric allows 5 custom dimensions; tokencounter-failed adds "reason"

# What APIM fills in for a default dimension without a value, as a policy expression.
DEFAULTS = {
    "API ID": 'context.Api != null ? context.Api.Id : ""',
    "Operation ID": 'context.Operation != null ? context.Operation.Id : ""',
    "Product ID": 'context.Product != null ? context.Product.Id : ""',
    "Subscription ID": 'context.Subscription != null ? context.Subscription.Id : ""',
    "User ID": 'context.User != null ? context.User.Id : ""',
    "Location": 'context.Deployment.Region ?? ""',
    "Gateway ID": 'context.Deployment.GatewayId ?? ""',
}
DIMENSION = re.compile(r"""<dimension name="([^"<>&]+)"(?: value='([^']*)')? />""")
EMITTER = re.compile(
    r"^(?P<open>(?P<indent>[ \t]*)<(?:emit-metric|llm-emit-token-metric)\b[^\n]*[^/]>\n)"
    r"(?:[ \t]*<dimension\b[^\n]*/>\n)*",
    re.M,
)
JSON_REGION = re.compile(
    r"(?P<indent>[ \t]*)<!-- tokencounter:dimensions-json -->\n.*?<!-- /tokencounter:dimensions-json -->", re.S
)


def declared() -> list[tuple[str, str | None]]:
    """(name, raw value attribute or None) of each dimension in policies/dimensions.xml."""
    text = re.sub(r"<!--.*?-->", "", DECLARATION.read_text(encoding="utf-8"), flags=re.S)
    body = re.search(r"<dimensions>(.*)</dimensions>", text, re.S)
    if body is None:
        raise SystemExit(f"{DECLARATION}: no <dimensions> element")
    found = DIMENSION.findall(body.group(1))
    if DIMENSION.sub("", body.group(1)).strip():
        raise SystemExit(f"{DECLARATION}: only <dimension name=\"...\" [value='...'] /> elements are allowed")
    if not 1 <= len(found) <= MAX_DIMENSIONS:
        raise SystemExit(f"{DECLARATION}: declare 1 to {MAX_DIMENSIONS} dimensions, not {len(found)}")
    for name, value in found:
        if not value and name not in DEFAULTS:
            raise SystemExit(f"{DECLARATION}: {name!r} needs a value: it is not one of APIM's default dimensions")
    return [(name, value or None) for name, value in found]


def xml_block(dimensions: list[tuple[str, str | None]], indent: str) -> list[str]:
    return [
        f'{indent}<dimension name="{name}" />'
        if value is None
        else f"{indent}<dimension name=\"{name}\" value='{value}' />"
        for name, value in dimensions
    ]


def csharp_value(value: str | None, name: str) -> str:
    """The C# expression of a dimension's value, still XML-escaped (it goes back into an attribute)."""
    if value is None:
        return DEFAULTS[name]
    if value.startswith("@(") and value.endswith(")"):
        return value[2:-1]
    if value.startswith("@"):
        raise SystemExit(f"{DECLARATION}: write {name!r}'s value as @(...), not @{{...}}")
    literal = html.unescape(value).replace("\\", "\\\\").replace('"', '\\"')
    return html.escape(f'"{literal}"', quote=False)


def json_block(dimensions: list[tuple[str, str | None]], indent: str) -> list[str]:
    properties = ",\n".join(
        f'{indent}        new JProperty("{name}", {csharp_value(value, name)})' for name, value in dimensions
    )
    return [
        f'{indent}<set-variable name="tokencounter-dimensions" value=\'@{{',
        f"{indent}    var json = new JObject(",
        properties + ").ToString(Newtonsoft.Json.Formatting.None);",
        f"{indent}    /* A header value must be ASCII: escape anything else the JSON way. */",
        f"{indent}    var ascii = new StringBuilder();",
        f"{indent}    foreach (var c in json) {{",
        f'{indent}        if (c &gt; 126) {{ ascii.Append("\\\\u").Append(((int)c).ToString("x4")); }}'
        " else { ascii.Append(c); }",
        f"{indent}    }}",
        f"{indent}    return ascii.ToString();",
        f"{indent}}}' />",
    ]


def synced(text: str, dimensions: list[tuple[str, str | None]]) -> str:
    def emitter(match: re.Match) -> str:
        return match.group("open") + "".join(
            line + "\n" for line in xml_block(dimensions, match.group("indent") + "    ")
        )

    def json_region(match: re.Match) -> str:
        indent = match.group("indent")
        marker = "tokencounter:dimensions-json -->"
        return "\n".join([f"{indent}<!-- {marker}", *json_block(dimensions, indent), f"{indent}<!-- /{marker}"])

    return JSON_REGION.sub(json_region, EMITTER.sub(emitter, text))


def policy_files() -> list[Path]:
    return sorted(p for p in POLICIES.glob("*.xml") if p != DECLARATION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    dimensions = declared()
    stale = []
    for path in policy_files():
        text = path.read_text(encoding="utf-8")
        new = synced(text, dimensions)
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"out of date with policies/dimensions.xml: {', '.join(stale)} (run `make policies`)")
        return 1
    print(
        f"{'checked' if args.check else 'synced'} {len(policy_files())} policy files: {', '.join(stale) or 'no change'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
