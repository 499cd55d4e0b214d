"""What stands between a client and the routes: the ASGI middleware every request passes
through (``CountAndSecure``, ``HostCheck``, ``BodyLimit``), the bearer-token check of the
mutating routes, and the error answers, all ``{"error": …}`` (``add_error_handlers``).
The middleware is pure ASGI, not ``@app.middleware("http")`` (``CountAndSecure`` says why).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import anyio
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitlm.core.errors import BitLMError, TimeLimitExceeded
from bitlm.generation import SafetyError
from bitlm.serve.schemas import OverLimit

log = logging.getLogger("bitlm.serve")

# the dashboard loads nothing from elsewhere and runs no inline script
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class CountAndSecure:
    """Count every response (``bitlm_requests_total`` by route and status), add
    ``SECURITY_HEADERS`` to it, and answer an unexpected error 500 ``{"error": …}`` (its
    traceback goes to the log). Pure ASGI and added last, so it wraps everything the app
    answers: an ``@app.middleware("http")`` misses the 500s of Starlette's catch-all handler,
    which answers outside every user middleware."""

    def __init__(self, app: ASGIApp, requests: Counter) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def counted(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
                route = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(route, message["status"]).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            if started:  # an answer is under way and cannot become a 500: uvicorn closes it
                raise
            log.exception("error answering %s %s", scope["method"], scope["path"])
            message = "internal server error (details are in the server log)"
            await _error(500, message)(scope, receive, counted)


class HostCheck:
    """Refuse a request whose Host header is not in ``allowed_hosts`` with 400 ``{"error": …}``:
    a page from another site that re-points its name at this machine (DNS rebinding) still
    sends that name. The check is Starlette's ``TrustedHostMiddleware``, run on an app that
    does nothing; only its plain-text refusal is replaced, by JSON."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.check = TrustedHostMiddleware(_nothing, list(allowed_hosts), www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = False

        async def refusal(message: Message) -> None:  # only a refusal sends: _nothing does not
            nonlocal refused
            refused = True

        await self.check(scope, receive, refusal)
        if not refused:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")[:100]
        error = f"this server does not answer to the host {host!r} (its allowed_hosts)"
        await _error(400, error)(scope, receive, send)


async def _nothing(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app that answers nothing (``HostCheck``'s probe)."""


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length before reading, and
    by counting while reading for bodies sent without one (chunked); and bodies not received
    whole within ``timeout_s`` of the request's arrival with 408, so that a client stalling
    mid-body cannot hold a connection and a worker forever."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _error(413, f"request body over {self.max_bytes} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await too_large(scope, receive, send)
        deadline = anyio.current_time() + self.timeout_s
        seen, whole, refused = 0, False, False

        async def refuse(response: Response) -> Message:
            nonlocal refused
            refused = True  # answer now; the app sees the client gone
            await response(scope, receive, send)
            return {"type": "http.disconnect"}

        async def limited() -> Message:
            nonlocal seen, whole
            if refused:
                return {"type": "http.disconnect"}
            if whole:  # the body is in: what follows (a disconnect) may take any time
                return await receive()
            try:
                with anyio.fail_after(deadline - anyio.current_time()):
                    message = await receive()
            except TimeoutError:
                slow = f"the request body did not arrive within {self.timeout_s:g} s"
                return await refuse(_error(408, slow))
            whole = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            return await refuse(too_large) if seen > self.max_bytes else message

        async def unless_refused(message: Message) -> None:
            if not refused:  # the app's own answer to a body it never got whole
                await send(message)

        await self.app(scope, limited, unless_refused)


def _error(status: int, message: str) -> JSONResponse:
    """The answer of a middleware that refuses a request (the routes raise HTTPException)."""
    return JSONResponse({"error": message}, status)


def token_check(token: str | None):
    """A dependency: the request must carry ``Authorization: Bearer <token>``."""

    def require_token(authorization: str | None = Header(None)) -> None:
        if token is None:
            raise HTTPException(
                403, "this route is disabled: start bitlm-serve with BITLM_TOKEN set"
            )
        if not bearer(token, authorization):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    return require_token


def bearer(token: str | None, authorization: str | None) -> bool:
    """Whether the Authorization header is ``Bearer <token>`` (never when there is no token)."""
    scheme, _, given = (authorization or "").partition(" ")
    return (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.encode(), token.encode())
    )


def add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": message}`` (plus ``details`` or ``telemetry`` where they
    help), on the OpenAI-style ``/v1/`` routes ``{"error": {"message", "type", "code", …}}`` as
    the OpenAI clients read it; unexpected ones are ``CountAndSecure``'s 500."""

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, and the router's 404 / 405
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_answer(request, err.status_code, err.detail, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in err.errors()
        ]
        return error_answer(request, 422, "invalid request", details=details)

    @app.exception_handler(SafetyError)
    async def unsafe(request: Request, err: SafetyError) -> JSONResponse:
        return error_answer(request, 422, str(err), telemetry=err.telemetry)

    @app.exception_handler(OverLimit)
    async def over_limit(request: Request, err: OverLimit) -> JSONResponse:
        return error_answer(request, err.status, str(err))

    @app.exception_handler(TimeLimitExceeded)
    async def too_slow(request: Request, err: TimeLimitExceeded) -> JSONResponse:
        return error_answer(request, 504, str(err))

    @app.exception_handler(BitLMError)
    async def refused(request: Request, err: BitLMError) -> JSONResponse:
        return error_answer(request, 400, str(err))


def error_answer(
    request: Request, status: int, message: str, headers=None, **extra: Any
) -> JSONResponse:
    """``{"error": message, **extra}``; for a ``/v1/`` route the OpenAI shape, the details (if
    any) joined into the message."""
    if not request.url.path.startswith("/v1/"):
        return JSONResponse({"error": message, **extra}, status, headers=headers)
    details = extra.pop("details", None)
    if details:
        message += ": " + "; ".join(f"{d['field']} {d['message']}" for d in details)
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"message": message, "type": kind, "param": None, "code": status, **extra}
    return JSONResponse({"error": body}, status, headers=headers)
