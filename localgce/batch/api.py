"""The Batch v1 endpoint: Google's route table, validation, and the handlers localgce models.

The routes come from Google's Batch v1 discovery document (`batch.v1.json`, shipped by
google-api-python-client next to Compute's). Batch paths are `v1/{+name}`-style: a path
parameter spans slashes and its declared `pattern` says which resource it names, so each method's
path becomes a regex built from those patterns. A request is matched to a method id
(`batch.projects.locations.jobs.create`), its enum values sent as numbers (the official client's
`enum-encoding=int`) are turned into their names, and it is checked against the method's
declaration by localgce.discovery's validator with Batch's document. A method of the document
without a handler answers 501, a path of no method 404, a known path with another verb 405.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from localgce import discovery
from localgce.batch.jobs import Jobs
from localgce.batch.runner import Runner
from localgce.batch.tasks import Tasks
from localgce.errors import not_found, not_implemented
from localgce.httpserver import Request, Response
from localgce.images import Images
from localgce.lifecycle import Lifecycle
from localgce.state import Store

DOCUMENT = "batch.v1.json"
PATH_PREFIX = "/v1/"


def document_path() -> Path:
    return discovery.document_path().with_name(DOCUMENT)


@functools.cache
def document() -> dict:
    return json.loads(document_path().read_text())


def _compile(spec: dict) -> re.Pattern:
    """`v1/{+name}:cancel` with name's pattern `^projects/[^/]+/.../jobs/[^/]+$` → a regex."""
    declared = spec.get("parameters", {})

    def group(match: re.Match) -> str:
        name = match[2]
        pattern = (declared.get(name) or {}).get("pattern")
        body = pattern.removeprefix("^").removesuffix("$") if pattern else "[^/]+"
        return f"(?P<{name}>{body})"

    parts = re.split(r"(\{\+?\w+\})", "/" + document()["servicePath"] + spec["path"])
    regex = "".join(
        group(re.fullmatch(r"\{(\+?)(\w+)\}", part)) if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


@functools.cache
def methods() -> dict[str, discovery.Method]:
    """Every method of the Batch document, by id."""
    found: dict[str, discovery.Method] = {}

    def walk(resources: dict) -> None:
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                found[spec["id"]] = discovery.Method(
                    spec["id"], spec["httpMethod"], spec["path"], spec, _compile(spec), 0
                )
            walk(resource.get("resources", {}))

    walk(document()["resources"])
    return found


def resolve(verb: str, path: str) -> tuple[discovery.Method, dict[str, str]] | None:
    return discovery.match_method(methods().values(), verb, path)


def enum_names(spec: dict, value):
    """`value` with every enum field given as a number (proto JSON allows both) as its name.
    Unknown numbers and other values are left for the validator to reject."""
    if "$ref" in spec:
        spec = document()["schemas"][spec["$ref"]]
    kind = spec.get("type")
    if kind == "object" and isinstance(value, dict):
        properties = spec.get("properties")
        extra = spec.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = (properties or {}).get(key) or extra
            out[key] = enum_names(sub, item) if sub else item
        return out
    if kind == "array" and isinstance(value, list):
        return [enum_names(spec.get("items", {}), item) for item in value]
    names = spec.get("enum")
    if names and isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else value
    return value


class BatchApi:
    """Dispatch for `/v1/...`: discovery method → enum names → validate → handler."""

    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        insert: Callable[..., dict],
        images: Images,
        log_dir: Path,
    ):
        """`insert`: the instances.insert handler (task VMs are made as any instance is);
        `log_dir`: where each task execution's output is kept (emulator-only)."""
        self.runner = Runner(store, lifecycle, insert, images, log_dir)
        self.jobs = Jobs(store, self.runner)
        self.tasks = Tasks(store, self.jobs)
        self.handlers: dict[str, Callable[..., Response | dict]] = {
            "batch.projects.locations.jobs.create": self.jobs.create,
            "batch.projects.locations.jobs.get": self.jobs.get,
            "batch.projects.locations.jobs.list": self.jobs.list,
            "batch.projects.locations.jobs.delete": self.jobs.delete,
            "batch.projects.locations.jobs.cancel": self.jobs.cancel,
            "batch.projects.locations.operations.get": self.jobs.get_operation,
            "batch.projects.locations.jobs.taskGroups.tasks.get": self.tasks.get,
            "batch.projects.locations.jobs.taskGroups.tasks.list": self.tasks.list,
        }
        unknown = sorted(set(self.handlers) - set(methods()))
        if unknown:
            raise RuntimeError(f"handlers for methods the Batch document lacks: {unknown}")

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PATH_PREFIX)

    def dispatch(self, req: Request) -> Response:
        resolved = resolve(req.method, req.path)
        if resolved is None:
            raise not_found(req.path.lstrip("/"))
        method, raw_params = resolved
        params = {k: urllib.parse.unquote(v) for k, v in raw_params.items()}
        body = req.json() if req.body.strip() else None
        schema = method.request_schema
        if schema and isinstance(body, dict):
            body = enum_names({"$ref": schema}, body)
        discovery.validate(method, params, req.query, body, doc=document())
        handler = self.handlers.get(method.id)
        if handler is None:
            raise not_implemented(method.id)
        req.params = params
        result = handler(req, body or {}, **params)
        return result if isinstance(result, Response) else Response(body=result)

    def delete_leftover_vms(self) -> None:
        """Daemon start, before instances are booted again: see Runner.delete_leftover_vms."""
        self.runner.delete_leftover_vms()

    def close(self) -> None:
        """Daemon stop: no task starts another execution."""
        self.runner.close()
