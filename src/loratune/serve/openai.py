"""OpenAI-compatible completion responses, whole or streamed as server-sent events (SSE).

A streamed answer is a series of ``data: {chunk}`` events, each holding the text generated since the
last one, then a chunk with the ``finish_reason`` and ``usage``, then ``data: [DONE]``, as OpenAI's
clients expect. The generation runs in a worker thread and hands its text to the event loop through a
queue; when the client goes away, the next token stops the generation. A whole answer stops the same
way when its client disconnects (``whole``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from loratune.serve.predictions import Completion
from loratune.serve.schemas import RequestError

CHAT = "chat.completion"
POLL_S = 0.25  # how often a whole answer's generation checks that its client is still there
TEXT = "text_completion"


def _usage(done: Completion) -> dict[str, int]:
    total = done.prompt_tokens + done.completion_tokens
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens, "total_tokens": total}


def _choice(kind: str, text: str | None, finish: str | None, *, delta: bool) -> dict[str, Any]:
    """One choice of a response (``delta``: of a streamed chunk)."""
    if kind == TEXT:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    if delta:
        return {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
    return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}


def response(kind: str, model: str, done: Completion) -> dict[str, Any]:
    """The whole answer as OpenAI's ``text_completion`` or ``chat.completion`` object."""
    return {
        "id": _new_id(kind),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(kind, done.text, done.finish_reason, delta=False)],
        "usage": _usage(done),
    }


def model_card(name: str) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "loratune"}


async def whole(generate: Callable[..., Completion], disconnected: Callable[[], Awaitable[bool]]) -> Completion:
    """``generate(stream=writer)`` in a worker thread, stopped at its next token when ``disconnected()``
    (the client went away: nobody waits for the answer)."""
    loop = asyncio.get_running_loop()
    writer = _QueueWriter(loop, None)
    task = loop.run_in_executor(None, lambda: generate(stream=writer))
    while not task.done():
        await asyncio.wait({task}, timeout=POLL_S)
        if not task.done() and await disconnected():
            writer.cancelled = True
    try:
        return await task
    except _Cancelled:
        raise RequestError(499, "the client closed the request before its answer", "client_closed") from None


def _new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == CHAT else "cmpl-") + uuid.uuid4().hex


class _Cancelled(Exception):
    """The client went away: raised inside the generation to stop it."""


class _QueueWriter:
    """A text file for ``generate``'s streamer that hands each piece to the event loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue | None) -> None:
        self.loop, self.queue, self.cancelled = loop, queue, False

    def write(self, text: str) -> int:
        if self.cancelled:
            raise _Cancelled
        if text and self.queue is not None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
        return len(text)

    def flush(self) -> None:
        pass


_END = object()


async def stream(
    kind: str, model: str, generate: Callable[..., Completion], on_error: Callable[[BaseException], dict]
) -> AsyncIterator[str]:
    """SSE events of ``generate(stream=writer)``: text chunks, the last chunk, ``[DONE]``. A failure after
    the stream began (the status is sent by then) becomes an ``{"error": ...}`` event from ``on_error``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    writer = _QueueWriter(loop, queue)
    ident, created = _new_id(kind), int(time.time())
    head = {"id": ident, "object": f"{kind}.chunk" if kind == CHAT else kind, "created": created, "model": model}
    task = loop.run_in_executor(None, lambda: generate(stream=writer))
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _END))
    try:
        if kind == CHAT:
            yield _event({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        while (piece := await queue.get()) is not _END:
            yield _event({**head, "choices": [_choice(kind, piece, None, delta=True)]})
        try:
            done = await task
        except Exception as err:  # the status is sent: report it in the stream
            yield _event(on_error(err))
        else:
            yield _event(
                {**head, "choices": [_choice(kind, None, done.finish_reason, delta=True)], "usage": _usage(done)}
            )
        yield "data: [DONE]\n\n"
    finally:
        writer.cancelled = True


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
