"""Who may talk to the server, checked before any route runs (an ASGI middleware).

- ``Host`` must name this server (the bound address; for loopback also ``localhost`` and the
  loopback addresses; for a wildcard bind any IP address and this machine's names; plus
  ``allow_hosts``): a page on a foreign domain that rebinds its DNS to us is refused (403).
- A WebSocket whose ``Origin`` is not the server's own (its scheme, and the ``host:port`` of
  ``Host``) nor one of ``allow_origins`` is refused (403): browsers send ``Origin`` on every socket,
  so a foreign page cannot open one; ``null`` is refused. Clients that are not browsers send none.
- With a token, every route needs it: ``?token=`` (the page's first load answers with a redirect
  that drops it from the address bar and sets an HttpOnly SameSite=Strict cookie the page and its
  socket then carry), the cookie, or ``Authorization: Bearer``; compared in constant time (401).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["Guard", "allowed_hosts", "is_loopback", "normalise_origin"]

WILDCARD = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _ip(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    ip = _ip(host.strip("[]"))
    return host == "localhost" or (ip is not None and ip.is_loopback)


def allowed_hosts(bind: str, extra=()) -> tuple[frozenset[str], bool]:
    """(names the ``Host`` header may carry, whether any IP address is fine) for a server bound to ``bind``.

    An IP address in ``Host`` cannot come from DNS rebinding (that needs a name the attacker
    controls), so a wildcard bind accepts any; names must be listed.
    """
    bind = bind.strip("[]").lower()
    names = {bind, *(h.strip("[]").lower() for h in extra)}
    if is_loopback(bind) or bind in WILDCARD:
        names.update(LOOPBACK_NAMES)
    any_ip = bind in WILDCARD
    if any_ip:
        names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
    return frozenset(names - {""}), any_ip


_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{1,5}))?", re.IGNORECASE)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """'Host' or origin netloc 'name:port' / '[::1]:port' -> (lowercase name, port or None); None if it
    is anything else (paths, user info, spaces: no way to read it two ways)."""
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    return match[1].strip("[]").lower(), None if match[2] is None else int(match[2])


def normalise_origin(origin: str) -> str | None:
    """'HTTP://Example.com:80' -> 'http://example.com'; None for anything that is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or \
            parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()  # equal lengths: compare_digest leaks nothing


class Guard:
    """ASGI middleware: Host, Origin (sockets) and token checks in front of ``app``."""

    def __init__(self, app, *, bind: str, token: str | None = None, allow_origins=(), allow_hosts=()):
        self.app = app
        self.hosts, self.any_ip = allowed_hosts(bind, allow_hosts)
        self.origins = frozenset(normalise_origin(o) for o in allow_origins)
        if None in self.origins:
            from ..errors import InputError

            raise InputError(f"allowed origins must be http(s)://host[:port], got {list(allow_origins)}")
        self.token = None if token is None else _digest(token)
        # The cookie carries a digest, not the token: safe characters, and the token never sits on disk.
        self.cookie_value = None if token is None else hashlib.sha256(b"fgp cookie" + self.token).hexdigest()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope["headers"]:
            k, v = k.decode("latin-1").lower(), v.decode("latin-1")
            if k in headers and k in ("host", "origin", "authorization"):  # which one counts is ambiguous
                return await _refuse(scope, receive, send, 403, f"more than one {k.title()} header")
            headers[k] = f"{headers[k]}; {v}" if k == "cookie" and k in headers else v
        host = headers.get("host", "")
        if not self._host_ok(host):
            return await _refuse(scope, receive, send, 403, f"Host {host!r} is not a name this server answers to "
                                                            f"(add it with --allow-host)")
        if scope["type"] == "websocket" and not self._origin_ok(headers.get("origin"), host, scope):
            return await _refuse(scope, receive, send, 403, f"Origin {headers.get('origin')!r} may not open a "
                                                            f"socket here (add it with --allow-origin)")
        if self.token is None:
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        cookie = self._cookie_name(scope)
        given = [query.get("token"), _bearer(headers.get("authorization"))]
        from_cookie = _cookie(headers.get("cookie"), cookie)
        if not (any(t is not None and hmac.compare_digest(_digest(t), self.token) for t in given) or
                (from_cookie is not None and hmac.compare_digest(from_cookie.encode(), self.cookie_value.encode()))):
            return await _refuse(scope, receive, send, 401, "missing or wrong token: open the page as "
                                                            "/?token=... once (it sets a cookie)")
        if scope["type"] == "http" and scope["path"] == "/" and "token" in query:
            # The page's first load: keep the token in a cookie, out of the address bar and history.
            rest = urlencode([(k, v) for k, v in parse_qsl(scope["query_string"].decode("latin-1")) if k != "token"])
            return await _redirect(send, scope.get("root_path", "") + "/" + (f"?{rest}" if rest else ""),
                                   f"{cookie}={self.cookie_value}; Path=/; HttpOnly; SameSite=Strict")
        return await self.app(scope, receive, send)

    def _host_ok(self, value: str) -> bool:
        split = _split_host(value)
        if not split or not split[0]:
            return False
        name = split[0]
        return name in self.hosts or (self.any_ip and _ip(name) is not None)

    def _origin_ok(self, origin: str | None, host: str, scope) -> bool:
        if origin is None:
            return True  # not a browser: browsers send Origin with every WebSocket handshake
        origin = normalise_origin(origin)
        if origin is None:  # 'null' (sandboxed frames, files) and anything malformed
            return False
        if origin in self.origins:
            return True
        scheme, netloc = origin.split("://", 1)
        if scheme != ("https" if scope.get("scheme") == "wss" else "http"):  # a page served over the other one
            return False
        own, theirs = _split_host(host), _split_host(netloc)
        default = 80 if scheme == "http" else 443
        return own is not None and theirs is not None and \
            (own[0], own[1] or default) == (theirs[0], theirs[1] or default)

    @staticmethod
    def _cookie_name(scope) -> str:
        port = (scope.get("server") or (None, None))[1]
        return f"fgp_token_{port}" if port else "fgp_token"  # cookies ignore ports: one per server


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    try:
        morsel = SimpleCookie(header).get(name)
    except Exception:  # a malformed Cookie header is no token
        return None
    return morsel.value if morsel else None


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


async def _refuse(scope, receive, send, status: int, reason: str) -> None:
    body = reason.encode()
    if scope["type"] == "http":
        await _respond(send, "http.response", status, body)
    elif "websocket.http.response" in scope.get("extensions", {}):
        await receive()  # websocket.connect
        await _respond(send, "websocket.http.response", status, body)
    else:  # a server without denial responses answers a close before accept with 403
        await receive()
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})


async def _respond(send, prefix: str, status: int, body: bytes, headers=()) -> None:
    await send({"type": f"{prefix}.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": f"{prefix}.body", "body": body})


async def _redirect(send, location: str, cookie: str) -> None:
    await _respond(send, "http.response", 303, b"", [(b"location", location.encode("latin-1")),
                                                    (b"set-cookie", cookie.encode("latin-1")),
                                                    (b"cache-control", b"no-store")])
