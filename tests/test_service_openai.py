"""The OpenAI-compatible endpoints (docs/service.md#openai-compatible-endpoints): OpenAI's own Python
client, and its JavaScript client run by node, against the real program serving on a free loopback port
with a token (their API key), each caption the command line's for the same photo and options; PhotoPrism's
OpenAI request replayed as its Go code builds it, and the answer read as its Go types read it; and the
request parsing on its own (the fast tier)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import SAMPLE, RunCli, cli_env
from tests.service_helpers import Service, make_photos, request, serving
from tests.test_service import cli_records, wait_until
from utils.decoding.options import DecodingOptions, SampleMethod
from utils.service import openai as served
from utils.service.uploads import RequestError

TOKEN = "s3cret-Token_42"
JS_CLIENT = Path(__file__).resolve().parent / "openai_client.cjs"
# Where .ci/run installs the npm package "openai" (outside the checkout, so it leaves no files in it).
NODE_DIR = Path(os.environ.get("IMAGE_CAPTIONING_NODE_DIR") or Path.home() / ".cache" / "image-captioning" / "node")

# PhotoPrism's caption prompts (internal/ai/vision/openai/defaults.go).
PHOTOPRISM_SYSTEM = ("You are a PhotoPrism vision model. Return concise, user-friendly captions that describe the "
                     "main subjects accurately.")
PHOTOPRISM_PROMPT = ("Provide exactly one sentence describing the key subject and action in the image. Avoid filler "
                     "words and technical jargon.")


@pytest.fixture(scope="module")
def service(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with its defaults (beam 5) and a token, shared by every test here."""
    with serving(served_models, cwd=tmp_path_factory.mktemp("cwd"), env={"IMAGE_CAPTIONING_TOKEN": TOKEN}) as running:
        yield running


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_photos(tmp_path_factory.mktemp("three"), count=3)


@pytest.fixture
def client(service: Service) -> openai.OpenAI:
    # No retries: a refusal must reach the test as it came (the client retries 408, 429 and 5xx itself).
    return openai.OpenAI(base_url=f"{service.url}v1", api_key=TOKEN, max_retries=0, timeout=60)


