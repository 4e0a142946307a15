"""One ASGI middleware around the whole app: request id, Host check, body cap, and no traceback ever sent.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses and client disconnects pass through untouched.
"""

from __future__ import annotations

import logging
import uuid

from expertkit.serve.auth import host_is_loopback
from expertkit.serve.errors import error_bytes, status_type

logger = logging.getLogger(__name__)


class Guard:
    def __init__(self, app, max_request_bytes: int, check_host: bool, on_error=None):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.check_host = check_host
        self.on_error = on_error  # (type, status) of every error response, for /metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = f"req-{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = request_id
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 and self.on_error is not None:
                    status = message["status"]
                    self.on_error("client_closed" if status == 499 else status_type(status), status)
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        if self.check_host and not host_is_loopback(headers.get("host")):
            msg = "this server only answers requests addressed to localhost (the Host header names another host)"
            return await reply(send_with_id, 400, error_bytes(msg, "invalid_request_error", code="invalid_host"))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            return await reply(send_with_id, 413, too_large(self.max_request_bytes))
        if not declared.isdigit() and scope.get("method") in ("POST", "PUT", "PATCH"):
            body, over = await read_capped(receive, self.max_request_bytes)
            if over:
                return await reply(send_with_id, 413, too_large(self.max_request_bytes))
            receive = replay(body, receive)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s (%s)", scope.get("method"), scope.get("path"), request_id)
            if not started:
                msg = f"internal server error (request id {request_id}); the server log has the details"
                await reply(send_with_id, 500, error_bytes(msg, "server_error", code="internal_error"))


def too_large(limit: int) -> bytes:
    msg = f"the request body is larger than {limit} bytes (max_request_bytes)"
    return error_bytes(msg, "invalid_request_error", code="request_too_large")


async def reply(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_capped(receive, limit: int) -> tuple[bytes, bool]:
    """Read a body sent without Content-Length (chunked), stopping as soon as it passes the limit."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def replay(body: bytes, receive):
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then disconnect events, as usual

    return receive_again
