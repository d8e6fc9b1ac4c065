"""OpenAI's API beside Ollama's (docs/service.md#openai-compatible-endpoints): the subset of
``POST /v1/chat/completions``, ``POST /v1/responses`` and ``GET /v1/models`` that captions one image, so
that OpenAI's own clients, and the tools built on them (PhotoPrism's OpenAI engine, Open WebUI, LiteLLM),
get this program's captions with no glue.

A request holds exactly one image, as a ``data:image/...;base64,`` URL in a user message; text parts and
system messages are accepted and do not change the caption. The server fetches nothing and reads no
file: a remote URL, a file path or an uploaded file's id is refused. The decoding starts from the
server's own options; a request's ``n``, token budget, ``temperature`` and ``seed`` change them only where
that means what OpenAI means (``decoding_options``). Refusals are OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the statuses OpenAI's clients turn into their
exceptions.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from starlette.responses import JSONResponse

from utils.decoding.options import MAX_BEAM_SIZE, MAX_SEED, TEMPERATURE_RANGE, DecodingOptions
from utils.engine.captioner import CaptionResult
from utils.service import base64_image, json_body
from utils.service.json_body import LongString
from utils.service.ollama import MAX_MODEL_CHARS
from utils.service.uploads import RequestError, Upload
from utils.support.text import shortened

# The paths whose refusals (the token's 401 included) are OpenAI's shape.
PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/models")
# The published decoders' step count (docs/decoding.md): a caption's length without --max-length.
GRAPH_STEPS = 20
MAX_TEMPERATURE = 2.0  # OpenAI's range is 0 to 2
# The largest seed JSON carries exactly whatever the client parses numbers as (JavaScript's, float64's);
# above it a client and its schema validator would not agree on the number (--seed itself goes to 2**63 - 1).
MAX_JSON_SEED = min(2**53 - 1, MAX_SEED)
OWNER = "image-captioning"
_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
_IMAGE_PARTS = frozenset({"image_url", "input_image"})
_SHOWN = 80  # characters of a value quoted back in a message
_HINT = "send the image's bytes as a data:image/...;base64, URL"
# status -> OpenAI's error type and code
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None), 401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"), 413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "invalid_image"), 429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"), 504: ("server_error", "timeout"),
}


class OpenAIRequestError(RequestError):
    """A refusal that names the request's field at fault (OpenAI's ``param``)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.param = param


def is_openai_path(path: str) -> bool:
    return path in PATHS or path.startswith(tuple(p + "/" for p in PATHS))


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind, code = _KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def refusal(exc: RequestError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.headers, getattr(exc, "param", None))


@dataclass(frozen=True)
class Asked:
    """What a request asks of the decoding, in OpenAI's terms (``None``: not given)."""

    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class CaptionRequest:
    model: str  # echoed back, as OpenAI's compatible servers do; the caption is the server's model's
    image: Upload
    options: DecodingOptions
    asked: Asked
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def max_choices(defaults: DecodingOptions) -> int:
    """The most ``n`` can be: the captions the server's decoding gives (as --nbest)."""
    return min(defaults.captions_available or MAX_BEAM_SIZE, MAX_BEAM_SIZE)


def samples(options: DecodingOptions) -> bool:
    """Whether the server's decoding draws words at random (a --sample-method other than greedy)."""
    return options.path != "beam" and not options.sample_method.greedy


