"""The server's outer guard, an ASGI middleware: the body limit, cross-site requests, DNS rebinding.

- The body is read here, chunk by chunk, and refused with 413 as soon as it passes the limit, however
  it arrives (a ``Content-Length`` over the limit is refused before reading; a chunked body while read).
  The app then gets the body as one message, and later ``receive`` calls (disconnects) as they come.
- A request with an ``Origin`` header that is neither the server's own (``http://<its Host>``) nor one
  of ``allowed_origins`` is refused with 403: a web page on another site cannot call the API.
- ``allowed_hosts`` (set when the server is bound to loopback) refuses a ``Host`` header naming any
  other host with 421, so that a rebinding DNS name cannot reach a server on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Guard:
    """Wrap ``app``: at most ``max_body_bytes`` per body, no foreign ``Origin``, only ``allowed_hosts``."""

    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        allowed_origins: Iterable[str] = (),
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.app, self.limit = app, max_body_bytes
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.hosts = None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(headers)
        if refusal is None:
            body, refusal = await self.read_body(receive)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        await self.app(scope, _replay(body, receive), send)

    def refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """The status and message that refuse a request on its headers alone; None to go on."""
        host = headers.get("host", "")
        if self.hosts is not None and hostname(host) not in self.hosts:
            return 421, (
                f"Host {host!r} is not this server's; a server bound to loopback answers only "
                f"{', '.join(sorted(self.hosts))} (bind --host to serve other names)"
            )
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in {
            f"http://{host}".lower(),
            f"https://{host}".lower(),
            *self.origins,
        }:
            return 403, (
                f"cross-site request from Origin {origin!r} refused; start the server with "
                f"--allow-origin {origin} to allow it"
            )
        size = headers.get("content-length", "")
        if size.isdigit() and int(size) > self.limit:
            return 413, self.too_large(int(size))
        return None

    async def read_body(self, receive: Receive) -> tuple[list[Message], tuple[int, str] | None]:
        """The request's body messages, read up to the limit; a refusal once it passes it."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.limit:
                return messages, (413, self.too_large(size, more=True))
            if not message.get("more_body", False):
                return messages, None

    def too_large(self, size: int, more: bool = False) -> str:
        return (
            f"the request body has {'more than ' if more else ''}{size} bytes, more than the limit of "
            f"{self.limit}; send less per request (the server's --max-body-bytes)"
        )


def hostname(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first (the body as one message), then ``receive``'s."""
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    queue = [{"type": "http.request", "body": body, "more_body": False}]
    queue += [m for m in messages if m["type"] != "http.request"]

    async def replayed() -> Message:
        return queue.pop(0) if queue else await receive()

    return replayed


async def _send_error(send: Send, status: int, message: str) -> None:
    kind = {403: "permission_error", 421: "permission_error", 413: "invalid_request_error"}[status]
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
