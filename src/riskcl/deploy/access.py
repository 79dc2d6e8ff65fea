"""Who may ask the service: bearer tokens of named clients, and limits per client (standard library only).

``riskcl serve-token add NAME --tokens FILE`` prints a new token once and stores only a salted hash of it
(HMAC-SHA256 with a random salt per client; a token is 256 random bits, so no slow hash is needed to resist
guessing); ``revoke NAME`` and ``list`` likewise. The file is written owner-readable only and read again when it
changes, so a revocation takes effect without a restart. :class:`AccessControl` (an ASGI middleware) answers 401
without a valid token (``WWW-Authenticate: Bearer``), 403 for a revoked one, and 429 with ``Retry-After`` when a
client exceeds its requests per minute or its concurrent requests, before the request body is read; tokens are
compared in constant time and never logged. The paths in ``public`` (the liveness and readiness probes, the page
itself, which holds no data and asks for the token) need none.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

FRAMING = 64 * 1024  # multipart headers and boundaries around the image: allowed beyond the upload limit
TOKEN_PREFIX = "rk_"
ANONYMOUS = "anonymous"  # the client name when the service runs without tokens (loopback, or --no-auth)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(salt: str, token: str) -> str:
    return hmac.new(bytes.fromhex(salt), token.encode("utf-8"), hashlib.sha256).hexdigest()


def read_tokens(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{name: {salt, hash, created, revoked}}`` of a token file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--tokens {path}: no such file (create it with `riskcl serve-token add NAME "
                                f"--tokens {path}`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        clients = data["clients"]
        assert isinstance(clients, dict) and all({"salt", "hash"} <= set(v) for v in clients.values())
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"--tokens {path}: not a riskcl token file (expected {{\"clients\": {{name: {{salt, hash, "
                         f"...}}}}}})") from None
    return clients


def _write_tokens(path: Path, clients: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"riskcl_tokens": 1, "clients": clients}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def add_token(path: str | os.PathLike, name: str) -> str:
    """A new token for client ``name`` (returned once; only its salted hash is stored)."""
    path = Path(path)
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"Expected a client name of letters, digits, '-', '_' or '.', but got {name!r}")
    clients = read_tokens(path) if path.is_file() else {}
    if name in clients and not clients[name].get("revoked"):
        raise ValueError(f"{path}: client '{name}' already has a token (revoke it first to issue another)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    clients[name] = {"salt": salt, "hash": _digest(salt, token), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "revoked": None}
    _write_tokens(path, clients)
    return token


def revoke_token(path: str | os.PathLike, name: str) -> None:
    path = Path(path)
    clients = read_tokens(path)
    if name not in clients:
        raise ValueError(f"{path}: no client '{name}' (it has {sorted(clients)})")
    clients[name]["revoked"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_tokens(path, clients)


def list_tokens(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per client: name, created, revoked (never a hash or a token)."""
    return [{"client": name, "created": v.get("created"), "revoked": v.get("revoked")}
            for name, v in sorted(read_tokens(path).items())]


class TokenFile:
    """The token file as the service checks it (re-read when it changes on disk)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.clients = read_tokens(self.path)
        self.mtime = self.path.stat().st_mtime_ns
        self.lock = threading.Lock()

    def _fresh(self) -> dict[str, dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return self.clients  # a file being replaced: the last good copy
        if mtime != self.mtime:
            with self.lock:
                try:
                    self.clients, self.mtime = read_tokens(self.path), mtime
                except (OSError, ValueError):
                    pass
        return self.clients

    def check(self, token: str) -> tuple[str | None, bool]:
        """``(client name, revoked)`` of a presented token, or ``(None, False)``; every client is compared (in
        constant time), so the time taken does not say which one nearly matched."""
        found, revoked = None, False
        for name, v in self._fresh().items():
            if hmac.compare_digest(_digest(v["salt"], token), v["hash"]):
                found, revoked = name, bool(v.get("revoked"))
        return found, revoked

    @property
    def active(self) -> int:
        return sum(not v.get("revoked") for v in self._fresh().values())


class ClientLimits:
    """Requests per minute and concurrent requests per client (None: no limit)."""

    def __init__(self, per_minute: int | None = None, concurrent: int | None = None) -> None:
        self.per_minute, self.concurrent = per_minute, concurrent
        self.recent: dict[str, deque] = {}
        self.running: dict[str, int] = {}
        self.lock = threading.Lock()

    def enter(self, client: str) -> float | None:
        """None when ``client`` may go on (call :meth:`leave` when done), else the seconds to wait."""
        now = time.monotonic()
        with self.lock:
            if self.concurrent is not None and self.running.get(client, 0) >= self.concurrent:
                return 1.0
            if self.per_minute is not None:
                q = self.recent.setdefault(client, deque())
                while q and now - q[0] >= 60.0:
                    q.popleft()
                if len(q) >= self.per_minute:
                    return max(0.0, 60.0 - (now - q[0]))
                q.append(now)
            self.running[client] = self.running.get(client, 0) + 1
            return None

    def leave(self, client: str) -> None:
        with self.lock:
            self.running[client] = max(0, self.running.get(client, 0) - 1)


class AccessControl:
    """ASGI middleware: the token (when ``tokens``), then the client's limits; sets ``scope["state"]["client"]``."""

    def __init__(self, app, tokens: TokenFile | None, limits: ClientLimits, public: frozenset[str]) -> None:
        self.app, self.tokens, self.limits, self.public = app, tokens, limits, public

    async def _answer(self, send, status: int, message: str, headers: list | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})
        if scope["path"] in self.public:
            scope["state"]["client"] = ANONYMOUS
            return await self.app(scope, receive, send)
        client = ANONYMOUS
        if self.tokens is not None:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return await self._answer(send, 401, "a bearer token is required (Authorization: Bearer <token>)",
                                          [(b"www-authenticate", b"Bearer")])
            name, revoked = self.tokens.check(token.strip())
            if name is None:
                return await self._answer(send, 401, "the token is not valid", [(b"www-authenticate", b"Bearer")])
            if revoked:
                return await self._answer(send, 403, f"the token of client '{name}' was revoked")
            client = name
        wait = self.limits.enter(client)
        if wait is not None:
            return await self._answer(send, 429, f"too many requests from client '{client}'; retry in "
                                                 f"{max(1, round(wait))} s", [(b"retry-after",
                                                                              str(max(1, round(wait))).encode())])
        scope["state"]["client"] = client
        try:
            await self.app(scope, receive, send)
        finally:
            self.limits.leave(client)


class UploadTooLarge(Exception):
    """The request body grew past the upload limit while it was received."""


class UploadLimit:
    """ASGI middleware that enforces the upload limit while the body streams in: a declared Content-Length over
    the limit is answered 413 before any byte is read, and a body without one (chunked) is cut off at the limit,
    so no more than the limit is ever received or spooled to disk."""

    def __init__(self, app, limit: int, limit_mb: float) -> None:
        self.app, self.limit, self.limit_mb = app, limit, limit_mb

    async def _reject(self, send, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit + FRAMING:
            return await self._reject(send, f"upload of {int(declared) / 2**20:.1f} MB exceeds the limit of "
                                            f"{self.limit_mb:g} MB")
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit + FRAMING:
                    state["over"] = True
                    raise UploadTooLarge()
            return message

        async def guarded_send(message):
            if state["over"]:  # the app's answer to the cut body is replaced by the 413
                return
            state["started"] |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge:
            pass
        if state["over"] and not state["started"]:
            await self._reject(send, f"upload exceeds the limit of {self.limit_mb:g} MB")
