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
    GET  /v1/models         the OpenAI-style model list (serve/completions.py)
    POST /v1/completions    OpenAI-style completions, streamed or not

Causal generations decode together in one running batch (``bitlm.generation.engine``): a
request joins at the next byte and leaves when done, ``limits.max_concurrent`` at once and
``limits.max_queued`` more waiting (then 503); ``"stream": true`` answers with server-sent
events as the bytes are made.

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

import asyncio
import codecs
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, generate_text, sampling_mode
from bitlm.generation.engine import Engine
from bitlm.generation.text import streamed_report
from bitlm.io import HUB_PREFIX, config_json, read_config, save_pretrained, stored_size
from bitlm.model import BitModel
from bitlm.serve.completions import add_completion_routes
from bitlm.serve.events import event_stream, guarded, sse
from bitlm.serve.middleware import (
    BodyLimit,
    CountAndSecure,
    HostCheck,
    add_error_handlers,
    bearer,
    token_check,
)
from bitlm.serve.schemas import GenerateRequest, SaveRequest, TelemetryReport
from bitlm.serve.settings import Settings
from bitlm.serve.state import TelemetryStore

STATIC = resources.files("bitlm.serve") / "static"
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def create_app(
    model: BitModel | None,
    settings: Settings,
    source: str | None = None,
    model_metrics: dict[str, float] | None = None,
) -> FastAPI:
    """The app serving ``model`` (None: telemetry and dashboard only; /generate answers 503)
    loaded from ``source``, whose export recorded ``model_metrics`` (shown by /model_config,
    kept by /save_checkpoint)."""
    server = Server(model, settings, source, model_metrics or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if server.engine is not None:  # shutdown: end the decoding thread
            server.engine.close()

    app = FastAPI(
        title="bitlm-serve",
        summary="Bit-native language model: generation, telemetry, dashboard",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    add_error_handlers(app)
    limits = settings.limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(CountAndSecure, requests=server.requests)  # added last: the outermost
    _add_routes(app, server)
    return app


def _add_routes(app: FastAPI, server: Server) -> None:
    """The routes of the module docstring, each answered by ``server``."""
    settings = server.settings
    require_token = token_check(settings.token)

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
        return server.status(bearer(settings.token, authorization))

    @app.get("/model_config")
    def model_config(authorization: str | None = Header(None)) -> dict[str, Any]:
        return server.model_config(bearer(settings.token, authorization))

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
    async def generate(body: GenerateRequest) -> Any:
        if body.stream:
            return await server.stream(body)
        return await server.generate(body)

    @app.post("/save_checkpoint", dependencies=[Depends(require_token)])
    def save_checkpoint(body: SaveRequest) -> dict[str, Any]:
        return server.save(body)

    add_completion_routes(app, server)

    @app.post("/telemetry", dependencies=[Depends(require_token)])
    def telemetry(body: TelemetryReport) -> dict[str, Any]:
        server.telemetry.add(body.step, body.metrics)
        return {"accepted": len(body.metrics), "step": body.step}


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
        limits = settings.limits
        self.engine = Engine(model, limits.max_concurrent) if model is not None else None
        # worker threads wait on the engine (or sample a diffusion model): one per admitted one
        self.limiter = anyio.CapacityLimiter(limits.max_concurrent + limits.max_queued)
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
        model = self.served_model()
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
        """The answer to a /generate request: one safety-gated sample (``generate_text``)
        through the engine."""
        model = self.served_model()
        body.check_limits(self.settings.limits)
        with self.admitted() as deadline:
            options = body.generation_options(deadline=deadline)
            result = await self.generate_text(
                model, body.prompt.encode(), body.max_new_bytes, options
            )
        self.last_generation = {
            "bytes": result["bytes"],
            "seconds": result["seconds"],
            "telemetry": result.get("telemetry"),
        }
        return result

    async def generate_text(
        self, model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions
    ) -> dict[str, Any]:
        """``generate_text`` in a worker thread, its draws through the engine, timed."""
        started = time.monotonic()
        result = await anyio.to_thread.run_sync(
            lambda: generate_text(
                model,
                prompt,
                max_new_bytes,
                options,
                safety=self.settings.safety,
                draw=self.engine.sample,
            ),
            limiter=self.limiter,
        )
        result["seconds"] = round(time.monotonic() - started, 4)
        return result

    async def follow(
        self, model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions
    ) -> AsyncIterator[str | dict[str, Any]]:
        """Stream one generation: its text as the engine settles it (UTF-8 decoded
        incrementally, so a character split across bytes arrives whole), then the final report
        (``streamed_report``). What was sent cannot be taken back, so a streamed sample is judged
        by the safety gate once, at the end, and never re-sampled. A diffusion model fills its
        span at once: one piece."""
        started = time.monotonic()
        if sampling_mode(model, options.mode) != "causal":
            result = await self.generate_text(model, prompt, max_new_bytes, options)
            yield result.pop("text")
            yield result | {"finish_reason": "length"}
            return
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()

        def progress(settled: bytes, done: bool) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, (settled, done))

        job = self.engine.submit(prompt, max_new_bytes, options, progress)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sent, done = 0, False
        try:
            while not done:
                settled, done = await updates.get()
                while not updates.empty():  # a slow reader gets what piled up as one piece
                    settled, done = updates.get_nowait()
                piece = decoder.decode(settled[sent:], final=done)
                sent = max(sent, len(settled))
                if piece:
                    yield piece
            sample = job.result()
        finally:
            job.cancel()  # a client that went away frees its row at the next step
        report = await anyio.to_thread.run_sync(
            lambda: streamed_report(model, sample.bits, self.settings.safety)
        )
        yield report | {
            "finish_reason": job.finish_reason,
            "seconds": round(time.monotonic() - started, 4),
        }

    async def stream(self, body: GenerateRequest) -> StreamingResponse:
        """/generate with ``"stream": true``: server-sent events ``{"text": piece}``, then
        ``{"done": true, …}`` with ``streamed_report``'s fields (or ``{"done": true, "error":
        …}``). Admission (503) and limits are checked before the stream starts."""
        model = self.served_model()
        body.check_limits(self.settings.limits)
        admission = contextlib.ExitStack()
        deadline = admission.enter_context(self.admitted())
        options = body.generation_options(deadline=deadline)

        async def events() -> AsyncIterator[str]:
            with admission:
                pieces = self.follow(model, body.prompt.encode(), body.max_new_bytes, options)
                async for item in guarded(pieces):
                    yield sse({"text": item} if isinstance(item, str) else {"done": True} | item)

        return event_stream(events(), admission)

    @contextlib.contextmanager
    def admitted(self, requests: int = 1) -> Iterator[float]:
        """Admit ``requests`` generations or refuse them (503: running and queued are full);
        yields their deadline (``time.monotonic()``; ``limits.timeout_s`` from now) and times
        them into the latency histogram."""
        limits = self.settings.limits
        if self.waiting + requests > limits.max_concurrent + limits.max_queued:
            raise HTTPException(503, "the server is busy: retry shortly")
        started = time.monotonic()
        self.waiting += requests
        try:
            yield started + limits.timeout_s
        finally:
            self.waiting -= requests
            self.latency.observe(time.monotonic() - started)

    def save(self, body: SaveRequest) -> dict[str, Any]:
        model = self.served_model()
        target = self.settings.save_dir / body.name
        if target.exists() or target.is_symlink():
            _check_replaceable(target, body.overwrite)
        self.settings.save_dir.mkdir(parents=True, exist_ok=True)
        save_pretrained(model, target, metrics=self.model_metrics)
        return {"saved": body.name, "path": str(target), "bytes": stored_size(target)}

    def served_model(self) -> BitModel:
        """The model, or 503 when none is loaded."""
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


def _wants_text(accept: str) -> bool:
    """A Prometheus scraper's Accept header (text/plain or OpenMetrics), not a browser's."""
    return ("text/plain" in accept or "openmetrics" in accept) and "json" not in accept
