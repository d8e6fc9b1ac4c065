"""The HTTP application (FastAPI): its routes, the token check, CORS, and one JSON error shape,
``{"error": "one line"}``, for every refusal but the OpenAI-compatible routes', which answer OpenAI's
(``{"error": {"message", "type", "param", "code"}}``; docs/service.md)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from utils.decoding.options import DecodingOptions
from utils.engine.captioner import CaptionResult
from utils.output.records import CaptionRecord, as_json
from utils.service import ollama, openai
from utils.service.base64_image import max_body_bytes
from utils.service.caption_queue import CaptionQueue, ImageRefused, QueueFull
from utils.service.job import ServiceOptions
from utils.service.middleware import BearerToken, HeaderLimit, NoSniff, StopAnswer, error_response
from utils.service.params import OptionError, decoding_options, openapi_parameters
from utils.service.uploads import (
    BodyLimits,
    BodyReader,
    ClientGone,
    RequestError,
    Upload,
    UploadBudget,
    content_kind,
    file_name,
    read_form_image,
    read_raw,
)
from utils.support.errors import CaptionError, log_bug
from utils.support.stopping import StopRequest
from utils.support.text import printable, shortened

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# The page and its two files come from this program only; the camera's picture and the photos shown are
# blob: URLs made in the page.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
_PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
               "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
               "/static/style.css": ("style.css", "text/css; charset=utf-8"),
               # Linked from the page; /favicon.ico too, for the clients that ask for it whatever the page says.
               "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
               "/favicon.ico": ("favicon.svg", "image/svg+xml")}


class ServiceState:
    """What the routes share: the options, the caption queue once the models are loaded, and whether the
    service is stopping."""

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options
        self.queue: CaptionQueue | None = None
        self.stopping = False
        self.budget = UploadBudget(options.queue_size * options.max_upload_bytes)
        self.created = time.time()  # /v1/models' "created"

    def start(self, queue: CaptionQueue) -> None:
        self.queue = queue

    def close(self, stop: StopRequest | None = None) -> None:
        self.stopping = True
        if self.queue is not None:
            self.queue.close(stop)

    def ready_queue(self) -> CaptionQueue:
        if self.queue is None:
            raise RequestError(503, "the models are loading; retry in a few seconds", {"Retry-After": "2"})
        if self.stopping:
            raise RequestError(503, "the service is stopping", {"Connection": "close"})
        return self.queue

    async def caption(self, upload: Upload, options: DecodingOptions) -> CaptionResult:
        """The upload's caption, through the shared queue, within the request time limit."""
        queue = self.ready_queue()
        try:
            future: Future[CaptionResult] = queue.submit(upload.data, upload.name, options)
        except QueueFull as exc:
            raise RequestError(503, str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
        limit = self.options.request_timeout_s
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except (TimeoutError, asyncio.TimeoutError):
            raise RequestError(504, f"no caption within {limit:g} s (--request-timeout); the service is busy or "
                                    "the decoding options ask for much work") from None
        except ImageRefused as exc:
            raise RequestError(422, printable(str(exc))) from None
        except CaptionError as exc:
            raise RequestError(500, printable(str(exc))) from None


Handler = Callable[[Request], Awaitable[Response]]
Refusal = Callable[[RequestError], Response]
Parsed = TypeVar("Parsed")


def _plain(exc: RequestError) -> Response:
    return error_response(exc.status, exc.message, exc.headers)


def _answered(handler: Handler, refuse: Refusal = _plain) -> Handler:
    """Every way a route can end as one JSON answer, in ``refuse``'s shape: a refusal, a client gone, or
    a bug (one log line, the traceback with --debug; never a traceback from the server)."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return refuse(exc)
        except ClientGone:
            return Response(status_code=400)  # nobody reads it
        except Exception as exc:
            log_bug(logger, exc)
            return refuse(RequestError(500, f"internal error: {type(exc).__name__}"))

    route.__name__ = handler.__name__
    route.__doc__ = handler.__doc__
    return route


def _answered_openai(handler: Handler) -> Handler:
    return _answered(handler, openai.refusal)


_PLAIN_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _error_responses(*codes: int, schema: dict[str, Any] = _PLAIN_ERROR) -> dict[int | str, dict[str, Any]]:
    words = {400: "a malformed request", 401: "no token or a wrong one (with --token)",
             408: "the body did not arrive in time (--client-timeout)", 413: "the body is over --max-upload-mb",
             415: "not multipart/form-data nor image/*", 422: "a bad option, or not an image this program decodes",
             503: "loading, stopping, or the queue is full (Retry-After says when to retry)",
             504: "no caption within --request-timeout"}
    return {code: {"description": words[code], "content": {"application/json": {"schema": schema}}} for code in codes}


def _openai_responses(answer: dict[str, Any], *codes: int, events: bool = False) -> dict[int | str, dict[str, Any]]:
    """An OpenAI-compatible route's answers: ``answer`` with 200 (or server-sent events), and OpenAI's
    error shape with ``codes``."""
    content: dict[str, Any] = {"application/json": {"schema": answer}}
    if events:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {200: {"description": "OpenAI's answer", "content": content},
            **_error_responses(*codes, schema=openai.ERROR_SCHEMA)}


_GENERATE_FIELDS = {"model": {"type": "string"}, "created_at": {"type": "string"}, "response": {"type": "string"},
                    "done": {"type": "boolean"}}
# Ollama's answer: one object with "stream": false; else (the default) lines of JSON, the caption first and
# then the closing object with the timings.
_GENERATED = {"description": "the caption in 'response'", "content": {
    "application/json": {"schema": {"type": "object", "required": list(_GENERATE_FIELDS),
                                    "properties": _GENERATE_FIELDS}},
    "application/x-ndjson": {"schema": {"type": "string"}}}}


def _status_responses(*refused: str) -> dict[int | str, dict[str, Any]]:
    """/healthz and /readyz: ``{"status": ...}`` with 200, and with 503 in the states ``refused`` lists."""
    ready = ["ok"] if refused == ("loading",) else ["ready"]
    counts = {} if refused == ("loading",) else {name: {"type": "integer", "minimum": 0}
                                                for name in ("pending", "capacity", "workers")}

    def schema(states: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"type": "string", "enum": states}, **extra}}}}}

    return {200: {"description": "taking requests", **schema(ready, counts)},
            503: {"description": " or ".join(refused), **schema(list(refused), counts)}}


def create_app(state: ServiceState) -> FastAPI:
    """The application; ``state`` gets its queue once the models are loaded."""
    # Swagger UI and ReDoc (/docs, /redoc) load their scripts from a CDN: off. /openapi.json stays.
    app = FastAPI(title="Image captioning service", version="1", docs_url=None, redoc_url=None,
                  description="Captions for photos (docs/service.md). With --token, every route but /healthz "
                              "needs 'Authorization: Bearer TOKEN'. Errors are {\"error\": \"one line\"}; on "
                              "the OpenAI-compatible routes (/v1/chat/completions, /v1/responses, /v1/models), "
                              "OpenAI's {\"error\": {\"message\", \"type\", \"param\", \"code\"}}.")
    _add_error_handlers(app)
    _add_status_routes(app, state)
    _add_caption_route(app, state)
    _add_ollama_route(app, state)
    _add_openai_routes(app, state)
    for path, (content, kind) in _read_pages().items():
        app.add_api_route(path, _page(content, kind), methods=["GET", "HEAD"], include_in_schema=False)
    _add_middleware(app, state.options)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if openai.is_openai_path(request.url.path):
            return openai.error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, shortened(str(exc), 300))


def _add_status_routes(app: FastAPI, state: ServiceState) -> None:
    """/healthz and /readyz."""

    @app.api_route("/healthz", methods=["GET", "HEAD"], summary="200 once the models are loaded, 503 before",
                   responses=_status_responses("loading"))
    @_answered
    async def healthz(_request: Request) -> Response:
        if state.queue is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.api_route("/readyz", methods=["GET", "HEAD"],
                   summary="200 while new requests are taken; 503 while loading, stopping or full",
                   responses=_status_responses("loading", "stopping", "full"))
    @_answered
    async def readyz(_request: Request) -> Response:
        queue = state.queue
        if queue is None or state.stopping:
            return JSONResponse({"status": "loading" if queue is None else "stopping"}, status_code=503)
        body = {"status": "full" if queue.full else "ready", "pending": queue.pending, "capacity": queue.capacity,
                "workers": queue.captioner.workers}
        return JSONResponse(body, status_code=503 if queue.full else 200)


def _add_caption_route(app: FastAPI, state: ServiceState) -> None:
    """/v1/captions, the program's own route."""
    options = state.options
    limits = BodyLimits(options.max_upload_bytes, options.client_timeout_s)

    @app.post("/v1/captions", summary="Caption one photo", responses=_error_responses(400, 401, 408, 413, 415, 422,
                                                                                    503, 504),
              openapi_extra={
                  "parameters": openapi_parameters(options.decoding),
                  "requestBody": {"required": True, "content": {
                      "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                          "image": {"type": "string", "format": "binary"}}}},
                      "image/*": {"schema": {"type": "string", "format": "binary"}}}},
              })
    @_answered
    async def captions(request: Request) -> Response:
        """The photo as the form field ``image`` or as the body (``image/*``); the answer is the JSON
        record ``--json`` prints for it (docs/output.md#json-output), its ``input`` the upload's name."""
        deadline = asyncio.get_running_loop().time() + options.client_timeout_s
        queue = state.ready_queue()
        try:
            decoding = decoding_options(request.query_params.multi_items(), options.decoding)
        except OptionError as exc:
            raise RequestError(422, str(exc)) from None
        if queue.full:  # before the body is read: the client need not send it
            raise _queue_full(queue)
        kind, params = content_kind(request.headers.get("content-type"))
        if kind != "multipart/form-data" and not kind.startswith("image/"):
            raise RequestError(415, f"send the photo as multipart/form-data (field 'image') or as the body with "
                                    f"an image/* Content-Type, not {shortened(kind) or 'no Content-Type'}",
                               {"Connection": "close"})
        reader = BodyReader(request.receive, dict(request.headers), limits, state.budget, deadline)
        try:
            upload = await _read_upload(request, reader, kind, params)
        finally:
            reader.release()
        result = await state.caption(upload, decoding)
        return JSONResponse(as_json(CaptionRecord(upload.name, result)))


async def _read_upload(request: Request, reader: BodyReader, kind: str, params: dict[bytes, bytes]) -> Upload:
    """/v1/captions' photo: the form field ``image`` of a multipart body, or the whole body."""
    if kind == "multipart/form-data":
        if not (boundary := params.get(b"boundary")):
            raise RequestError(400, "the multipart Content-Type has no boundary", {"Connection": "close"})
        return await read_form_image(reader.chunks(), boundary)
    _, disposition = content_kind(request.headers.get("content-disposition"))
    raw_name = disposition.get(b"filename")
    return Upload(await read_raw(reader.chunks()), file_name(raw_name.decode("utf-8", "replace") if raw_name else None))


async def _read_json(state: ServiceState, request: Request, parse: Callable[[bytes], Parsed]) -> Parsed:
    """A JSON body (room for an upload of the limit in base64), refused before it is read when the
    queue is full, and parsed in a thread, its bytes still counted in the budget: a large body stalls
    no one."""
    options = state.options
    deadline = asyncio.get_running_loop().time() + options.client_timeout_s
    if (queue := state.ready_queue()).full:
        raise _queue_full(queue)
    reader = BodyReader(request.receive, dict(request.headers),
                        BodyLimits(max_body_bytes(options.max_upload_bytes), options.client_timeout_s),
                        state.budget, deadline)
    try:
        return await asyncio.to_thread(parse, await read_raw(reader.chunks()))
    finally:
        reader.release()


def _add_ollama_route(app: FastAPI, state: ServiceState) -> None:
    """/api/generate."""
    options = state.options

    @app.post("/api/generate", summary="Ollama's /api/generate, the subset that captions one image",
              responses={200: _GENERATED, **_error_responses(400, 401, 408, 413, 422, 503, 504)},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["model", "images"], "properties": {
                      "model": {"type": "string", "minLength": 1},
                      "images": {"type": "array", "items": {"type": "string", "format": "byte", "minLength": 1},
                                 "minItems": 1, "maxItems": 1},
                      "stream": {"type": "boolean", "default": True}, "prompt": {"type": "string"}}}}}}})
    @_answered
    async def generate(request: Request) -> Response:
        """Ollama's shapes (docs/service.md#ollama-compatible-endpoint): the caption in ``response``."""
        started = time.perf_counter()
        asked = await _read_json(state, request, ollama.parse_request)
        result = await state.caption(asked.image, options.decoding)
        answers = ollama.responses(asked, result, time.perf_counter() - started)
        if not asked.stream:
            return JSONResponse(answers[0])
        lines = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        return Response(lines, media_type="application/x-ndjson")