def decoding_options(asked: Asked, defaults: DecodingOptions) -> DecodingOptions:
    """The server's decoding options with what the request may change (docs/service.md):

    - ``n`` > 1: the n best captions (``--nbest n``); 1: one.
    - a token budget (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``): a word is a
      token here; a budget below the server's caption length (its --max-length, else the graph's 20
      steps) becomes ``--max-length``, a larger one changes nothing, as a budget only cuts a caption.
    - ``temperature``: ``--temperature`` when the server samples; with beam search or greedy decoding (the
      default) it is ignored, as those pick the likeliest words whatever the temperature (applied to
      beam search it would reweigh the words after the first, upstream's quirk, and change the caption
      the command line gives). 0 is the lowest temperature the decoder takes.
    - ``seed``: ``--seed`` (it matters only when the server samples).
    """
    if asked.n > (most := max_choices(defaults)):
        raise OpenAIRequestError(400, f"n is {asked.n}, but {defaults.method_description} (the server's decoding "
                                      f"flags) gives {most} captions", "n")
    changes: dict[str, Any] = {"nbest": asked.n if asked.n > 1 else None}
    if asked.max_tokens is not None and asked.max_tokens < (defaults.max_length or GRAPH_STEPS):
        changes["max_length"] = asked.max_tokens
    if asked.temperature is not None and samples(defaults):
        changes["temperature"] = max(asked.temperature, TEMPERATURE_RANGE[0])
    if asked.seed is not None:
        changes["seed"] = asked.seed
    try:
        return replace(defaults, **changes)
    except ValueError as exc:
        raise OpenAIRequestError(400, str(exc)) from None


# Reading a request
# ---------------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A request's value quoted in a message: its JSON, shortened; a long string (set aside unparsed, and
    perhaps inside the value) by its size."""
    if isinstance(value, LongString):
        return f"a string of {len(value)} bytes"
    return shortened(json.dumps(value, ensure_ascii=False, default=lambda long: f"<a string of {len(long)} bytes>"),
                     _SHOWN)


def _refuse(message: str, param: str | None) -> OpenAIRequestError:
    return OpenAIRequestError(400, message, param)


def _model(request: dict[str, Any]) -> str:
    model = request.get("model")
    if isinstance(model, LongString):
        raise _refuse(f"model must be a model's name, of at most {MAX_MODEL_CHARS} characters", "model")
    if not isinstance(model, str) or not model:
        raise _refuse("model is required: any name (it is echoed back; the caption is this server's model's)",
                      "model")
    return model[:MAX_MODEL_CHARS]


def _whole(request: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # JSON's 3.0 is the whole number 3
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise _refuse(f"{name} must be a whole number {bounds}, got {_shown(value)}", name)
    return value


def _number(request: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _refuse(f"{name} must be a number from {low:g} to {high:g}, got {_shown(value)}", name)
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _refuse(f"{name} must be true or false, got {_shown(value)}", name)
    return value


def _plain_text(value: Any, name: str) -> None:
    """``response_format`` / ``text.format``: plain text only. A JSON format is refused rather than
    answered with text its client would fail to parse."""
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if isinstance(kind, str):
        raise _refuse(f"{name} {shortened(kind, _SHOWN)!r} is not served: this service answers a photo's caption "
                      "as plain text", name)
    raise _refuse(f"{name} must be an object with a type, got {_shown(value)}", name)


def _object(body: bytes) -> dict[str, Any]:
    request = json_body.parse(body)
    if not isinstance(request, dict):
        raise _refuse("the body must be a JSON object", None)
    return request


def _parts(content: Any, where: str, role: str) -> list[tuple[Any, str]]:
    """The image parts of a message's content, each with its place; text parts are skipped."""
    if content is None or isinstance(content, str | LongString):
        return []
    if not isinstance(content, list):
        raise _refuse(f"{where} must be a string or a list of parts", where)
    found = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise _refuse(f"{at} must be a part with a type (text or image_url)", at)
        if kind in _TEXT_PARTS:
            continue
        if kind not in _IMAGE_PARTS:
            raise _refuse(f"{at} is a part of type {shortened(kind, _SHOWN)!r}: this service takes image and text "
                          "parts", at)
        if role != "user":
            raise _refuse(f"{at}: an image must be in a user message, not a {shortened(role, _SHOWN)!r} one", at)
        found.append(_image_value(part, at))
    return found


