"""What the service is asked to do: where it listens, who may use it, and its limits (docs/service.md)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from utils.decoding.options import DecodingOptions

TOKEN_ENV = "IMAGE_CAPTIONING_TOKEN"
DEFAULT_HOST = "127.0.0.1"
MB = 2**20
DEFAULT_MAX_UPLOAD_MB = 25
MAX_UPLOAD_MB = 1024  # a JPEG of 134 megapixels, the decoding limit, is well under this
DEFAULT_QUEUE_SIZE = 32
MAX_QUEUE_SIZE = 10_000
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_CLIENT_TIMEOUT_S = 30.0
# Connections open at once (utils/service/protocol.py; beyond it a new request gets 503). Each costs a
# file descriptor and a few KB until the client timeout closes it.
MAX_CONNECTIONS = 512
# Request headers (line and fields together): 16 KiB, as uvicorn's default, and 100 fields, as Python's http.client.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_NAME_CHARS = 255  # an upload's file name, as echoed back in "input"


@dataclass(frozen=True)
class Address:
    host: str
    port: int  # 0: any free port

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach it ("localhost" or a loopback address)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/"


def parse_address(text: str) -> Address:
    """``[HOST:]PORT``; an IPv6 host in brackets (``[::1]:8080``). Raises ValueError with a one-line message."""
    match = re.fullmatch(r"(?:(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):)?(\d{1,5})", text.strip())
    if match is None or int(match.group(2)) > 65535:
        raise ValueError(f"must be [HOST:]PORT (PORT 0-65535; [::1]:PORT for IPv6), got {text[:80]!r}")
    host = (match.group(1) or DEFAULT_HOST).strip("[]")
    if match.group(1) and match.group(1).startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host[:80]!r} is not an IPv6 address") from None
    return Address(host, int(match.group(2)))


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a Bearer token, or None: a client must be able to send it in a header."""
    if not token:
        return "the token is empty"
    if not re.fullmatch(r"[!-~]+", token):
        return "the token must be printable ASCII without spaces"
    return None


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` is not a web origin (``scheme://host[:port]``, or ``*``), or None."""
    if origin == "*" or re.fullmatch(r"https?://[^/\s?#]+", origin):
        return None
    return f"{origin[:80]!r} is not an origin such as https://photos.example.com or http://localhost:8080"


@dataclass(frozen=True)
class ServiceOptions:
    """The service's settings; ``decoding`` is what a request gets unless its query says otherwise."""

    address: Address = field(default_factory=lambda: Address(DEFAULT_HOST, 8000))
    token: str | None = None  # None: anonymous (the command line allows that on loopback only)
    cors_origins: tuple[str, ...] = ()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MB
    queue_size: int = DEFAULT_QUEUE_SIZE  # requests waiting or being captioned at once
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # from a request's body received to its answer
    client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S  # for a client to send its request's headers, and its body
    max_connections: int = MAX_CONNECTIONS
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    access_log: bool = False  # --debug: one line per request

    def __post_init__(self) -> None:
        if self.token is not None and (problem := token_problem(self.token)) is not None:
            raise ValueError(problem)
        for origin in self.cors_origins:
            if (problem := origin_problem(origin)) is not None:
                raise ValueError(problem)
        if not 1 <= self.queue_size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue size must be between 1 and {MAX_QUEUE_SIZE}, got {self.queue_size}")
        if not 0 < self.max_upload_bytes <= MAX_UPLOAD_MB * MB:
            raise ValueError(f"the upload limit must be between 1 byte and {MAX_UPLOAD_MB} MB")
        for name in ("request_timeout_s", "client_timeout_s"):
            if not 0 < getattr(self, name) <= 24 * 3600:  # also refuses nan
                raise ValueError(f"{name} must be between 0 and a day, got {getattr(self, name)}")

    @property
    def shutdown_grace_s(self) -> float:
        """How long a graceful stop may wait for requests in flight: the longest any request can take
        (its body, then its caption), and a little more."""
        return self.client_timeout_s + self.request_timeout_s + 5.0
