"""The inference and control server: a FastAPI app around one loaded model.

Routes (JSON unless said otherwise)::

    GET  /                  the dashboard (live telemetry charts, drift warnings, config, a
                            generation box)
    GET  /status            liveness, the model, uptime, requests served, generations running
    GET  /model_config      the model's ModelConfig, class, parameters, export metrics, limits
    GET  /metrics           latest telemetry and drift warnings (?history=N: the last N points);
                            Prometheus text with ?format=prometheus or Accept: text/plain
    POST /generate          continue a prompt (causal or diffusion), safety-gated, limited
    POST /save_checkpoint   export the served model to <save_dir>/<name>      (bearer token)
    POST /telemetry         a training run publishes {step, metrics}           (bearer token)

Safe to expose: every body is validated by a pydantic model (text included: it must have a
UTF-8 encoding), limited in size (413) and in the time it may take to arrive (408); errors are
``{"error": …}`` without stack traces (those go to the server's log); every response, errors
and 500s included, is counted and carries ``SECURITY_HEADERS``; a Host header outside
``allowed_hosts`` is refused (400), so a web page cannot reach a loopback server by DNS
rebinding; mutating routes need ``Authorization: Bearer $BITLM_TOKEN`` and are refused when the
server has no token; the model's local path (``source`` in /status and /model_config) is shown
only with that token (``null`` without it; a Hub id ``hf://…`` is shown to anyone); nothing a
client sends is ever executed, imported or used as a path beyond one validated folder name, and
``/save_checkpoint`` replaces only an earlier bitlm export, never anything else of that name.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitlm.core.errors import BitLMError, TimeLimitExceeded
from bitlm.generation.safety import SafetyError
from bitlm.generation.text import generate_text
from bitlm.io import HUB_PREFIX, config_json, read_config, save_pretrained, stored_size
from bitlm.model import BitModel
from bitlm.serve.schemas import GenerateRequest, OverLimit, SaveRequest, TelemetryReport
from bitlm.serve.state import Settings, TelemetryStore

log = logging.getLogger("bitlm.serve")

STATIC = resources.files("bitlm.serve") / "static"
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# the dashboard loads nothing from elsewhere and runs no inline script
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    model: BitModel | None,
    settings: Settings,
    source: str | None = None,
    model_metrics: dict[str, float] | None = None,
) -> FastAPI:
    """The app serving ``model`` (None: telemetry and dashboard only; /generate answers 503)
    loaded from ``source``, whose export recorded ``model_metrics`` (shown by /model_config,
    kept by /save_checkpoint)."""
    app = FastAPI(
        title="bitlm-serve",
        summary="Bit-native language model: generation, telemetry, dashboard",
        docs_url="/docs",
        redoc_url=None,
    )
    server = Server(model, settings, source, model_metrics or {})
    app.state.server = server
    _add_error_handlers(app)
    limits = settings.limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(CountAndSecure, server=server)  # added last: the outermost, sees all

    require_token = _token_check(settings.token)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES:  # a fixed set: no path from the client reaches the disk
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_text(), media_type=STATIC_FILES[name])

    @app.get("/status")
    def status(authorization: str | None = Header(None)) -> dict[str, Any]:
        return server.status(_bearer(settings.token, authorization))

    @app.get("/model_config")
    def model_config(authorization: str | None = Header(None)) -> dict[str, Any]:
        return server.model_config(_bearer(settings.token, authorization))

    @app.get("/metrics")
    def metrics(request: Request, history: int = 0, format: str | None = None) -> Response:
        if format not in (None, "json", "prometheus"):
            raise HTTPException(400, "format must be json or prometheus")
        accept = request.headers.get("accept", "")
        if format == "prometheus" or (format is None and _wants_text(accept)):
            return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)
        if not 0 <= history <= settings.history:
            raise HTTPException(400, f"history must be in [0, {settings.history}]")
        return JSONResponse(server.metrics(history))

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        return await server.generate(body)

    @app.post("/save_checkpoint", dependencies=[Depends(require_token)])
    def save_checkpoint(body: SaveRequest) -> dict[str, Any]:
        return server.save(body)

    @app.post("/telemetry", dependencies=[Depends(require_token)])
    def telemetry(body: TelemetryReport) -> dict[str, Any]:
        server.telemetry.add(body.step, body.metrics)
        return {"accepted": len(body.metrics), "step": body.step}

    return app


class Server:
    """The state behind the routes: the model, the telemetry store, counters, the limiter."""

    def __init__(
        self,
        model: BitModel | None,
        settings: Settings,
        source: str | None,
        model_metrics: dict[str, float],
    ) -> None:
        self.model = model
        self.settings = settings
        self.source = source
        self.model_metrics = model_metrics
        self.started = time.time()
        self.telemetry = TelemetryStore(settings)
        self.limiter = anyio.CapacityLimiter(settings.limits.max_concurrent)
        self.waiting = 0  # generations admitted and not finished (running or queued)
        self.last_generation: dict[str, Any] | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bitlm_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bitlm_generate_seconds",
            "Time to answer /generate (queueing included)",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.registry.register(_TelemetryCollector(self))

    def status(self, authorized: bool) -> dict[str, Any]:
        """Liveness and counters; ``source`` as ``shown_source(authorized)``."""
        served = sum(
            sample.value
            for metric in self.requests.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        return {
            "status": "ok",
            "model": None if self.model is None else type(self.model).__name__,
            "source": self.shown_source(authorized),
            "uptime_s": round(time.time() - self.started, 3),
            "requests": int(served),
            "generating": self.waiting,
            "training_step": self.telemetry.step,
            "token_required_for": ["/save_checkpoint", "/telemetry"],
            "mutating_routes_enabled": self.settings.token is not None,
        }

    def model_config(self, authorized: bool) -> dict[str, Any]:
        """The model's config, size, export metrics and the limits; ``source`` as
        ``shown_source(authorized)``."""
        model = self._model()
        meta = config_json(model)
        return {
            "class": type(model).__name__,
            "source": self.shown_source(authorized),
            "parameters": sum(p.numel() for p in model.parameters()),
            "config": meta["model"],
            "quantization": meta.get("quantization"),
            "metrics": self.model_metrics,
            "limits": vars(self.settings.limits),
        }

    def shown_source(self, authorized: bool) -> str | None:
        """Where the model was loaded from, for a client ``authorized`` by the bearer token; for
        others None unless it is a Hub id: a local path tells about the server's disk."""
        if authorized or (self.source or "").startswith(HUB_PREFIX):
            return self.source
        return None

    def metrics(self, history: int) -> dict[str, Any]:
        return self.telemetry.snapshot(history) | {"generation": self.last_generation}

    async def generate(self, body: GenerateRequest) -> dict[str, Any]:
        model = self._model()
        limits = self.settings.limits
        body.check_limits(limits)
        if self.waiting >= limits.max_concurrent + limits.max_queued:
            raise HTTPException(503, "the server is busy: retry shortly")
        started = time.monotonic()
        self.waiting += 1
        try:
            result = await anyio.to_thread.run_sync(
                lambda: generate_text(
                    model,
                    body.prompt.encode(),
                    body.max_new_bytes,
                    safety=self.settings.safety,
                    deadline=started + limits.timeout_s,
                    **body.sampling_options(),
                ),
                limiter=self.limiter,
            )
        finally:
            self.waiting -= 1
            self.latency.observe(time.monotonic() - started)
        result["seconds"] = round(time.monotonic() - started, 4)
        self.last_generation = {
            "bytes": result["bytes"],
            "seconds": result["seconds"],
            "telemetry": result.get("telemetry"),
        }
        return result

    def save(self, body: SaveRequest) -> dict[str, Any]:
        model = self._model()
        target = self.settings.save_dir / body.name
        if target.exists() or target.is_symlink():
            _check_replaceable(target, body.overwrite)
        self.settings.save_dir.mkdir(parents=True, exist_ok=True)
        save_pretrained(model, target, metrics=self.model_metrics)
        return {"saved": body.name, "path": str(target), "bytes": stored_size(target)}

    def _model(self) -> BitModel:
        if self.model is None:
            raise HTTPException(503, "no model is loaded: start bitlm-serve with ckpt_path=…")
        return self.model