def _image_value(part: dict[str, Any], at: str) -> tuple[Any, str]:
    """A part's image URL: chat's ``image_url`` (``{"url": ...}``, or the URL alone as some clients
    send it), or the Responses API's ``input_image`` (``image_url`` a string)."""
    value = part.get("image_url")
    if isinstance(value, dict):
        return value.get("url"), f"{at}.image_url.url"
    if value is None and part.get("file_id") is not None:
        raise _refuse(f"{at}.file_id: this service keeps no uploaded files; {_HINT}", f"{at}.file_id")
    return value, f"{at}.image_url"


def _one_image(found: list[tuple[Any, str]], param: str) -> Upload:
    if not found:
        raise _refuse(f"the request holds no image: put one image part in a user message ({_HINT})", param)
    if len(found) > 1:
        raise _refuse(f"the request holds {len(found)} images: this service captions one photo per request",
                      found[1][1])
    value, at = found[0]
    return Upload(_image_bytes(value, at), at)


def _image_bytes(value: Any, at: str) -> bytes:
    """A data: URL's image. Never anything the server would have to fetch or read."""
    if not isinstance(value, str | LongString):
        raise _refuse(f"{at} must be a string: a data: URL ({_HINT})", at)
    text = base64_image.text_of(value)
    head = text[:16].lower()
    if head.startswith((b"http://", b"https://")):
        raise _refuse(f"{at} is a remote URL: this service fetches nothing; {_HINT}", at)
    if (start := base64_image.data_url_end(text)) is None:
        what = "a data: URL of another type" if head.startswith(b"data:") else "not a data: URL"
        raise _refuse(f"{at} is {what}: this service reads no file and fetches nothing; {_HINT}", at)
    try:
        return base64_image.decode(text, start, at, _HINT)
    except RequestError as exc:
        raise _refuse(exc.message, at) from None


def _role(item: dict[str, Any], at: str) -> str:
    role = item.get("role")
    if not isinstance(role, str):
        raise _refuse(f"{at}.role is required (user, system, ...)", f"{at}.role")
    return role


