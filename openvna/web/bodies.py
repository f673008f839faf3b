"""Request bodies of the REST API: read with a size limit, JSON or an HTML form,
validated by a pydantic model (validation at the boundary: a malformed body is a 400
that names each problem, never an error deeper in)."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from openvna.errors import BadRequestError, RequestTooLargeError

ModelT = TypeVar("ModelT", bound=BaseModel)
FORM = "application/x-www-form-urlencoded"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes (413) without reading it all."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parsed_body(request: Request, limit: int) -> tuple[dict[str, Any], bool]:
    """The body as a mapping, and whether it came from an HTML form."""
    raw = await read_body(request, limit)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM:
        return dict(parse_qsl(raw.decode("utf-8", "replace"))), True
    if not raw.strip():
        return {}, False
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise BadRequestError(f"request body is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise BadRequestError("request body must be a JSON object")
    return value, False


def validated(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """``data`` as ``model``; a validation failure is a 400 naming each problem."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in error.errors()
        )
        raise BadRequestError(problems) from error
