"""The API's OpenAPI document and its request validation, made from :mod:`squish.api_schema`.

Used by the server (:mod:`squish.daemon.api`) only: the client reads the same
``TypedDict`` shapes without loading pydantic. Each route of the API is an
:class:`Operation` (method, path, the shapes it takes and answers, its query
parameters); the server builds its Starlette routes from that list and
:func:`document` builds the OpenAPI 3.1 document from the very same list, so
the document cannot drift from what is served. ``GET /v1/openapi.json``
serves it; the tests fuzz the real daemon from it.

Request bodies are validated strictly (no type coercion, unknown fields
refused) against the same shapes; a bad one is :class:`BadRequest` with one
line naming the field.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import is_typeddict

from squish import api_schema as schema
from squish.errors import SquishError

__all__ = ["BadRequest", "Operation", "Param", "document", "validate"]

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]

JSON = "application/json"
NDJSON = "application/x-ndjson"
TEXT = "text/plain"
OCTETS = "application/octet-stream"
TAR = "application/x-tar"

_REQUESTS = (schema.CreateRequest, schema.StartRequest, schema.PullRequest, schema.SyncRequest)


class BadRequest(SquishError):
    """The request itself is malformed (bad JSON, a missing or wrong field)."""


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    kind: Literal["boolean", "integer", "number", "string"]
    help: str


@dataclass(frozen=True)
class Operation:
    """One route: what it takes, what it answers, and the function serving it.

    ``answer`` is a shape of :mod:`squish.api_schema` (or ``list[...]`` of
    one); for a stream (``media`` NDJSON) it is the shape of one line.
    ``errors`` are the statuses it may answer with an ``Error`` body.
    """

    method: str
    path: str
    summary: str
    endpoint: Endpoint
    answer: Any = None
    body: Any = None
    body_required: bool = True
    media: str = JSON
    body_media: str = JSON
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = (400,)


def _configure() -> None:
    # pydantic reads a TypedDict's config from this attribute. Set here, not
    # in api_schema, so the client never imports pydantic: requests are
    # strict (no "5" for 5, no unknown fields), answers refuse fields the
    # shapes do not name (so the tests catch drift) and say so in the schema.
    for shape in vars(schema).values():
        if isinstance(shape, type) and is_typeddict(shape):
            strict = shape in _REQUESTS
            shape.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
                extra="forbid", strict=strict
            )


_configure()


@functools.cache
def adapter(shape: Any) -> TypeAdapter[Any]:
    """The validator of ``shape`` (a TypedDict of api_schema, or a list of one)."""
    return TypeAdapter(shape)


def validate(shape: type[T], data: object, *, what: str = "the request body") -> T:
    """``data`` checked against ``shape``; a mismatch is one ``BadRequest`` line."""
    try:
        result: T = adapter(typing.cast(Any, shape)).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        where = f"{what}: {field}" if field else what
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(typing.get_type_hints(shape))) if _is_shape(shape) else ""
            message = f"unknown field (allowed: {allowed})" if allowed else "unknown field"
        raise BadRequest(f"{where}: {message}") from None
    return result


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, type) and is_typeddict(shape)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def document(operations: list[Operation], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    shapes: dict[str, Any] = {"Error": schema.Error}
    for operation in operations:
        for shape in (operation.answer, operation.body):
            if shape is not None:
                inner = typing.get_args(shape)[0] if typing.get_origin(shape) is list else shape
                if _is_shape(inner):
                    shapes[inner.__name__] = inner
    mode: Literal["validation"] = "validation"
    inputs = [(name, mode, adapter(shape)) for name, shape in sorted(shapes.items())]
    _, defs = TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
    components = dict(defs.get("$defs", {}))

    def schema_of(shape: Any) -> dict[str, Any]:
        if typing.get_origin(shape) is list:
            return {"type": "array", "items": schema_of(typing.get_args(shape)[0])}
        if _is_shape(shape):
            return _ref(shape.__name__)
        return {"type": "object"}

    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        item = paths.setdefault(operation.path, {})
        parameters: list[dict[str, Any]] = [
            {
                "name": part[1:-1],
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": schema.NAME_PATTERN},
            }
            for part in operation.path.split("/")
            if part.startswith("{")
        ]
        parameters += [
            {
                "name": param.name,
                "in": "query",
                "required": False,
                "description": param.help,
                "schema": {"type": param.kind},
            }
            for param in operation.params
        ]
        answer: dict[str, Any]
        if operation.media == TEXT:
            answer = {TEXT: {"schema": {"type": "string"}}}
        else:
            answer = {operation.media: {"schema": schema_of(operation.answer)}}
        responses: dict[str, Any] = {"200": {"description": operation.summary, "content": answer}}
        statuses = set(operation.errors)
        if "{" in operation.path:
            statuses |= {400, 404}  # a bad name; a name that is not there, or no such route
        for status in (*sorted(statuses), 500):
            responses[str(status)] = {
                "description": _ERRORS.get(status, "error"),
                "content": {JSON: {"schema": _ref("Error")}},
            }
        entry: dict[str, Any] = {
            "summary": operation.summary,
            "operationId": f"{operation.method.lower()}{_operation_id(operation.path)}",
            "parameters": parameters,
            "responses": responses,
        }
        if operation.body is not None:
            content = (
                {OCTETS: {"schema": {"type": "string", "format": "binary"}}}
                if operation.body_media == OCTETS
                else {JSON: {"schema": schema_of(operation.body)}}
            )
            entry["requestBody"] = {"required": operation.body_required, "content": content}
        item[operation.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "squish daemon API",
            "version": version,
            "description": "The API of squishd on its unix socket; see squish.daemon.api.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


_ERRORS = {
    400: "the request is malformed, or the squishfile or layer is bad",
    404: "no such container, layer, source or route",
    409: "the host refused, the thing is in use, or an id prefix is ambiguous",
    500: "a bug in the daemon (logged there with its traceback)",
}


def _operation_id(path: str) -> str:
    words = [part.strip("{}") for part in path.split("/")[2:] if part]
    return "".join(word[:1].upper() + word[1:] for word in words) or "Root"