def parse_chat(body: bytes, defaults: DecodingOptions) -> CaptionRequest:
    """A ``/v1/chat/completions`` request, or an OpenAIRequestError 400 in one line. Seconds of work for a
    large body: call it in a thread, never on the event loop."""
    request = _object(body)
    model = _model(request)
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _refuse("messages must be a list of messages, a user message holding the image", "messages")
    found: list[tuple[Any, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _refuse(f"messages[{i}] must be an object", f"messages[{i}]")
        found += _parts(message.get("content"), f"messages[{i}].content", _role(message, f"messages[{i}]"))
    _plain_text(request.get("response_format"), "response_format")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _refuse(f"stream_options must be an object, got {_shown(options)}", "stream_options")
    budgets = [b for name in ("max_tokens", "max_completion_tokens") if (b := _whole(request, name, 1)) is not None]
    asked = Asked(n=_whole(request, "n", 1, MAX_BEAM_SIZE) or 1, max_tokens=min(budgets, default=None),
                  temperature=_number(request, "temperature", 0.0, MAX_TEMPERATURE),
                  seed=_whole(request, "seed", 0, MAX_JSON_SEED))
    image = _one_image(found, "messages")
    return CaptionRequest(model, image, decoding_options(asked, defaults), asked,
                          stream=_flag(request.get("stream"), "stream"),
                          include_usage=_flag((options or {}).get("include_usage"), "stream_options.include_usage"))


def parse_responses(body: bytes, defaults: DecodingOptions) -> CaptionRequest:
    """A ``/v1/responses`` request (as ``parse_chat``)."""
    request = _object(body)
    model = _model(request)
    items = request.get("input")
    found: list[tuple[Any, str]] = []
    if isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise _refuse(f"input[{i}] must be an object", f"input[{i}]")
            if item.get("type", "message") != "message":
                raise _refuse(f"input[{i}] is an item of type {_shown(item.get('type'))}: this service takes "
                              "messages", f"input[{i}].type")
            found += _parts(item.get("content"), f"input[{i}].content", _role(item, f"input[{i}]"))
    elif not isinstance(items, str | LongString):
        raise _refuse("input is required: a list of messages, a user message holding the image", "input")
    if _flag(request.get("stream"), "stream"):
        raise _refuse("stream is not served on /v1/responses; /v1/chat/completions streams", "stream")
    instructions = request.get("instructions")
    if instructions is not None and not isinstance(instructions, str | LongString):
        raise _refuse(f"instructions must be a string, got {_shown(instructions)}", "instructions")
    text = request.get("text")
    if text is not None and not isinstance(text, dict):
        raise _refuse(f"text must be an object, got {_shown(text)}", "text")
    _plain_text((text or {}).get("format"), "text.format")
    asked = Asked(max_tokens=_whole(request, "max_output_tokens", 1),
                  temperature=_number(request, "temperature", 0.0, MAX_TEMPERATURE))
    image = _one_image(found, "input")
    return CaptionRequest(model, image, decoding_options(asked, defaults), asked)


# Answers
# ---------------------------------------------------------------------------------------------


def _choices(result: CaptionResult, n: int) -> list[tuple[str, int]]:
    """Each choice's caption and its word count: the n best (repeats skipped, as --nbest), or one."""
    if n > 1 and result.nbest:
        return [(c.caption, len(c.indices)) for c in result.nbest[:n]]
    return [(result.caption, len(result.indices))]


def _finish(asked: CaptionRequest, words: int) -> str:
    """OpenAI's "length": the caption used all of the request's token budget."""
    budget = asked.asked.max_tokens
    return "length" if budget is not None and words >= budget else "stop"


def _usage(choices: list[tuple[str, int]]) -> dict[str, int]:
    # Tokens are words; the prompt counts as one (the image; its text is not read), as Ollama's answer says.
    words = sum(count for _, count in choices)
    return {"prompt_tokens": 1, "completion_tokens": words, "total_tokens": 1 + words}


def _fingerprint(result: CaptionResult) -> str:
    return f"{result.model}-{result.backend}"


def chat_completion(asked: CaptionRequest, result: CaptionResult) -> dict[str, Any]:
    choices = _choices(result, asked.asked.n)
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
        "model": asked.model, "system_fingerprint": _fingerprint(result),
        "choices": [{"index": i, "message": {"role": "assistant", "content": caption, "refusal": None},
                     "logprobs": None, "finish_reason": _finish(asked, words)}
                    for i, (caption, words) in enumerate(choices)],
        "usage": _usage(choices),
    }


def chat_events(asked: CaptionRequest, result: CaptionResult) -> str:
    """The streamed answer, whole (the caption is there at once): server-sent events of
    ``chat.completion.chunk`` objects, each choice's caption in one piece, then its finish, then (with
    ``stream_options.include_usage``) the usage, and ``data: [DONE]``."""
    choices = _choices(result, asked.asked.n)
    base: dict[str, Any] = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": asked.model,
                            "system_fingerprint": _fingerprint(result)}
    if asked.include_usage:
        base["usage"] = None

    def chunk(i: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {**base, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    chunks = [chunk(i, {"role": "assistant", "content": caption}, None) for i, (caption, _) in enumerate(choices)]
    chunks += [chunk(i, {}, _finish(asked, words)) for i, (_, words) in enumerate(choices)]
    if asked.include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(choices)})
    return "".join(_events(chunks)) + "data: [DONE]\n\n"


def _events(chunks: list[dict[str, Any]]) -> Iterator[str]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def response(asked: CaptionRequest, result: CaptionResult) -> dict[str, Any]:
    """The Responses API's answer: one message whose one part is the caption, ``output_text``."""
    words = len(result.indices)
    cut = _finish(asked, words) == "length"
    return {
        "id": f"resp_{secrets.token_hex(12)}", "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed", "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": None, "max_output_tokens": asked.asked.max_tokens, "model": asked.model,
        "output": [{"type": "message", "id": f"msg_{secrets.token_hex(12)}", "status": "incomplete" if cut
                    else "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": result.caption, "annotations": []}]}],
        "parallel_tool_calls": False, "temperature": asked.asked.temperature, "tool_choice": "none", "tools": [],
        "top_p": None, "text": {"format": {"type": "text"}}, "metadata": {},
        "usage": {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": words,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1 + words},
    }


