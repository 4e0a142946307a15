"""Every error on /v1 is OpenAI's `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

400 invalid_request_error  a bad field (param names it), invalid JSON, a prompt too long
401 authentication_error   a missing or wrong key
404 not_found_error        an unknown model or path
413 invalid_request_error  a body over max_request_bytes
429 rate_limit_error       the queue is full (Retry-After)
503 service_unavailable    the model is still loading (Retry-After)
504 timeout_error          request_timeout passed
500 server_error           a bug: the message carries a request id to find the traceback in the server log
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

logger = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_bytes(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps(error_body(message, type, param, code)).encode()


STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def status_type(status: int) -> str:
    return STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def param_path(loc: tuple) -> str | None:
    """pydantic's ('messages', 0, 'content', 'str') -> 'messages[0].content' (the type-union tail dropped)."""
    out = ""
    for part in loc:
        if part in ("body", "query"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif part in ("str", "list[ContentPart]", "list[str]", "int", "float", "bool") or "[" in str(part):
            break  # which member of a union pydantic tried: not a field
        else:
            out += f".{part}"
    return out or None


def from_validation_error(errors: list[dict]) -> APIError:
    """The first problem names the param (as OpenAI does); the message lists up to three."""
    params = [param_path(tuple(e.get("loc", ()))) for e in errors]
    lines = []
    for e, param in list(zip(errors, params))[:3]:
        msg = e.get("msg", "invalid value")
        lines.append(f"{param}: {msg}" if param else msg)
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return APIError(400, "; ".join(lines) + more, param=params[0] if params else None, code="invalid_value")


def parse_model(cls, data):
    """Validate request JSON into a protocol model, as an APIError 400 naming the param when it does not fit."""
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e.errors(include_url=False, include_input=False)) from None
