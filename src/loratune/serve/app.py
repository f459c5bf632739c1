"""The HTTP server of a ``Runtime``: FastAPI routes, errors as JSON, API keys, metrics, the playground.

Routes (OpenAPI docs at ``/docs``):

- ``POST /v1/predict``: labels, probabilities or entities of texts, for one adapter or mixed;
- ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI-compatible, for causal-lm adapters;
- ``GET /v1/models`` (OpenAI's list: the adapters served now, and ``__base__`` for a language model);
- ``GET /v1/adapters``; ``POST /v1/adapters/{name}`` loads (``?pin=true`` pins), ``DELETE`` unloads;
- ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the playground page).

The guard (``guard.py``) refuses bodies over the limit while they are read, cross-site ``Origin``s and,
on loopback, foreign ``Host`` names. ``/health``, ``/metrics``, ``/v1/adapters`` and the page never wait
for the model lock, so they answer at once while generations and batches run.

Every error is ``{"error": {"message", "type", "code"}}`` with a 4xx status for bad input. Concurrent
predict requests share forwards through the micro-batcher. With an API key, loading and unloading need
it; with ``api_key_all``, every route but ``/health``, ``/`` and the docs does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from loratune import __version__
from loratune.errors import (
    AdapterFileError,
    AdapterNameError,
    AdapterShapeError,
    DataError,
    LoratuneError,
    TargetModulesError,
    UnknownAdapterError,
)
from loratune.generate import DEFAULT_NEW_TOKENS, GenerationOptions
from loratune.lora.layer import BASE
from loratune.serve import openai
from loratune.serve.batcher import MicroBatcher
from loratune.serve.guard import Guard
from loratune.serve.metrics import CONTENT_TYPE, Measure, ServerMetrics
from loratune.serve.runtime import Runtime
from loratune.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    Limits,
    PredictItem,
    PredictRequest,
    RequestError,
    one_prompt,
    predict_items,
)

log = logging.getLogger("loratune.serve")
STATIC = Path(__file__).with_name("static")
STATUS = [  # the most specific class first
    (UnknownAdapterError, 404),  # also an unloaded adapter (AdapterUnavailableError)
    (AdapterNameError, 400),
    ((AdapterShapeError, TargetModulesError, AdapterFileError), 422),
    (DataError, 422),
    (LoratuneError, 400),
]


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, what it accepts, and who may call it."""

    batch_window_ms: float = 5.0
    max_batch: int = 64
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    api_key_all: bool = False
    allowed_origins: tuple[str, ...] = ()  # besides the server's own
    allowed_hosts: tuple[str, ...] | None = None  # the Host names answered (None: any); loopback's by default


def create_app(runtime: Runtime, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``runtime`` (run it with uvicorn)."""
    settings = settings or ServeSettings()
    metrics = ServerMetrics(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = MicroBatcher(
            runtime.predict_mixed,
            window_ms=settings.batch_window_ms,
            max_batch=settings.max_batch,
            on_batch=metrics.batch.observe,
        )
        yield
        app.state.batcher.close()  # uvicorn has drained the requests in flight by now

    app = FastAPI(
        title="loratune",
        version=__version__,
        lifespan=lifespan,
        description="Many LoRA adapters served on one base model.",
    )
    app.state.runtime, app.state.settings, app.state.metrics = runtime, settings, metrics
    _error_handlers(app)
    app.add_middleware(Measure, metrics=metrics)
    app.include_router(_open_routes(runtime))
    everyone = [Depends(_require_key(settings.api_key))] if settings.api_key and settings.api_key_all else []
    admins = [Depends(_require_key(settings.api_key))] if settings.api_key else []
    app.include_router(_metrics_route(metrics), dependencies=everyone)
    app.include_router(_predict_routes(runtime, settings), dependencies=everyone)
    app.include_router(_completion_routes(runtime, settings), dependencies=everyone)
    app.include_router(_adapter_routes(runtime, admins), dependencies=everyone)
    app.include_router(_models_route(runtime), dependencies=everyone)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(
        Guard,
        max_body_bytes=settings.limits.max_body_bytes,
        allowed_origins=settings.allowed_origins,
        allowed_hosts=settings.allowed_hosts,
    )
    return app


# ---------------------------------------------------------------------------------------------- errors
def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, message, kind), status_code=status, headers=headers)


def status_of(err: BaseException) -> int:
    """The HTTP status of a loratune error (500 for anything else)."""
    return next((code for kind, code in STATUS if isinstance(err, kind)), 500)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return _error(err.status, err.message, err.kind)

    @app.exception_handler(LoratuneError)
    async def user_error(request: Request, err: LoratuneError) -> JSONResponse:
        return _error(status_of(err), str(err).strip().splitlines()[0], type(err).__name__)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, validation_message(err.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), "http_error")

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error ({type(err).__name__}); the server log has the details", "server_error")


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line from pydantic's errors: the most specific one (the deepest location), with where it is.
    A body that may be an object or a list gets one error per shape; the deepest names the real problem."""
    if not errors:
        return "invalid request"
    worst = max(errors, key=lambda e: len(e.get("loc", ())))
    if worst.get("type") == "json_invalid":
        return f"the body is not valid JSON ({worst.get('ctx', {}).get('error', 'decode error')}); send a JSON object"
    parts = [str(p) for p in worst.get("loc", ()) if p != "body" and not str(p)[:1].isupper()]
    parts = [p for p in parts if not p.startswith("list[")]
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".") or "body"
    return f"{where}: {worst.get('msg', 'invalid')}"


