"""The inference and control server: a FastAPI app around one loaded model.

Routes (JSON unless said otherwise)::

    GET  /                  the dashboard (live telemetry charts, drift warnings, config, a
                            generation box)
    GET  /status            liveness, the model, uptime, requests served, generations running
    GET  /model_config      the model's ModelConfig, class, parameters, export metrics
    GET  /metrics           latest telemetry and drift warnings (?history=N: the last N points);
                            Prometheus text with ?format=prometheus or Accept: text/plain
    POST /generate          continue a prompt (causal or diffusion), safety-gated, limited
    POST /save_checkpoint   export the served model to <save_dir>/<name>      (bearer token)
    POST /telemetry         a training run publishes {step, metrics}           (bearer token)

Safe to expose: every body is validated by a pydantic model and limited in size; errors are
``{"error": …}`` without stack traces (those go to the server's log); mutating routes need
``Authorization: Bearer $BITLM_TOKEN`` and are refused when the server has no token; nothing a
client sends is ever executed, imported or used as a path beyond one validated folder name.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from importlib import resources
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitlm.errors import BitLMError, TimeLimitExceeded
from bitlm.hub import config_json, save_pretrained, stored_size
from bitlm.inference import generate_text
from bitlm.model import BitModel
from bitlm.safety import SafetyError
from bitlm.serve.schemas import GenerateRequest, SaveRequest, TelemetryReport
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
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)

    @app.middleware("http")
    async def count_and_secure(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        server.requests.labels(getattr(route, "path", "unmatched"), response.status_code).inc()
        response.headers.update(SECURITY_HEADERS)
        return response

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
    def status() -> dict[str, Any]:
        return server.status()

    @app.get("/model_config")
    def model_config() -> dict[str, Any]:
        return server.model_config()

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

    def status(self) -> dict[str, Any]:
        served = sum(
            sample.value
            for metric in self.requests.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        return {
            "status": "ok",
            "model": None if self.model is None else type(self.model).__name__,
            "source": self.source,
            "uptime_s": round(time.time() - self.started, 3),
            "requests": int(served),
            "generating": self.waiting,
            "training_step": self.telemetry.step,
            "token_required_for": ["/save_checkpoint", "/telemetry"],
            "mutating_routes_enabled": self.settings.token is not None,
        }

    def model_config(self) -> dict[str, Any]:
        model = self._model()
        meta = config_json(model)
        return {
            "class": type(model).__name__,
            "source": self.source,
            "parameters": sum(p.numel() for p in model.parameters()),
            "config": meta["model"],
            "quantization": meta.get("quantization"),
            "metrics": self.model_metrics,
            "limits": vars(self.settings.limits),
        }

    def metrics(self, history: int) -> dict[str, Any]:
        return self.telemetry.snapshot(history) | {"generation": self.last_generation}

    async def generate(self, body: GenerateRequest) -> dict[str, Any]:
        model = self._model()
        limits = self.settings.limits
        prompt, suffix = body.prompt.encode(), body.suffix.encode()
        if len(prompt) + len(suffix) > limits.max_prompt_bytes:
            raise HTTPException(
                413,
                f"prompt and suffix are {len(prompt) + len(suffix)} bytes; this server "
                f"takes at most {limits.max_prompt_bytes}",
            )
        if body.max_new_bytes > limits.max_new_bytes:
            raise HTTPException(
                422, f"max_new_bytes is at most {limits.max_new_bytes} on this server"
            )
        if self.waiting >= limits.max_concurrent + limits.max_queued:
            raise HTTPException(503, "the server is busy: retry shortly")
        started = time.monotonic()
        options = {
            "mode": body.mode,
            "top_p": body.top_p,
            "stop": body.stop.encode() if body.stop else None,
            "suffix": suffix,
            "diffusion_steps": body.diffusion_steps,
            "deadline": started + limits.timeout_s,
        }
        self.waiting += 1
        try:
            result = await anyio.to_thread.run_sync(
                lambda: generate_text(
                    model,
                    prompt,
                    body.max_new_bytes,
                    seed=body.seed,
                    temperature=body.temperature,
                    safety=self.settings.safety,
                    **options,
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
        if target.exists() and not body.overwrite:
            raise HTTPException(409, f"{body.name} exists; send overwrite: true to replace it")
        self.settings.save_dir.mkdir(parents=True, exist_ok=True)
        save_pretrained(model, target, metrics=self.model_metrics)
        return {"saved": body.name, "path": str(target), "bytes": stored_size(target)}

    def _model(self) -> BitModel:
        if self.model is None:
            raise HTTPException(503, "no model is loaded: start bitlm-serve with ckpt_path=…")
        return self.model


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


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length before reading, and
    by counting while reading for bodies sent without one (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True  # answer now; the app sees the client gone
                await _too_large(self.max_bytes)(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:  # the app's own answer to a body it never got whole
                await send(message)

        await self.app(scope, counted, unless_refused)


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse(
        {"error": f"request body over {max_bytes} bytes"}, 413, headers=SECURITY_HEADERS
    )


def _token_check(token: str | None):
    """A dependency: the request must carry ``Authorization: Bearer <token>``."""

    def require_token(authorization: str | None = Header(None)) -> None:
        if token is None:
            raise HTTPException(
                403, "this route is disabled: start bitlm-serve with BITLM_TOKEN set"
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    return require_token


def _wants_text(accept: str) -> bool:
    """A Prometheus scraper's Accept header (text/plain or OpenMetrics), not a browser's."""
    return ("text/plain" in accept or "openmetrics" in accept) and "json" not in accept


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": message}`` (plus ``details`` or ``telemetry`` where they
    help); unexpected ones are logged with their traceback and answered 500 without it."""

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

    @app.exception_handler(TimeLimitExceeded)
    async def too_slow(request: Request, err: TimeLimitExceeded) -> JSONResponse:
        return JSONResponse({"error": str(err)}, 504)

    @app.exception_handler(BitLMError)
    async def refused(request: Request, err: BitLMError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, 400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.exception("error answering %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error (details are in the server log)"}, 500)
