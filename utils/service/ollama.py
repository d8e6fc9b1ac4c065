"""The one endpoint an existing client can use with no glue: a subset of Ollama's ``POST /api/generate``
(docs/service.md#ollama-compatible-endpoint). Clients that caption photos through Ollama (its own Python
and JavaScript libraries, PhotoPrism's and other photo managers' Ollama engines) send one image in
``images`` and read the caption from ``response``.

The subset: ``model`` (any name; it is echoed back, as Ollama does), ``images`` (exactly one, base64),
``stream`` (true unless false, as Ollama: one line with the caption, then the closing line). ``prompt``,
``system``, ``options``, ``format``, ``keep_alive`` and the rest are accepted and ignored: the caption is
the server's, with its decoding options. Errors are Ollama's shape, ``{"error": "..."}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from utils.engine.captioner import CaptionResult
from utils.service import base64_image, json_body
from utils.service.json_body import LongString
from utils.service.uploads import RequestError, Upload

MAX_MODEL_CHARS = 200


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    image: Upload
    stream: bool


def parse_request(body: bytes) -> GenerateRequest:
    """The request, or a RequestError 400 in one line. Seconds of work for a large body: call it in a
    thread, never on the event loop."""
    request = json_body.parse(body)
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object")
    model = request.get("model")
    if isinstance(model, LongString):
        raise RequestError(400, f"model must be a model's name, of at most {MAX_MODEL_CHARS} characters")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model is required")
    stream = request.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be true or false")
    images = request.get("images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str | LongString):
        raise RequestError(400, "images must hold exactly one image, in base64: this service captions one "
                                "photo per request")
    return GenerateRequest(model[:MAX_MODEL_CHARS], Upload(_image_bytes(images[0]), "images[0]"), stream)


def _image_bytes(value: str | LongString) -> bytes:
    """The image of a base64 string (a data: URL's prefix tolerated). Never a file name: the server
    reads no path a request names, so a client must send the bytes (Ollama's libraries do)."""
    text = base64_image.text_of(value)
    return base64_image.decode(text, base64_image.data_url_end(text) or 0, "images[0]",
                               "send the image's bytes, base64-encoded; the server reads no file a request names")


def _created_at() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def responses(request: GenerateRequest, result: CaptionResult, total_s: float) -> list[dict[str, Any]]:
    """Ollama's answer: one object; streamed, a piece with the caption and then the closing object."""
    ns = {k: int(v * 1e6) for k, v in result.timings.items()}
    closing: dict[str, Any] = {
        "model": request.model, "created_at": _created_at(), "response": "", "done": True,
        "done_reason": "stop", "total_duration": int(total_s * 1e9), "load_duration": 0,
        "prompt_eval_count": 1, "prompt_eval_duration": ns.get("read", 0) + ns.get("preprocess", 0)
        + ns.get("features", 0), "eval_count": len(result.indices), "eval_duration": ns.get("decode", 0),
    }
    if not request.stream:
        return [{**closing, "response": result.caption}]
    return [{"model": request.model, "created_at": closing["created_at"], "response": result.caption, "done": False},
            closing]
