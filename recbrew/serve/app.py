"""The HTTP surface: `/v1/rank` plus the OpenAI routes, passed through to the vLLM engine (when the service
ranks with one; a service built on an in-process Scorer serves `/v1/rank`, `/v1/tasks` and `/v1/models`).

recbrew runs as a thin gateway in front of vLLM's own server rather than inside it: vLLM keeps
its OpenAI routes, batching and prefix cache untouched, recbrew's Python (templates, Corpus
lookups) never blocks the engine's event loop, and either side can be upgraded alone. The price
is one local HTTP hop (about a millisecond) per engine call.

Every error answer has one shape, `{"error": {"message", "type", "code"}}`: bad requests (4xx), unknown
routes and methods, and unexpected failures (500, their traceback in the server's log). With an API key
the interactive docs (`/docs`, `/redoc`, `/openapi.json`) are off: they would describe the API to anyone.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from recbrew.serve.protocol import (
    ID,
    INLINE,
    RankError,
    RankRequest,
    RankResponse,
    RerankRequest,
    RerankResponse,
)
from recbrew.serve.ranker import RankService
from recbrew.serve.rerank import rerank

_PASS_THROUGH = ("/v1/completions", "/v1/chat/completions")
log = logging.getLogger("recbrew.serve")


def error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """The first problem as 'field.path: what is wrong', plus how many more there are."""
    errors = exc.errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error') or first.get('msg')}"
    # Drop the body marker and the name of the form a member or candidate was read as ('id' / 'inline').
    path: list = []
    for part in first.get("loc", ()):
        if part == "body" or (part in (ID, INLINE) and path and (path[-1] == "member" or isinstance(path[-1], int))):
            continue
        path.append(part)
    where = ".".join(str(p) for p in path) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg')}{more}"


def create_app(service: RankService, api_key: str | None = None) -> FastAPI:
    """The gateway's app: one error shape, the key check, recbrew's routes, and the OpenAI completion routes
    passed through to the engine when there is one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=256)) as client:
            service.client = client
            yield

    docs = {} if not api_key else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="recbrew", lifespan=lifespan, **docs)
    _add_key_check(app, api_key)
    _add_error_handlers(app)
    _add_routes(app, service)
    if service.engine_url:  # text completion needs the engine; an in-process Scorer only ranks
        forward = _forwarder(service)
        for path in _PASS_THROUGH:
            app.add_api_route(path, forward, methods=["POST"])
    return app


def _add_key_check(app: FastAPI, api_key: str | None) -> None:
    """The API key on every API route, and a JSON 500 (traceback to the log) for anything unexpected."""

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith(("/v1", "/v2", "/rerank")):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             "authentication_error")
        try:
            return await call_next(request)
        except Exception as exc:  # a JSON answer on a connection that stays open; the traceback goes to the log
            log.exception("%s %s failed", request.method, request.url.path)
            return error(500, f"internal error ({type(exc).__name__}); the server's log has the traceback",
                         "server_error")


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal in recbrew's error shape."""

    @app.exception_handler(RankError)
    async def rank_error(request: Request, exc: RankError):
        return error(exc.status, str(exc), "invalid_request_error" if exc.status < 500 else "server_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(400, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # Unknown routes (404), wrong methods (405) and anything FastAPI itself refuses.
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error(exc.status_code, message, "invalid_request_error" if exc.status_code < 500 else "server_error",
                     headers=getattr(exc, "headers", None))

    @app.exception_handler(httpx.HTTPError)
    async def engine_unreachable(request: Request, exc: httpx.HTTPError):
        # A pass-through route (/v1/models, /v1/completions, ...) whose engine call failed.
        return error(502, f"the vLLM engine did not answer: {type(exc).__name__}", "server_error")


def _add_routes(app: FastAPI, service: RankService) -> None:
    """/health, /v1/tasks, /v1/rank, the rerank routes and /v1/models."""

    @app.get("/health")
    async def health():
        if not service.engine_url:  # the scorer runs in this process
            return JSONResponse({"status": "ok"})
        try:
            ok = (await service.client.get(f"{service.engine_url}/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            ok = False
        return JSONResponse({"status": "ok" if ok else "engine unavailable"}, status_code=200 if ok else 503)

    @app.get("/v1/tasks")
    async def tasks():
        return {"object": "list", "data": [
            {"id": t.name, "version": t.version, "surface": t.surface, "kind": t.kind.value, "split": t.split.value}
            for t in service.catalog.values()]}

    @app.post("/v1/rank", response_model=RankResponse, response_model_exclude_none=True)
    async def rank(req: RankRequest):
        return await service.rank(req)

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    @app.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    @app.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    async def rerank_route(req: RerankRequest):
        return await rerank(service, req)

    @app.get("/v1/models")
    async def models():
        if not service.engine_url:
            return {"object": "list", "data": [{"id": service.served_model, "object": "model", "owned_by": "recbrew"}]}
        resp = await service.client.get(f"{service.engine_url}/v1/models", headers=service.headers, timeout=30)
        return Response(resp.content, status_code=resp.status_code, media_type="application/json")


def _forwarder(service: RankService):
    """The route handler that passes a completion request to the engine, streamed when it asks to be."""

    async def forward(request: Request) -> Response:
        body = await request.body()
        try:
            stream = bool(json.loads(body or b"{}").get("stream"))
        except (ValueError, AttributeError):
            return error(400, "malformed JSON body")
        url = f"{service.engine_url}{request.url.path}"
        headers = {**service.headers, "content-type": "application/json"}
        if not stream:
            resp = await service.client.post(url, content=body, headers=headers, timeout=600)
            return Response(resp.content, status_code=resp.status_code,
                            media_type=resp.headers.get("content-type", "application/json"))
        upstream = await service.client.send(service.client.build_request("POST", url, content=body,
                                                                          headers=headers, timeout=600), stream=True)

        async def chunks():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(chunks(), status_code=upstream.status_code,
                                 media_type=upstream.headers.get("content-type", "text/event-stream"))

    return forward
