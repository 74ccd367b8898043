"""Google's Compute v1 discovery document: the route table and request validation.

`google-api-python-client` ships the document Google publishes for the API
(`googleapiclient/discovery_cache/documents/compute.v1.json`). It is read lazily, once, without
importing googleapiclient. Every route of the compute endpoint comes from it: a request is
matched to a discovery method id (`compute.instances.insert`), its query parameters and body are
checked against the method's declaration, and only then does a handler run
(docs/localgce.md, "Validation against Google's schema"; the error shapes are in
docs/gce-behaviour.md, "Request validation errors").
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localgce.errors import ApiError, method_not_allowed

DOCUMENT = "compute.v1.json"
# Query parameters every Google API accepts (the document's top-level `parameters`) come from
# the document itself; these are what the official clients add besides them.
_CLIENT_QUERY_PARAMETERS = {"$alt"}
_INT_TYPES = {"int32": "TYPE_INT32", "uint32": "TYPE_UINT32"}


def document_path() -> Path:
    """Where the installed google-api-python-client keeps the Compute v1 document."""
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "google-api-python-client is not installed: localgce validates requests against "
            "its Compute discovery document; run `pip install -e .` (see pyproject.toml)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "discovery_cache" / "documents" / DOCUMENT


@functools.cache
def document() -> dict:
    """The parsed document (about 5 MB; loaded on first use, then kept)."""
    return json.loads(document_path().read_text())


@dataclass(frozen=True)
class Method:
    """One method of the document: `id` (`compute.instances.insert`), verb, path pattern."""

    id: str
    http_method: str
    path: str
    spec: dict
    regex: re.Pattern
    literal_segments: int

    @property
    def returns_operation(self) -> bool:
        return (self.spec.get("response") or {}).get("$ref") == "Operation"

    @property
    def request_schema(self) -> str | None:
        return (self.spec.get("request") or {}).get("$ref")


def _compile(path: str) -> tuple[re.Pattern, int]:
    """`projects/{project}/zones/{zone}` → a regex with named groups; `{+x}` spans slashes."""
    parts, literal = [], 0
    for segment in path.split("/"):
        match = re.fullmatch(r"\{(\+?)(\w+)\}", segment)
        if match:
            parts.append(f"(?P<{match[2]}>{'.+' if match[1] else '[^/]+'})")
        else:
            parts.append(re.escape(segment))
            literal += 1
    return re.compile("/".join(parts)), literal


@functools.cache
def methods() -> dict[str, Method]:
    """Every method of the document, by id."""
    doc = document()
    prefix = "/" + doc["servicePath"]
    found: dict[str, Method] = {}

    def walk(resources: dict) -> None:
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                regex, literal = _compile(prefix + spec["path"])
                found[spec["id"]] = Method(
                    spec["id"], spec["httpMethod"], spec["path"], spec, regex, literal
                )
            walk(resource.get("resources", {}))

    walk(doc["resources"])
    return found


@functools.cache
def _by_segments() -> dict[int, list[Method]]:
    table: dict[int, list[Method]] = {}
    for method in methods().values():
        count = len(("/" + document()["servicePath"] + method.path).split("/"))
        table.setdefault(count, []).append(method)
    for group in table.values():
        # The most literal segments first: `images/family/{family}` before `images/{image}/…`.
        group.sort(key=lambda m: -m.literal_segments)
    return table


def resolve(verb: str, path: str) -> tuple[Method, dict[str, str]] | None:
    """The method serving `verb path` and its path parameters; None if no method has this path.

    A path that some method has, but not with this verb, raises 405.
    """
    candidates = [m for m in methods().values() if "{+" in m.path] + _by_segments().get(
        len(path.split("/")), []
    )
    return match_method(candidates, verb, path)


def match_method(
    candidates: Iterable[Method], verb: str, path: str
) -> tuple[Method, dict[str, str]] | None:
    """The first of ``candidates`` for ``verb`` whose path matches, with its path parameters;
    None when none matches the path; 405 when some match it with another verb."""
    path_known = False
    for method in candidates:
        match = method.regex.fullmatch(path)
        if not match:
            continue
        path_known = True
        if method.http_method == verb:
            return method, match.groupdict()
    if path_known:
        raise method_not_allowed(verb, path)
    return None


# --- validation ---------------------------------------------------------------------------------
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def invalid_argument(message: str, field: str | None = None) -> ApiError:
    """A 400 as Google's API front end answers it: reason `invalid`, status INVALID_ARGUMENT and
    a google.rpc.BadRequest field violation."""
    err = ApiError(400, "invalid", message)
    err.status_name = "INVALID_ARGUMENT"
    violation = {"description": message}
    if field:
        violation = {"field": field, **violation}
    err.details = [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
    ]
    return err


def invalid_field(field: str, value, rule: str) -> ApiError:
    """Compute's own check of a field value: `Invalid value for field 'resource.x': 'v'. …`."""
    shown = json.dumps(value) if not isinstance(value, str) else value
    return ApiError(400, "invalid", f"Invalid value for field '{field}': '{shown}'. {rule}")


