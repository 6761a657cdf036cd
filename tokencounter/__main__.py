"""The counter on the command line: `python -m tokencounter count FILE` and `python -m tokencounter explain FILE`.

FILE (`-` for stdin) is an APIM envelope ({"RequestBody": ..., "ResponseBody": ...}) or a bare request. The same
service answers as over HTTP: exit 0 with the answer, 2 with the same error message for bad input, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import service
from .settings import get_settings


def envelope(data: bytes) -> bytes:
    """The file as the envelope the service takes: a bare request (a JSON object with no RequestBody) is wrapped."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return data  # the service names what is wrong with it
    keys = {k.lower().replace("_", "") for k in parsed} if isinstance(parsed, dict) else set()
    if isinstance(parsed, dict) and "requestbody" not in keys:
        return json.dumps({"RequestBody": parsed}).encode()
    return data


def table(payload: dict) -> str:
    """The explain answer as a readable table."""
    usage = payload["usage"]
    lines = [
        f"model       {payload['model'] or '(none)'}",
        f"tokenizer   {payload['tokenizer']}"
        + (" (assumed: no family in the model name)" if payload["tokenizer_assumed"] else ""),
        f"template    {payload['template']}",
        "",
        f"{'#':>4}  {'role':<12}{'tokens':>8}",
    ]
    lines += [f"{m['index']:>4}  {m['role']:<12}{m['tokens']:>8}" for m in payload["messages"]]
    lines.append(f"{'':>4}  {'overhead':<12}{payload['overhead_tokens']:>8}")
    lines.append(f"{'':>4}  {'prompt':<12}{usage['prompt_tokens']:>8}")
    for choice in payload["choices"]:
        stop = " (stop token counted)" if choice["stop_token_counted"] else ""
        lines.append(f"{'':>4}  {'choice ' + str(choice['index']):<12}{choice['completion_tokens']:>8}{stop}")
    lines.append(f"{'':>4}  {'completion':<12}{usage['completion_tokens']:>8}")
    lines.append(f"{'':>4}  {'total':<12}{usage['total_tokens']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokencounter", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("count", "explain"))
    parser.add_argument("file", help="an APIM envelope or a bare chat/completions request; - for stdin")
    parser.add_argument("--json", action="store_true", help="explain: the JSON answer instead of the table")
    args = parser.parse_args(argv)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    settings = get_settings()
    body = envelope(data)
    answer = service.handle if args.command == "count" else service.explain
    reply = answer("POST", body, settings)
    if reply.status != 200:
        error = reply.payload["error"]
        print(f"error: {error['code']}: {error['message']}", file=sys.stderr)
        return 2 if reply.status < 500 else 1
    if args.command == "count" or args.json:
        print(json.dumps(reply.payload, ensure_ascii=False))
    else:
        print(table(reply.payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
