"""Publish a training run's live telemetry to a ``bitlm-serve`` dashboard."""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from bitlm.core.background import BackgroundTask
from bitlm.core.errors import BitLMError
from bitlm.telemetry.names import MAX_TELEMETRY_METRICS, valid_metric_name


class TelemetryPublisher(L.Callback):
    """Every ``every_n_steps`` steps (and after each validation) rank 0 POSTs the run's latest
    scalar metrics (``trainer.callback_metrics``: losses, bpb, K/C/S telemetry …) as
    ``{"step", "metrics"}`` to ``<url>/telemetry`` with ``Authorization: Bearer $BITLM_TOKEN``.

    The request runs on a background thread (``bitlm.core.background.BackgroundTask``, at most one
    in flight; a report due while one is still out is skipped), so a slow or absent server
    never holds up training; failures are warned about once and counted (``failures``).
    """

    def __init__(
        self, url: str = "http://127.0.0.1:8000", every_n_steps: int = 10, timeout_s: float = 5.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BitLMError(f"telemetry_publisher url must be http(s)://host:port, got {url!r}")
        if every_n_steps < 1:
            raise BitLMError(f"telemetry_publisher every_n_steps must be >= 1, got {every_n_steps}")
        self.endpoint = url.rstrip("/") + "/telemetry"
        self.every_n_steps = every_n_steps
        self.timeout_s = timeout_s
        self.requests = BackgroundTask("telemetry-publisher")
        self.failures = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._publish(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._publish(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._publish(trainer)
        self.requests.wait(self.timeout_s)
        self._count_failures()
        self.requests.close()

    def _publish(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        self._count_failures()
        metrics = publishable(trainer.callback_metrics)
        body = json.dumps({"step": trainer.global_step, "metrics": metrics}).encode()
        self.requests.submit(self._post, body)

    def _post(self, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        token = os.environ.get("BITLM_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.endpoint, body, headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()

    def _count_failures(self) -> None:
        for error in self.requests.take_failures():
            if not self.failures:
                rank_zero_warn(f"could not publish telemetry to {self.endpoint}: {_why(error)}")
            self.failures += 1


def publishable(metrics) -> dict[str, float]:
    """The finite scalars of ``metrics`` with names the server accepts (at most its limit)."""
    values = {}
    for name, value in sorted(metrics.items()):
        number = float(value)
        if math.isfinite(number) and valid_metric_name(name):
            values[name] = number
    return dict(list(values.items())[:MAX_TELEMETRY_METRICS])


def _why(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        detail = error.read().decode(errors="replace")[:200]
        return f"HTTP {error.code} {detail} (is BITLM_TOKEN the server's?)"
    return str(getattr(error, "reason", error))