# ------------------------------------------------------------------------------------ keys, metrics
_bearer = HTTPBearer(auto_error=False)
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def _require_key(key: str | None):
    """A dependency that refuses a request without ``key`` (as a bearer token or an X-API-Key header)."""

    async def check(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> None:
        given = bearer.credentials if bearer is not None else header
        if key and (given is None or not secrets.compare_digest(given.encode(), key.encode())):
            raise RequestError(
                401,
                "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                "authentication_error",
            )

    return check


# ------------------------------------------------------------------------------------------ routes
def _open_routes(runtime: Runtime) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @router.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness: the server answers (at once, even while generations run); how many adapters are loaded."""
        return {"status": "ok", "base_model": runtime.base_name, "loaded": len(runtime.loaded())}

    return router


def _metrics_route(metrics: ServerMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", tags=["server"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics: requests and latency per adapter, batch sizes, loaded adapters, evictions."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return router


def _predict_routes(runtime: Runtime, settings: ServeSettings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["predict"])

    @router.post("/predict")
    async def predict(body: PredictRequest | list[PredictItem], request: Request) -> dict[str, Any]:
        """Predictions per text, in order: label and probabilities (seq-cls), entities with spans
        (token-cls), or a completion (causal-lm). Concurrent requests share forwards."""
        items = predict_items(body, settings.limits)
        request.state.adapters = [name for name, _ in items]
        results = await asyncio.wrap_future(request.app.state.batcher.submit(items))
        return {"predictions": [{"adapter": name, **r} for (name, _), r in zip(items, results, strict=True)]}

    return router


def _completion_routes(runtime: Runtime, settings: ServeSettings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["completions (OpenAI-compatible)"])

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """A causal-lm adapter (``model``) continues the prompt, formatted as its training data was."""
        prompt = one_prompt(body.prompt, settings.limits)
        call = functools.partial(runtime.complete, body.model, prompt=prompt, raw=body.raw)
        return await _answer(runtime, settings, body, request, openai.TEXT, call)

    @router.post("/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        """A causal-lm adapter (``model``) answers the conversation, through its chat template."""
        messages = [m.model_dump() for m in body.messages]
        for i, m in enumerate(messages):
            if not m["content"].strip() and m["role"] == "user":
                raise RequestError(422, f"messages[{i}] is empty; pass a non-blank message")
        if sum(len(m["content"]) for m in messages) > settings.limits.max_text_chars:
            raise RequestError(
                413,
                f"the messages exceed {settings.limits.max_text_chars} characters "
                "(the server's --max-text-chars); send a shorter conversation",
            )
        call = functools.partial(runtime.complete, body.model, messages=messages)
        return await _answer(runtime, settings, body, request, openai.CHAT, call)

    return router


async def _answer(runtime: Runtime, settings: ServeSettings, body: Any, request: Request, kind: str, call) -> Any:
    """Check the adapter and options, then answer whole or as an SSE stream."""
    request.state.adapters = [body.model]
    task = await run_in_threadpool(runtime.check, body.model)
    if task != "causal-lm":
        raise RequestError(
            400, f"adapter {body.model!r} is a {task} adapter; completions need a causal-lm one (use /v1/predict)"
        )
    limit, field, asked = settings.limits.max_new_tokens, *body.token_limit()
    if asked is not None and asked > limit:
        raise RequestError(413, f"{field} {asked} is over the limit of {limit} (--max-new-tokens)")
    options = GenerationOptions(asked or min(DEFAULT_NEW_TOKENS, limit), body.temperature, body.top_p, body.seed)
    call = functools.partial(call, options=options)
    if body.stream:
        events = openai.stream(kind, body.model, call, _stream_error)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    done = await openai.whole(call, request.is_disconnected)
    return openai.response(kind, body.model, done)


def _stream_error(err: BaseException) -> dict[str, Any]:
    if status_of(err) == 500:
        log.error("generation failed: %r", err)
        return error_body(500, f"internal error ({type(err).__name__})", "server_error")
    return error_body(status_of(err), str(err).strip().splitlines()[0], type(err).__name__)


def _adapter_routes(runtime: Runtime, admins: list) -> APIRouter:
    router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

    @router.get("")
    async def adapters() -> dict[str, Any]:
        """Every adapter of the registry: task, labels, rank, size, base model, metric, loaded, pinned."""
        return {"adapters": await run_in_threadpool(runtime.list)}

    @router.post("/{name}", dependencies=admins)
    async def load(name: str, request: Request, pin: bool | None = None) -> dict[str, Any]:
        """Load an adapter (one trained while the server runs too); ``pin=true`` keeps it loaded,
        ``pin=false`` lets the budget evict it again. Needs the API key when one is set."""
        request.state.adapters = [name]
        return await run_in_threadpool(_load, runtime, name, pin)

    @router.delete("/{name}", dependencies=admins)
    async def unload(name: str, request: Request) -> dict[str, Any]:
        """Unload an adapter: its requests get 404 until it is loaded again. Needs the API key when one is set."""
        request.state.adapters = [name]
        await run_in_threadpool(runtime.unload, name)
        return await run_in_threadpool(runtime.describe, name)

    return router


def _models_route(runtime: Runtime) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["completions (OpenAI-compatible)"])

    @router.get("/models")
    async def models() -> dict[str, Any]:
        """OpenAI's model list: the adapters that can be served now, and ``__base__`` for a language model."""
        return {
            "object": "list",
            "data": [openai.model_card(name) for name in await run_in_threadpool(_served, runtime)],
        }

    return router


def _served(runtime: Runtime) -> list[str]:
    names = [r["name"] for r in runtime.list() if r["available"]]
    return [BASE, *names] if runtime.serves_base() else names


def _load(runtime: Runtime, name: str, pin: bool | None) -> dict[str, Any]:
    if pin:
        runtime.pin(name)
    else:
        runtime.load(name)
        if pin is False:
            runtime.unpin(name)
    return runtime.describe(name)