def _check_replaceable(target: Path, overwrite: bool) -> None:
    """409 unless the existing ``target`` may be replaced: ``overwrite`` was asked for and it is
    an earlier bitlm export (``read_config`` accepts it). Anything else of that name (a user's
    folder, a file, a link) is not the server's to delete."""
    if not overwrite:
        raise HTTPException(409, f"{target.name} exists; send overwrite: true to replace it")
    if target.is_symlink() or not _is_export(target):
        raise HTTPException(
            409, f"{target.name} exists and is not a bitlm export: it will not be replaced"
        )


def _is_export(path: Path) -> bool:
    """Whether ``path`` is a folder whose config.json is a bitlm config."""
    try:
        read_config(path)
    except BitLMError:
        return False
    return True


class _TelemetryCollector:
    """Prometheus view of the telemetry, read at scrape time: ``bitlm_telemetry{metric=…}``
    (the latest published value of each metric), ``bitlm_training_step``,
    ``bitlm_drift_warnings`` and ``bitlm_generations_running``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self):
        snapshot = self.server.telemetry.snapshot(0)
        values = GaugeMetricFamily(
            "bitlm_telemetry", "Latest published value of a training metric", labels=["metric"]
        )
        for name, value in sorted(snapshot["latest"].items()):
            values.add_metric([name], value)
        yield values
        step = snapshot["step"]
        yield GaugeMetricFamily(
            "bitlm_training_step",
            "Step of the latest telemetry report",
            value=math.nan if step is None else step,
        )
        yield GaugeMetricFamily(
            "bitlm_drift_warnings", "Drift warnings raised", value=len(snapshot["warnings"])
        )
        yield GaugeMetricFamily(
            "bitlm_generations_running",
            "Generations running or queued",
            value=self.server.waiting,
        )


class CountAndSecure:
    """Count every response (``bitlm_requests_total`` by route and status), add
    ``SECURITY_HEADERS`` to it, and answer an unexpected error 500 ``{"error": …}`` (its
    traceback goes to the log). Pure ASGI and added last, so it wraps everything the app
    answers: an ``@app.middleware("http")`` misses the 500s of Starlette's catch-all handler,
    which answers outside every user middleware."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

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
                self.server.requests.labels(route, message["status"]).inc()
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


