"""Fetching one file over verified HTTPS into its final place, all or nothing.

A download goes to a dot-prefixed temporary file beside its destination, is checked, synced and
only then renamed over the destination, so an interrupted or bad transfer never looks like a
finished file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import urlsplit

from tqdm import tqdm

from utils.files.atomic import commit, create_temp_beside
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

# Seconds without any progress (connecting, or between two reads) before giving up.
TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20


def is_https(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "https"


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never onto plain HTTP: that would undo the point of using HTTPS."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not is_https(newurl):
            fp.close()
            raise urllib.error.URLError(f"refused a redirect to the non-https URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # The default context verifies the certificate chain and host name against the system trust
    # store; OpenSSL also honours SSL_CERT_FILE / SSL_CERT_DIR, which is how a private CA (or a
    # test's self-signed certificate) is trusted. There is deliberately no way to skip verification.
    context = ssl.create_default_context()
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects())


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _stream(response: http.client.HTTPResponse, out: BinaryIO, name: str, progress: bool) -> str:
    """Copy the body to ``out``; return its sha256. Raises CaptionError if it is cut short."""
    length = _content_length(response)
    digest = hashlib.sha256()
    received = 0
    with tqdm(
        total=length,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=None if progress else True,  # None: tqdm turns itself off when stderr is no TTY
    ) as bar:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    # http.client ends a body early without complaint when the connection closes, so only this
    # comparison tells a cut-off transfer from a finished one.
    if length is not None and received != length:
        raise CaptionError(f"transfer cut off after {received} of {length} bytes")
    return digest.hexdigest()


# Said when the network itself failed, so that a user behind a firewall knows the way around it.
_NETWORK_HINT = (
    "; check the network, or fetch the file elsewhere, put it in the model folder and use --offline"
)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        # urllib wraps connection failures (refused, TLS, connect timeout) around the real cause.
        if isinstance(error.reason, BaseException):
            return _reason(error.reason)
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return f"no data for {TIMEOUT_S:g} s (timed out)"
    if isinstance(error, http.client.HTTPException):
        return f"{type(error).__name__}: {error}".rstrip(": ")
    return str(error)


def download(url: str, dest: Path, check: Callable[[Path], None], progress: bool = True) -> str:
    """Fetch ``url`` to ``dest``; return the sha256 (hex) of what was saved.

    ``check`` gets the complete temporary file and raises CaptionError (whose message is the
    reason) if its content is unusable. On any failure, including KeyboardInterrupt, nothing is
    left behind and ``dest`` is untouched; failures other than KeyboardInterrupt and SystemExit
    surface as a CaptionError naming the file, the URL and the reason.
    """
    if not is_https(url):
        raise CaptionError(f"refusing to download {dest.name} from {url}: only https:// URLs are allowed")
    logger.info("downloading %s from %s", dest.name, url)
    try:
        fd, tmp = create_temp_beside(dest)
    except OSError as error:
        raise CaptionError(f"could not download {dest.name} from {url}: {error}") from error
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(
                url, headers={"User-Agent": "image_captioning_pytorch", "Accept-Encoding": "identity"}
            )
            with _opener().open(request, timeout=TIMEOUT_S) as response:
                digest = _stream(response, out, dest.name, progress)
            out.flush()
            logger.debug("checking the downloaded %s", dest.name)
            check(tmp)
            commit(out, tmp, dest)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, urllib.error.HTTPError):
            error.close()
        if isinstance(error, (CaptionError, OSError, http.client.HTTPException)):
            network = isinstance(error, (urllib.error.URLError, TimeoutError))
            hint = _NETWORK_HINT if network and not isinstance(error, urllib.error.HTTPError) else ""
            raise CaptionError(f"could not download {dest.name} from {url}: {_reason(error)}{hint}") from error
        raise
    return digest