_OPENAI_ERRORS = (400, 401, 408, 413, 422, 503, 504)


async def _openai_caption(state: ServiceState, asked: openai.CaptionRequest) -> CaptionResult:
    try:
        return await state.caption(asked.image, asked.options)
    except RequestError as exc:  # not an image: the message names its field, and so does "param"
        param = asked.image.name if exc.status == 422 else None
        raise openai.OpenAIRequestError(exc.status, exc.message, param, exc.headers) from None


def _add_openai_routes(app: FastAPI, state: ServiceState) -> None:
    """/v1/chat/completions, /v1/responses and /v1/models."""
    options = state.options

    @app.post("/v1/chat/completions", summary="OpenAI's chat completions, the subset that captions one image",
              responses=_openai_responses(openai.CHAT_ANSWER, *_OPENAI_ERRORS, events=True),
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": openai.chat_schema(options.decoding)}}}})
    @_answered_openai
    async def chat_completions(request: Request) -> Response:
        """OpenAI's shapes (docs/service.md#openai-compatible-endpoints): the caption in
        ``choices[0].message.content``; with ``stream``, server-sent ``chat.completion.chunk`` events."""
        asked = await _read_json(state, request, functools.partial(openai.parse_chat, defaults=options.decoding))
        result = await _openai_caption(state, asked)
        if asked.stream:
            return Response(openai.chat_events(asked, result), media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache"})
        return JSONResponse(openai.chat_completion(asked, result))

    @app.post("/v1/responses", summary="OpenAI's Responses API, the subset that captions one image",
              responses=_openai_responses(openai.RESPONSE_ANSWER, *_OPENAI_ERRORS),
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": openai.responses_schema()}}}})
    @_answered_openai
    async def responses(request: Request) -> Response:
        """The caption as ``output[0].content[0]``, an ``output_text`` part (what OpenAI's clients read as
        ``output_text``, and PhotoPrism's OpenAI engine parses)."""
        asked = await _read_json(state, request, functools.partial(openai.parse_responses, defaults=options.decoding))
        result = await _openai_caption(state, asked)
        return JSONResponse(openai.response(asked, result))

    @app.get("/v1/models", summary="OpenAI's model list: the model this service captions with",
             responses=_openai_responses(openai.MODELS_ANSWER, 401, 503))
    @_answered_openai
    async def models(_request: Request) -> Response:
        return JSONResponse(openai.models(state.ready_queue().captioner.model, state.created))


def _read_pages() -> dict[str, tuple[bytes, str]]:
    """The page's files by path: their bytes and media type."""
    return {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in _PAGE_FILES.items()}


def _add_middleware(app: FastAPI, options: ServiceOptions) -> None:
    # The last added is the outermost: CORS before the token (a browser's preflight carries none), and
    # every answer, a refusal by any of them included, through NoSniff.
    if options.token is not None:
        app.add_middleware(BearerToken, token=options.token)
    if options.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Content-Disposition"], max_age=600)
    app.add_middleware(HeaderLimit)
    app.add_middleware(StopAnswer)
    app.add_middleware(NoSniff)


def _queue_full(queue: CaptionQueue) -> RequestError:
    return RequestError(503, "the queue is full (--queue-size); retry later",
                        {"Retry-After": str(queue.retry_after_s()), "Connection": "close"})


def _page(content: bytes, kind: str) -> Handler:
    async def page(_request: Request) -> Response:
        return Response(content, media_type=kind,
                        headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})

    return page
