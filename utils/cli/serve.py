"""The ``--serve`` flags (docs/service.md): the caption service, its limits and who may use it."""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import replace

from utils.cli import decoding, general
from utils.cli.arg_types import int_up_to, positive_number
from utils.engine.caption_types import CaptionerOptions
from utils.service.job import (
    DEFAULT_CLIENT_TIMEOUT_S,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_QUEUE_SIZE,
    MAX_UPLOAD_MB,
    MB,
    TOKEN_ENV,
    Address,
    ServiceOptions,
    origin_problem,
    parse_address,
    token_problem,
)
from utils.support.errors import CaptionError

# The web packages the service runs on, by the name they are imported as; requirements-serve.txt has them.
# Import name: package name.
SERVICE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart", "PIL": "Pillow"}


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("caption service (--serve; see docs/service.md)")
    g.add_argument("--serve", type=_address, default=None, metavar="[HOST:]PORT",
                   help="serve captions over HTTP at HOST (default 127.0.0.1) and PORT (0: any free port): an API, "
                        "Ollama- and OpenAI-compatible endpoints and a web page; the model, precision, workers and "
                        "decoding flags are its defaults")
    g.add_argument("--token", default=None, metavar="TOKEN",
                   help=f"require 'Authorization: Bearer TOKEN' on every request but /healthz (default: ${TOKEN_ENV}; "
                        "the variable keeps it out of the process list)")
    g.add_argument("--allow-anonymous", action="store_true",
                   help="serve on an address other machines reach without a token (refused otherwise)")
    g.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="let web pages from ORIGIN (https://host[:port], or *) call the API; repeat for several "
                        "(default: none)")
    g.add_argument("--max-upload-mb", type=int_up_to(MAX_UPLOAD_MB), default=None, metavar="MB",
                   help=f"largest request body (default {DEFAULT_MAX_UPLOAD_MB}); larger ones get 413")
    g.add_argument("--queue-size", type=int_up_to(MAX_QUEUE_SIZE), default=None, metavar="N",
                   help=f"requests waiting or being captioned at once (default {DEFAULT_QUEUE_SIZE}); more get 503 "
                        "with Retry-After")
    g.add_argument("--request-timeout", type=positive_number, default=None, metavar="SECONDS",
                   help="longest wait for a caption once the photo is received (default "
                        f"{DEFAULT_REQUEST_TIMEOUT_S:g}); then 504")
    g.add_argument("--client-timeout", type=positive_number, default=None, metavar="SECONDS",
                   help=f"time a client has to send a request's headers, and then its body (default "
                        f"{DEFAULT_CLIENT_TIMEOUT_S:g}); then the connection is closed, or 408")


def token(args: argparse.Namespace) -> str | None:
    return args.token if args.token is not None else os.environ.get(TOKEN_ENV)


def usage_error(args: argparse.Namespace) -> str | None:
    """The service's own rules; which flags go with --serve is utils/cli/modes.py's."""
    if args.serve is None:
        return None
    secret = token(args)
    if secret is not None and (problem := token_problem(secret)) is not None:
        return f"{'--token' if args.token is not None else TOKEN_ENV}: {problem}"
    for origin in args.cors_origin or ():
        if (problem := origin_problem(origin)) is not None:
            return f"--cors-origin: {problem}"
    if secret is None and not args.allow_anonymous and not args.serve.loopback:
        return (f"--serve {args.serve.host} is reachable from other machines: set a token (--token or {TOKEN_ENV}) "
                "or add --allow-anonymous")
    return None


def options(args: argparse.Namespace) -> ServiceOptions:
    return ServiceOptions(
        address=args.serve,
        token=token(args),
        cors_origins=tuple(args.cors_origin or ()),
        max_upload_bytes=(args.max_upload_mb or DEFAULT_MAX_UPLOAD_MB) * MB,
        queue_size=args.queue_size or DEFAULT_QUEUE_SIZE,
        request_timeout_s=args.request_timeout or DEFAULT_REQUEST_TIMEOUT_S,
        client_timeout_s=args.client_timeout or DEFAULT_CLIENT_TIMEOUT_S,
        decoding=decoding.options(args),
        access_log=args.debug,
    )


def run(args: argparse.Namespace, captioner: CaptionerOptions) -> int:
    missing = [package for name, package in SERVICE_MODULES.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise CaptionError(f"--serve needs {', '.join(missing)}: python3 -m pip install -r requirements-serve.txt")
    # Imported here: the web packages are loaded only when serving.
    from utils.service.run import serve

    return serve(options(args), replace(captioner, workers=general.workers(args)))
