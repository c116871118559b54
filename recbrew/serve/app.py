"""The HTTP surface: `/v1/rank` plus the OpenAI routes, passed through to the vLLM engine (when the service
ranks with one; a service built on an in-process Scorer serves `/v1/rank`, `/v1/tasks` and `/v1/models`).

recbrew runs as a thin gateway in front of vLLM's own server rather than inside it: vLLM keeps
its OpenAI routes, batching and prefix cache untouched, recbrew's Python (templates, Corpus
lookups) never blocks the engine's event loop, and either side can be upgraded alone. The price
is one local HTTP hop (about a millisecond) per engine call.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from recbrew.serve.protocol import RankError, RankRequest, RankResponse
from recbrew.serve.ranker import RankService

_PASS_THROUGH = ("/v1/completions", "/v1/chat/completions")


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(service: RankService, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=256)) as client:
            service.client = client
            yield

    app = FastAPI(title="recbrew", lifespan=lifespan)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             "authentication_error")
        return await call_next(request)

    @app.exception_handler(RankError)
    async def rank_error(request: Request, exc: RankError):
        return error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return error(400, f"malformed JSON: {first.get('msg')}")
        return error(400, f"{where}: {first.get('msg')}" + (f" (+{len(exc.errors()) - 1} more)"
                                                            if len(exc.errors()) > 1 else ""))

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

    @app.get("/v1/models")
    async def models():
        if not service.engine_url:
            return {"object": "list", "data": [{"id": service.served_model, "object": "model", "owned_by": "recbrew"}]}
        resp = await service.client.get(f"{service.engine_url}/v1/models", headers=service.headers, timeout=30)
        return Response(resp.content, status_code=resp.status_code, media_type="application/json")

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

    if service.engine_url:  # text completion needs the engine; an in-process Scorer only ranks
        for path in _PASS_THROUGH:
            app.add_api_route(path, forward, methods=["POST"])
    return app
