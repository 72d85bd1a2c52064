"""Outbound HTTP for Python handlers built against the world
``http-task-handler``: ``get(url)`` through ``wasi:http``, blocking.

The host sends a request only to the origins the handler is granted; a
refused request raises ``HttpError`` whose ``code`` is
``ErrorCode_HttpRequestDenied``.
"""

from typing import Any, Tuple

from componentize_py_types import Err
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as http


class HttpError(Exception):
    """A request failed; ``code`` is the wasi:http ``error-code`` (or None)."""

    def __init__(self, message: str, code: Any = None):
        super().__init__(message)
        self.code = code

    @property
    def denied(self) -> bool:
        return isinstance(self.code, http.ErrorCode_HttpRequestDenied)


def get(url: str) -> Tuple[int, bytes]:
    """GETs ``url``; returns the status and the body."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise HttpError(f"{url!r} is not an http(s) URL")
    authority, slash, path = rest.partition("/")
    request = http.OutgoingRequest(http.Fields())
    request.set_method(http.Method_Get())
    request.set_scheme(http.Scheme_Https() if scheme == "https" else http.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query(slash + path or "/")
    try:
        pending = outgoing_handler.handle(request, None)
    except Err as e:
        raise HttpError(f"GET {url}: {e.value}", e.value)
    pending.subscribe().block()
    got = pending.get()
    if got is None:
        raise HttpError(f"GET {url}: no response")
    if isinstance(got, Err):
        raise HttpError(f"GET {url}: the response was already taken")
    response = got.value
    if isinstance(response, Err):
        raise HttpError(f"GET {url}: {response.value}", response.value)
    response = response.value
    status = response.status()
    body = response.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(64 * 1024))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise HttpError(f"GET {url}: reading the body failed")
    return status, b"".join(chunks)