def validate(
    method: Method,
    path_params: dict[str, str],
    query: dict[str, str],
    body,
    doc: dict | None = None,
) -> None:
    """Raise the 400 GCE answers if the request does not fit the method's declaration.
    `doc`: the discovery document `method` comes from (default: Compute's; Batch passes its own)."""
    doc = document() if doc is None else doc
    declared = method.spec.get("parameters", {})
    common = doc.get("parameters", {})
    for name, value in path_params.items():
        pattern = (declared.get(name) or {}).get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise invalid_field(name, value, f"Must be a match of regex '{pattern}'")
    for name, value in query.items():
        spec = declared.get(name) or common.get(name)
        if spec is None or spec.get("location") == "path":
            if name in _CLIENT_QUERY_PARAMETERS:
                continue
            raise invalid_argument(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query '
                f"parameter. Field '{name}' could not be found in request message."
            )
        _check_query_value(name, spec, value)
    schema = method.request_schema
    if schema is None:
        if isinstance(body, dict) and body:
            name = next(iter(body))
            raise invalid_argument(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
            )
        return
    if body is None:
        return  # no body: every field left unset (the handler says what it requires)
    schemas = doc["schemas"]
    _check_object(_snake(schema), "resource", schemas[schema], body, schemas)


def _check_query_value(name: str, spec: dict, value: str) -> None:
    kind = spec.get("type")
    if kind == "integer":
        try:
            number = int(value)
        except ValueError:
            proto_type = _INT_TYPES.get(spec.get("format"), "TYPE_INT32")
            raise invalid_argument(
                f"Invalid value at '{_snake(name)}' ({proto_type}), \"{value}\"", _snake(name)
            ) from None
        low, high = spec.get("minimum"), spec.get("maximum")
        if (low is not None and number < int(low)) or (high is not None and number > int(high)):
            raise invalid_field(name, value, f"Must be between {low} and {high}.")
    elif kind == "boolean" and value not in ("true", "false", "True", "False", "1", "0"):
        raise invalid_argument(f"Invalid value at '{_snake(name)}' (TYPE_BOOL), \"{value}\"")
    elif "enum" in spec and value not in spec["enum"]:
        raise invalid_field(name, value, f"Must be one of [{', '.join(spec['enum'])}].")


def _check_object(at: str, field: str, schema: dict, value: dict, schemas: dict) -> None:
    """`at`: the proto-style location the front end names (`instance.scheduling`); `field`:
    Compute's own name for it (`resource.scheduling`)."""
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if properties is not None and key in properties:
            _check_value(f"{at}.{_snake(key)}", f"{field}.{key}", properties[key], item, schemas)
        elif extra is not None:
            _check_value(f"{at}[{key!r}].value", f"{field}.{key}", extra, item, schemas)
        elif properties is not None:
            raise invalid_argument(
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{at}': "
                "Cannot find field.",
                at,
            )


def _type_error(at: str, proto_type: str, item) -> ApiError:
    return invalid_argument(
        f"Invalid value at '{at}' ({proto_type}), {json.dumps(item)}",
        at,
    )


def _check_value(at: str, field: str, spec: dict, item, schemas: dict) -> None:
    if "$ref" in spec:
        spec = schemas[spec["$ref"]]
    if item is None:
        return  # JSON null: the field is left unset
    kind, fmt = spec.get("type"), spec.get("format")
    if kind == "object":
        if not isinstance(item, dict):
            raise _type_error(at, "TYPE_MESSAGE", item)
        _check_object(at, field, spec, item, schemas)
    elif kind == "array":
        if not isinstance(item, list):
            raise _type_error(at, "TYPE_REPEATED", item)
        for index, element in enumerate(item):
            _check_value(
                f"{at}[{index}]", f"{field}[{index}]", spec.get("items", {}), element, schemas
            )
    elif kind == "string":
        if fmt in ("int64", "uint64"):
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise _type_error(at, f"TYPE_{fmt.upper()}", item)
            if isinstance(item, str) and not re.fullmatch(r"-?\d+", item):
                raise _type_error(at, f"TYPE_{fmt.upper()}", item)
        elif not isinstance(item, str):
            raise _type_error(at, "TYPE_STRING", item)
        elif "enum" in spec and item not in spec["enum"]:
            raise invalid_field(field, item, f"Must be one of [{', '.join(spec['enum'])}].")
    elif kind == "integer":
        ok = not isinstance(item, bool) and (
            isinstance(item, int)
            or (isinstance(item, float) and item.is_integer())
            or (isinstance(item, str) and re.fullmatch(r"-?\d+", item) is not None)
        )
        if not ok:
            raise _type_error(at, _INT_TYPES.get(fmt, "TYPE_INT32"), item)
    elif kind == "number":
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            raise _type_error(at, "TYPE_DOUBLE", item)
    elif kind == "boolean" and not isinstance(item, bool):
        raise _type_error(at, "TYPE_BOOL", item)
