"""list semantics shared by resources: GCE filter expressions, orderBy, maxResults/pageToken."""

from __future__ import annotations

import base64
import fnmatch
import re

from localgce.errors import invalid

MAX_RESULTS_LIMIT = 500
# `name = "x"`, `status != RUNNING`, `labels.env: prod*`, and the regex form `name eq 'x-.*'`.
_TERM = re.compile(
    r"""\(?\s*(?P<field>[A-Za-z][\w.]*)\s*
        (?P<op>=|!=|:|\beq\b|\bne\b)\s*
        (?P<value>"[^"]*"|'[^']*'|[^\s)]+)\s*\)?""",
    re.VERBOSE,
)


def _field(resource: dict, dotted: str):
    value = resource
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def parse_filter(expression: str) -> list[tuple[str, str, str]]:
    """Terms joined by AND (or juxtaposed, as gcloud writes them). OR is not supported → 400."""
    expression = expression.strip()
    if not expression:
        return []
    if re.search(r"\bOR\b", expression):
        raise invalid(f"Invalid list filter expression {expression!r}: OR is not supported")
    terms, pos = [], 0
    rest = re.sub(r"\bAND\b", " ", expression)
    while pos < len(rest):
        if rest[pos].isspace():
            pos += 1
            continue
        match = _TERM.match(rest, pos)
        if not match:
            raise invalid(f"Invalid list filter expression {expression!r}")
        value = match["value"]
        if value[:1] in "\"'" and value[-1:] == value[:1]:
            value = value[1:-1]
        terms.append((match["field"], match["op"], value))
        pos = match.end()
    return terms


def matches(resource: dict, terms: list[tuple[str, str, str]]) -> bool:
    for field_name, op, value in terms:
        actual = _text(_field(resource, field_name))
        if op == "=":
            ok = fnmatch.fnmatchcase(actual, value)
        elif op == "!=":
            ok = not fnmatch.fnmatchcase(actual, value)
        elif op == ":":
            ok = fnmatch.fnmatchcase(actual, value) or value in actual
        elif op == "eq":
            ok = re.fullmatch(value, actual) is not None
        else:  # ne
            ok = re.fullmatch(value, actual) is None
        if not ok:
            return False
    return True


def list_response(kind: str, items: list[dict], query: dict, self_link: str) -> dict:
    terms = parse_filter(query.get("filter", ""))
    items = [i for i in items if matches(i, terms)]
    order_by = query.get("orderBy", "").strip()
    if order_by:
        field_name, _, direction = order_by.partition(" ")
        items.sort(key=lambda i: _text(_field(i, field_name)), reverse=direction.strip() == "desc")
    try:
        max_results = int(query.get("maxResults") or MAX_RESULTS_LIMIT)
    except ValueError as exc:
        raise invalid("maxResults must be an integer 0-500") from exc
    max_results = max(1, min(max_results, MAX_RESULTS_LIMIT))
    offset = _decode_token(query.get("pageToken", ""))
    page = items[offset : offset + max_results]
    body = {"kind": kind, "id": self_link, "items": page, "selfLink": self_link}
    if offset + max_results < len(items):
        body["nextPageToken"] = base64.urlsafe_b64encode(
            str(offset + max_results).encode()
        ).decode()
    return body


def _decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except ValueError as exc:
        raise invalid("Invalid pageToken") from exc