def data_url(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def photo_message(url: str, text: str = "Describe this photo for its alt text.") -> list[Any]:
    """A system message, and a user message of text and the image: the usual vision request."""
    return [{"role": "system", "content": "You write alt text."},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def post_json(service: Service, path: str, body: dict[str, Any], token: str | None = TOKEN) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return request(service, "POST", path, json.dumps(body).encode(), headers)


def test_python_client_chat_streaming_and_responses_give_the_clis_caption(
        service: Service, client: openai.OpenAI, run_cli: RunCli, served_models: Path, three: list[Path]) -> None:
    expected = cli_records(run_cli, served_models, three)
    assert len({r["caption"] for r in expected.values()}) > 1  # the photos are told apart
    for photo in three:
        record = expected[photo.name]
        done = client.chat.completions.create(model="gpt-4o-mini", messages=photo_message(data_url(photo)))
        assert [c.message.content for c in done.choices] == [record["caption"]]
        assert done.model == "gpt-4o-mini" and done.object == "chat.completion" and done.id.startswith("chatcmpl-")
        assert done.choices[0].finish_reason == "stop" and done.choices[0].message.role == "assistant"
        assert done.usage is not None and done.usage.completion_tokens == len(record["indices"])
        asked: Any = [{"role": "user", "content": [{"type": "input_text", "text": "Describe"},
                                                   {"type": "input_image", "image_url": data_url(photo)}]}]
        answer = client.responses.create(model="gpt-4o-mini", instructions="You write alt text.", input=asked)
        assert answer.output_text == record["caption"] and answer.status == "completed"
        output: Any = answer.output[0]
        assert output.type == "message" and output.content[0].type == "output_text"
    photo, caption = three[0], expected[three[0].name]["caption"]
    chunks = list(client.chat.completions.create(model="m", messages=photo_message(data_url(photo)), stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == caption
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(expected[photo.name]["indices"])
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    # temperature and seed change nothing with the server's beam search; a bare-string image_url is taken too.
    same = client.chat.completions.create(model="m", messages=photo_message(data_url(photo)), temperature=0.2, seed=7)
    assert same.choices[0].message.content == caption
    bare = post_json(service, "/v1/chat/completions", {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": data_url(photo)}]}]})
    assert bare.status == 200 and bare.json()["choices"][0]["message"]["content"] == caption


def test_n_and_max_tokens_are_the_clis_nbest_and_max_length(client: openai.OpenAI, run_cli: RunCli,
                                                             served_models: Path, three: list[Path]) -> None:
    photo = three[1]
    best = cli_records(run_cli, served_models, [photo], "--nbest", "3")[photo.name]["nbest"]
    done = client.chat.completions.create(model="m", messages=photo_message(data_url(photo)), n=3)
    assert [c.message.content for c in done.choices] == [b["caption"] for b in best]
    assert [c.index for c in done.choices] == list(range(len(best)))
    short = cli_records(run_cli, served_models, [photo], "--max-length", "3")[photo.name]
    cut = client.chat.completions.create(model="m", messages=photo_message(data_url(photo)), max_tokens=3)
    assert cut.choices[0].message.content == short["caption"]
    assert cut.choices[0].finish_reason == ("length" if len(short["indices"]) == 3 else "stop")
    roomy = client.chat.completions.create(model="m", messages=photo_message(data_url(photo)),
                                           max_completion_tokens=512)  # a budget over the caption changes nothing
    assert roomy.choices[0].message.content == cli_records(run_cli, served_models, [photo])[photo.name]["caption"]


def test_models_and_the_api_key(service: Service, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fc_nsc"]
    wrong = openai.OpenAI(base_url=f"{service.url}v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model="m", messages=photo_message(data_url(SAMPLE)))
    assert "API key" in refused.value.message
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    bare = request(service, "GET", "/v1/models")
    assert bare.status == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["code"] == "invalid_api_key" and set(bare.json()["error"]) == {
        "message", "type", "param", "code"}
    # The service's other routes keep their one-line shape.
    assert isinstance(request(service, "GET", "/readyz").json()["error"], str)


def test_refusals_reach_the_client_as_its_exceptions(service: Service, client: openai.OpenAI, tmp_path: Path) -> None:
    def refused(exception: type[openai.APIStatusError], words: str, **asked: Any) -> openai.APIStatusError:
        with pytest.raises(exception) as caught:
            client.chat.completions.create(model="m", **asked)
        message = caught.value.body["message"]  # type: ignore[index]
        assert words in message and "\n" not in message, message
        return caught.value

    remote = refused(openai.BadRequestError, "is a remote URL: this service fetches nothing",
                     messages=photo_message("https://example.com/cat.jpg"))
    assert remote.body["param"] == "messages[1].content[1].image_url.url"  # type: ignore[index]
    refused(openai.BadRequestError, "reads no file", messages=photo_message(str(SAMPLE)))
    refused(openai.BadRequestError, "reads no file", messages=photo_message(f"file://{SAMPLE}"))
    image = {"type": "image_url", "image_url": {"url": data_url(SAMPLE)}}
    refused(openai.BadRequestError, "holds 2 images: this service captions one photo per request",
            messages=[{"role": "user", "content": [image, image]}])
    refused(openai.BadRequestError, "holds 2 images", messages=[{"role": "user", "content": [image]}] * 2)
    refused(openai.BadRequestError, "holds no image", messages=[{"role": "user", "content": "Describe a cat"}])
    refused(openai.BadRequestError, "an image must be in a user message", messages=[{"role": "system",
                                                                                      "content": [image]}])
    garbage = tmp_path / "notes.png"
    garbage.write_bytes(b"this is not a photo" * 10)
    bad = refused(openai.UnprocessableEntityError, "is not an image OpenCV can decode",
                  messages=photo_message(data_url(garbage)))
    assert bad.body["code"] == "invalid_image"  # type: ignore[index]
    refused(openai.BadRequestError, "n is 9, but beam search with beam size 5", messages=photo_message(
        data_url(SAMPLE)), n=9)
    refused(openai.BadRequestError, "'json_schema' is not served: this service answers a photo's caption as plain "
                                    "text", messages=photo_message(data_url(SAMPLE)),
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
    refused(openai.BadRequestError, "temperature must be a number from 0 to 2",
            messages=photo_message(data_url(SAMPLE)), temperature=3)
    with pytest.raises(openai.BadRequestError, match="remote URL"):
        client.responses.create(model="m", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "low"}]}])
    with pytest.raises(openai.BadRequestError, match="keeps no uploaded files"):
        client.responses.create(model="m", input=[{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-123", "detail": "low"}]}])
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("GET", "/v1/models/fc_nsc", 404)):
        answer = request(service, method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == status and set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_over_the_limits_the_client_gets_openais_errors(served_models: Path, tmp_path: Path) -> None:
    # A 1 MB upload limit, and defaults slow enough (beam 1000) to pass a 0.5 s time limit.
    slow = ("--workers", "1", "--max-upload-mb", "1", "--request-timeout", "0.5", "--beam-size", "1000",
            "--group-size", "100", "--max-length", "100")
    with serving(served_models, *slow, cwd=tmp_path, quiet=False) as running:
        client = openai.OpenAI(base_url=f"{running.url}v1", api_key="any", max_retries=0, timeout=60)
        too_big = "data:image/png;base64," + "A" * (2 << 20)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="m", messages=photo_message(too_big))
        assert caught.value.status_code == 413, caught.value
        assert set(caught.value.body) == {"message", "type", "param", "code"}  # type: ignore[call-overload]
        with pytest.raises(openai.InternalServerError) as late:
            client.chat.completions.create(model="m", messages=photo_message(data_url(SAMPLE)))
        assert late.value.status_code == 504 and late.value.body["code"] == "timeout"  # type: ignore[index]
        assert "--request-timeout" in late.value.body["message"]  # type: ignore[index]
        wait_until(lambda: request(running, "GET", "/readyz").json().get("pending") == 0)


def test_javascript_client_gets_the_clis_caption(service: Service, run_cli: RunCli, served_models: Path,
                                                 three: list[Path]) -> None:
    """OpenAI's JavaScript client (npm "openai", installed by .ci/run), run by node: the same chat
    completion, streamed and not."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; .ci/run installs it, and npm's openai (apt-get install nodejs npm)")
    package = NODE_DIR / "node_modules" / "openai" / "package.json"
    assert package.is_file(), (f"npm's openai is not in {NODE_DIR}: run .ci/run, or npm install --prefix {NODE_DIR} "
                               "openai@^4")
    photo = three[2]
    caption = cli_records(run_cli, served_models, [photo])[photo.name]["caption"]
    proc = subprocess.run([node, str(JS_CLIENT), f"{service.url}v1", TOKEN, str(photo)], capture_output=True,
                          text=True, timeout=120, env=cli_env({"NODE_PATH": str(NODE_DIR / "node_modules")}),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["content"] == caption and answer["finish"] == "stop" and answer["model"] == "fc_nsc"
    assert "".join(answer["pieces"]) == caption and answer["finishes"] == ["stop"]
    assert answer["refused"]["status"] == 400 and answer["refused"]["name"] == "BadRequestError"
    assert "this service fetches nothing" in answer["refused"]["message"]


def photoprism_request(model: str, image_url: str) -> dict[str, Any]:
    """The body PhotoPrism's OpenAI engine sends for a caption (internal/ai/vision/api_request.go,
    ``openAIJSON``), with the defaults its caption models get (engine_openai.go, openai/defaults.go):
    its system prompt and one-sentence prompt, the thumbnail as a data URL with ``detail: low``, 512
    output tokens; no ``text.format`` (a caption asks for plain text); for a ``gpt-5`` name a low
    reasoning effort and no temperature, for any other its default temperature, 0.1."""
    body: dict[str, Any] = {"model": model, "input": [
        {"role": "system", "type": "message", "content": [{"type": "input_text", "text": PHOTOPRISM_SYSTEM}]},
        {"role": "user", "type": "message", "content": [
            {"type": "input_text", "text": PHOTOPRISM_PROMPT},
            {"type": "input_image", "image_url": image_url, "detail": "low"}]}]}
    if model.lower().startswith("gpt-5"):
        body["reasoning"] = {"effort": "low"}
    body["max_output_tokens"] = 512
    if not model.lower().startswith("gpt-5"):
        body["temperature"] = 0.1
    return body


def photoprism_reads(raw: bytes, status: int) -> str:
    """The caption as PhotoPrism's ``openaiParser.Parse`` (engine_openai.go) finds it, through the Go types
    of internal/ai/vision/openai/transport.go: ``Response{ID, Model, Output[]{Role, Content[]{Type, Text,
    JSON}}, Error{Message, Type}}``; a field of another type than those would fail Go's decoding. A
    refusal: ``openai.ParseErrorMessage``'s ``error.message``, raised."""
    if status >= 300:
        message = json.loads(raw)["error"]["message"]
        assert isinstance(message, str) and message.strip()
        raise ValueError(f"openai: {message.strip()}")
    answer = json.loads(raw)
    assert isinstance(answer["id"], str) and isinstance(answer["model"], str)
    assert answer.get("error") is None or not answer["error"].get("message")
    texts = []
    for output in answer["output"]:
        assert isinstance(output.get("role", ""), str)
        for content in output["content"]:
            assert isinstance(content["type"], str) and isinstance(content.get("text", ""), str)
            assert not content.get("json")  # FirstJSON: nothing; the caption is text
            texts.append(content.get("text", "").strip())
    text = next((t for t in texts if t), "")  # FirstText
    assert text and text[0] not in "{[", text  # read as JSON otherwise
    return text


def test_photoprisms_openai_request_gets_the_caption_where_photoprism_reads_it(
        service: Service, run_cli: RunCli, served_models: Path, three: list[Path], tmp_path: Path) -> None:
    expected = cli_records(run_cli, served_models, three[:2])
    for model, photo in (("fc_nsc", three[0]), ("gpt-5-mini", three[1])):
        answer = post_json(service, "/v1/responses", photoprism_request(model, data_url(photo)))
        assert answer.status == 200, answer.body
        assert photoprism_reads(answer.body, answer.status) == expected[photo.name]["caption"]
        assert answer.json()["model"] == model
    garbage = tmp_path / "thumb.jpg"
    garbage.write_bytes(b"\xff\xd8 not a jpeg" * 20)
    refused = post_json(service, "/v1/responses", photoprism_request("fc_nsc", data_url(garbage)))
    with pytest.raises(ValueError, match="is not an image"):
        photoprism_reads(refused.body, refused.status)


# The request parsing on its own (fast tier)
# ---------------------------------------------------------------------------------------------

IMAGE = data_url(SAMPLE)


def chat_body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": photo_message(IMAGE), **fields}).encode()


def test_the_decoding_options_a_request_maps_to() -> None:
    beam = DecodingOptions()
    asked = served.parse_chat(chat_body(n=3, max_tokens=7, temperature=0.5, seed=11), beam)
    assert asked.options == DecodingOptions(nbest=3, max_length=7, seed=11)  # temperature: beam search ignores it
    assert asked.image.data == SAMPLE.read_bytes() and asked.image.name == "messages[1].content[1].image_url.url"
    assert served.parse_chat(chat_body(max_tokens=512, max_completion_tokens=30), beam).options == beam
    sampling = DecodingOptions(beam_size=1, sample_method=SampleMethod("top_k", k=5))
    hot = served.parse_chat(chat_body(temperature=0.5, n=4), sampling).options
    assert (hot.temperature, hot.nbest) == (0.5, 4)
    assert served.parse_chat(chat_body(temperature=0), sampling).options.temperature == pytest.approx(1e-6)
    assert served.parse_chat(chat_body(max_tokens=30), DecodingOptions(max_length=40)).options.max_length == 30
    php = json.dumps({"model": "m", "max_output_tokens": 5, "input": [  # PHP's encoder writes "/" as "\/"
        {"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]}).replace("/", "\\/")
    responses = served.parse_responses(php.encode(), beam)
    assert responses.options == DecodingOptions(max_length=5) and responses.image.data == SAMPLE.read_bytes()
    assert served.max_choices(beam) == 5 and served.max_choices(sampling) == 1000


@pytest.mark.parametrize(("body", "words"), [
    (b"[]", "the body must be a JSON object"),
    # The service's JSON bounds hold here too, found by the scan before anything is built.
    (b'{"model": "m", "messages": ' + b"[" * 100_000, "the JSON is nested more than 32 deep"),
    (b"{" + b",".join(b'"k%d": 1' % i for i in range(20_000)) + b"}", "the JSON has more than 10000 keys and values"),
    (b'{"messages": []}', "model is required"),
    (b'{"model": "m"}', "messages must be a list"),
    (b'{"model": "m", "messages": [{"content": "hi"}]}', "messages[0].role is required"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}', "of type 'input_audio'"),
    (chat_body(n=0), "n must be a whole number from 1 to 1000"),
    (chat_body(n=True), "n must be a whole number"),
    (chat_body(max_tokens=0), "max_tokens must be a whole number of at least 1"),
    (chat_body(seed=-1), "seed must be a whole number from 0"),
    (chat_body(stream="yes"), "stream must be true or false"),
    (chat_body(stream_options=3), "stream_options must be an object"),
    (chat_body(response_format={"type": "json_object"}), "'json_object' is not served"),
    # A long string inside a refused value (set aside unparsed) is quoted by its size, not a 500.
    (chat_body(temperature={"a": "x" * 70_000}), 'temperature must be a number from 0 to 2, got {"a": "<a string of'),
    (json.dumps({"model": "m", "messages": photo_message("data:text/plain;base64,aGk=")}).encode(),
     "a data: URL of another type"),
    (json.dumps({"model": "m", "messages": photo_message("data:image/png;base64,%%%")}).encode(), "is not base64"),
    (json.dumps({"model": "m", "messages": photo_message("data:image/png;base64,")}).encode(), "is empty"),
])
def test_chat_refusals(body: bytes, words: str) -> None:
    with pytest.raises(RequestError) as refused:
        served.parse_chat(body, DecodingOptions())
    assert refused.value.status == 400 and words in refused.value.message, refused.value.message


@pytest.mark.parametrize(("fields", "words"), [
    ({"input": "Describe a cat"}, "holds no image"),
    ({"input": 3}, "input is required"),
    ({"input": [{"type": "function_call_output", "role": "user"}]}, "an item of type \"function_call_output\""),
    ({"stream": True}, "stream is not served on /v1/responses"),
    ({"text": {"format": {"type": "json_schema", "name": "caption", "schema": {}}}}, "'json_schema' is not served"),
    ({"instructions": 5}, "instructions must be a string"),
])
def test_responses_refusals(fields: dict[str, Any], words: str) -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}],
            **fields}
    with pytest.raises(RequestError) as refused:
        served.parse_responses(json.dumps(body).encode(), DecodingOptions())
    assert refused.value.status == 400 and words in refused.value.message, refused.value.message


def test_openai_paths_and_error_shape() -> None:
    assert served.is_openai_path("/v1/models") and served.is_openai_path("/v1/models/fc_nsc")
    assert served.is_openai_path("/v1/chat/completions") and not served.is_openai_path("/v1/captions")
    assert not served.is_openai_path("/v1/modelsx") and not served.is_openai_path("/api/generate")
    assert served.error_body(503, "busy") == {"error": {"message": "busy", "type": "server_error", "param": None,
                                                        "code": "service_unavailable"}}
    full = served.refusal(RequestError(503, "the queue is full (--queue-size); retry later", {"Retry-After": "3"}))
    assert full.status_code == 503 and full.headers["retry-after"] == "3"
    assert json.loads(bytes(full.body))["error"]["message"] == "the queue is full (--queue-size); retry later"