def models(model: str, created: float) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": int(created), "owned_by": OWNER}]}


# The OpenAPI description
# ---------------------------------------------------------------------------------------------
# A request the schemas allow is one the service serves (schemathesis checks it): so each schema shows
# the smallest request, one user message with one image part, and each bound it gives is enforced as
# given. What the service takes beyond it (system messages, text parts, an image_url as a bare string)
# is in the docs.

DATA_URL_PATTERN = (r"^data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/]{4})*"
                    r"([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$")
ERROR_SCHEMA: dict[str, Any] = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
        "code": {"type": ["string", "null"]}}}}}
_TOKENS = {"type": ["integer", "null"], "minimum": 1}
_TEMPERATURE = {"type": ["number", "null"], "minimum": 0, "maximum": MAX_TEMPERATURE}
_PLAIN = {"type": ["object", "null"], "required": ["type"],
          "properties": {"type": {"type": "string", "enum": ["text"]}}}


def _user_message(part: dict[str, Any], role_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "enum": ["user"]}, **(role_schema or {}),
            "content": {"type": "array", "minItems": 1, "maxItems": 1, "items": part}}}}


def chat_schema(defaults: DecodingOptions) -> dict[str, Any]:
    image = {"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "pattern": DATA_URL_PATTERN}}}}}
    return {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string", "minLength": 1}, "messages": _user_message(image),
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": max_choices(defaults)},
        "max_tokens": _TOKENS, "max_completion_tokens": _TOKENS, "temperature": _TEMPERATURE,
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_JSON_SEED},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": ["boolean", "null"]}}},
        "response_format": _PLAIN}}


def responses_schema() -> dict[str, Any]:
    image = {"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["input_image"]},
        "image_url": {"type": "string", "pattern": DATA_URL_PATTERN}}}
    return {"type": "object", "required": ["model", "input"], "properties": {
        "model": {"type": "string", "minLength": 1},
        "input": _user_message(image, {"type": {"type": "string", "enum": ["message"]}}),
        "instructions": {"type": ["string", "null"]}, "max_output_tokens": _TOKENS, "temperature": _TEMPERATURE,
        "stream": {"type": ["boolean", "null"], "enum": [False, None]},
        "text": {"type": ["object", "null"], "properties": {"format": _PLAIN}}}}


CHAT_ANSWER: dict[str, Any] = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
                               "properties": {
    "id": {"type": "string"}, "object": {"type": "string", "enum": ["chat.completion"]},
    "created": {"type": "integer"}, "model": {"type": "string"},
    "choices": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["index", "message", "finish_reason"], "properties": {
            "index": {"type": "integer", "minimum": 0}, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
            "message": {"type": "object", "required": ["role", "content"], "properties": {
                "role": {"type": "string", "enum": ["assistant"]}, "content": {"type": "string"}}}}}},
    "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"], "properties": {
        name: {"type": "integer", "minimum": 0} for name in ("prompt_tokens", "completion_tokens", "total_tokens")}}}}
RESPONSE_ANSWER: dict[str, Any] = {"type": "object", "required": ["id", "object", "created_at", "status", "model",
                                                                  "output"], "properties": {
    "id": {"type": "string"}, "object": {"type": "string", "enum": ["response"]}, "created_at": {"type": "integer"},
    "status": {"type": "string", "enum": ["completed", "incomplete"]}, "model": {"type": "string"},
    "output": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "required": ["type", "role", "content"], "properties": {
            "type": {"type": "string", "enum": ["message"]}, "role": {"type": "string", "enum": ["assistant"]},
            "content": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["type", "text"], "properties": {
                    "type": {"type": "string", "enum": ["output_text"]}, "text": {"type": "string"}}}}}}}}}
MODELS_ANSWER: dict[str, Any] = {"type": "object", "required": ["object", "data"], "properties": {
    "object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": {
        "type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"}, "owned_by": {"type": "string"}}}}}}
