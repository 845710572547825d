"""Who may talk to the server: the Host names it answers to, and the token it asks for.

On loopback (127.0.0.1, ::1, localhost) the server answers only to loopback Host names, so a
web page cannot rebind its DNS name to it, and needs no token. Bound to any other address
it needs a token: every /api request must carry `Authorization: Bearer TOKEN` (reads may go
without it only when `public_read` is set), and Host must be one of the bound names or an
`--allowed-host`. The web page sends the token it asked the user for; images it shows by URL
carry it as a cookie, which is accepted for reads only, so a cookie can never make a write.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOST_NAMES = ["127.0.0.1", "localhost", "::1"]
TOKEN_ENV = "LOOKALIKE_TOKEN"
TOKEN_COOKIE = "lookalike_token"
MIN_TOKEN_LENGTH = 16
_READ_METHODS = ("GET", "HEAD")
_WILDCARDS = ("", "0.0.0.0", "::")


class AccessError(ValueError):
    """The server cannot be started safely as asked (no token beyond loopback, a weak token)."""


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def bound_names(host: str) -> list[str]:
    """The Host names a server bound to `host` answers to: the address itself, or for a wildcard
    (0.0.0.0, ::) this machine's names and addresses."""
    if host not in _WILDCARDS:
        return [normalise_host(host)]
    names = set(LOOPBACK_HOST_NAMES)
    for name in (socket.gethostname(), socket.getfqdn()):
        if not name:
            continue
        names.add(normalise_host(name))
        with contextlib.suppress(OSError):
            names.update(normalise_host(info[4][0]) for info in socket.getaddrinfo(name, None))
    return sorted(names)


def normalise_host(value: str) -> str:
    """A Host header (or a name) without port, IPv6 brackets, trailing dot or case."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:  # name:8000 (a bare IPv6 address has several colons)
        value = value.split(":", 1)[0]
    return value.split("%", 1)[0].rstrip(".")


def check_token(token: str | None) -> str:
    if not token:
        raise AccessError(
            "serving beyond this machine needs an access token: set the environment variable "
            f"{TOKEN_ENV} (or pass --token), e.g. "
            f"{TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise AccessError(f"the access token must be at least {MIN_TOKEN_LENGTH} printable characters, no spaces")
    return token


async def _refuse(send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HostCheckMiddleware:
    """Refuses (400) a request whose Host header is not one of `allowed` (DNS rebinding, unknown names)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app = app
        self.allowed = {normalise_host(name) for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if normalise_host(host) not in self.allowed:
                await _refuse(send, 400, "invalid host header")
                return
        await self.app(scope, receive, send)


class TokenMiddleware:
    """Every /api request needs the token, except reads when `public_read` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str, public_read: bool = False):
        self.app = app
        self.token = token.encode()
        self.public_read = public_read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._needs_token(scope) and not self._has_token(scope):
            await _refuse(
                send, 401, "this server needs its access token (Authorization: Bearer TOKEN)",
                [(b"www-authenticate", b'Bearer realm="lookalike"')],
            )  # fmt: skip
            return
        await self.app(scope, receive, send)

    def _needs_token(self, scope: Scope) -> bool:
        path, method = scope["path"], scope["method"]
        if not path.startswith("/api/") or method == "OPTIONS":  # the page, its files, the API docs; preflights
            return False
        is_read = method in _READ_METHODS or (method == "POST" and path in ("/api/search", "/api/preview"))
        if path.startswith("/api/duplicates"):  # a listing may embed the whole collection under the write lock
            is_read = False
        return not (is_read and self.public_read)

    def _has_token(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers", []))
        scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token):
            return True
        if scope["method"] not in _READ_METHODS:
            return False  # a cookie travels with any request a browser makes: never enough to write
        cookie = _cookie(headers.get(b"cookie", b"").decode("latin-1"), TOKEN_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.token)


def _cookie(header: str, name: str) -> str | None:
    try:
        morsel = SimpleCookie(header).get(name)
    except CookieError:
        return None
    return unquote(morsel.value) if morsel is not None else None