def _token_check(token: str | None):
    """A dependency: the request must carry ``Authorization: Bearer <token>``."""

    def require_token(authorization: str | None = Header(None)) -> None:
        if token is None:
            raise HTTPException(
                403, "this route is disabled: start bitlm-serve with BITLM_TOKEN set"
            )
        if not _bearer(token, authorization):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    return require_token


def _bearer(token: str | None, authorization: str | None) -> bool:
    """Whether the Authorization header is ``Bearer <token>`` (never when there is no token)."""
    scheme, _, given = (authorization or "").partition(" ")
    return (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.encode(), token.encode())
    )


def _wants_text(accept: str) -> bool:
    """A Prometheus scraper's Accept header (text/plain or OpenMetrics), not a browser's."""
    return ("text/plain" in accept or "openmetrics" in accept) and "json" not in accept


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": message}`` (plus ``details`` or ``telemetry`` where they
    help); unexpected ones are ``CountAndSecure``'s 500."""

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, and the router's 404 / 405
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": err.detail}, err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in err.errors()
        ]
        return JSONResponse({"error": "invalid request", "details": details}, 422)

    @app.exception_handler(SafetyError)
    async def unsafe(request: Request, err: SafetyError) -> JSONResponse:
        return JSONResponse({"error": str(err), "telemetry": err.telemetry}, 422)

    @app.exception_handler(OverLimit)
    async def over_limit(request: Request, err: OverLimit) -> JSONResponse:
        return JSONResponse({"error": str(err)}, err.status)

    @app.exception_handler(TimeLimitExceeded)
    async def too_slow(request: Request, err: TimeLimitExceeded) -> JSONResponse:
        return JSONResponse({"error": str(err)}, 504)

    @app.exception_handler(BitLMError)
    async def refused(request: Request, err: BitLMError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, 400)
