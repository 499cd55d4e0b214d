"""What the server remembers between requests: the telemetry a training run publishes, with
drift warnings (the settings it was started with are ``settings.py``)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from bitlm.generation import DriftWatch
from bitlm.serve.settings import Settings


class TelemetryStore:
    """The last ``history`` published points ``{"step", "time", "metrics"}``, the latest value
    of every metric, and drift warnings (``bitlm.generation.DriftWatch`` over ``drift_metrics``).
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
