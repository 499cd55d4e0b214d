"""What the server remembers between requests: the telemetry a training run publishes, with
drift warnings, and the settings it was started with."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitlm.generation.safety import DriftWatch

# the names a browser on this machine sends as Host for a server on loopback
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: ``max_prompt_bytes`` (prompt and suffix, UTF-8),
    ``max_new_bytes``, ``timeout_s`` (from arrival, queueing included; the generation stops
    itself), ``max_body_bytes`` (any request body), ``body_timeout_s`` (to receive the whole
    body: a client that stalls mid-body is answered 408 instead of holding the connection),
    ``max_concurrent`` generations at once and ``max_queued`` more waiting before the server
    answers 503."""

    max_prompt_bytes: int = 4096
    max_new_bytes: int = 1024
    timeout_s: float = 30.0
    max_body_bytes: int = 65536
    body_timeout_s: float = 10.0
    max_concurrent: int = 2
    max_queued: int = 16


@dataclass(frozen=True)
class Settings:
    """Everything ``create_app`` needs besides the model. ``token``: the bearer token mutating
    routes require (None: those routes are refused). ``safety``: ``safe_sample_with_retry``'s
    options, or None to serve ungated samples. ``save_dir``: where ``/save_checkpoint`` writes.
    ``allowed_hosts``: the Host header values answered (``*.example.com`` patterns, ``*`` any);
    others get 400, so a page elsewhere cannot reach a loopback server by DNS rebinding."""

    token: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    limits: Limits = field(default_factory=Limits)
    safety: dict[str, Any] | None = field(default_factory=dict)
    save_dir: Path = Path("saved_models")
    history: int = 2000
    drift_threshold: float = 0.2
    drift_window: int = 10
    drift_metrics: tuple[str, ...] = ("telemetry/K", "telemetry/C", "telemetry/S", "train/loss")


class TelemetryStore:
    """The last ``history`` published points ``{"step", "time", "metrics"}``, the latest value
    of every metric, and drift warnings (``bitlm.generation.safety.DriftWatch`` over ``drift_metrics``).
    Thread-safe: publishers and readers are different requests."""

    def __init__(self, settings: Settings) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=settings.history)
        self.latest: dict[str, float] = {}
        self.step: int | None = None
        self.warnings: deque[dict[str, Any]] = deque(maxlen=100)
        self.drift = DriftWatch(settings.drift_threshold, settings.drift_window)
        self.drift_metrics = settings.drift_metrics
        self._lock = threading.Lock()

    def add(self, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            self.points.append({"step": step, "time": time.time(), "metrics": dict(metrics)})
            self.latest.update(metrics)
            self.step = step
            for name in self.drift_metrics:
                change = self.drift.update(name, metrics[name]) if name in metrics else None
                if change is not None:
                    self.warnings.append(
                        {
                            "step": step,
                            "metric": name,
                            "change": change,
                            "message": f"{name} moved {change:+.3f} over the last "
                            f"{self.drift.window} reports (threshold {self.drift.threshold})",
                        }
                    )

    def snapshot(self, history: int) -> dict[str, Any]:
        """The latest values, the warnings and the last ``history`` points."""
        with self._lock:
            points = list(self.points)[-history:] if history else []
            return {
                "step": self.step,
                "latest": dict(self.latest),
                "warnings": list(self.warnings),
                "history": points,
            }
