"""What the server accepts, as pydantic models: unknown fields, wrong types and values out of
range are refused (422) before any handler runs. Limits that depend on the server's settings
(prompt size, output bytes) are checked in the handlers."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bitlm.serve import MAX_TELEMETRY_METRICS, valid_metric_name


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(Request):
    prompt: str = ""
    max_new_bytes: int = Field(64, ge=0)
    mode: Literal["causal", "diffusion"] | None = None
    temperature: float = Field(0.8, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**63)
    stop: str | None = Field(None, max_length=256)
    suffix: str = Field("", max_length=4096)
    diffusion_steps: int = Field(16, ge=1, le=1024)


class SaveRequest(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    overwrite: bool = False


class TelemetryReport(Request):
    step: int = Field(ge=0)
    metrics: dict[str, float] = Field(max_length=MAX_TELEMETRY_METRICS)

    @field_validator("metrics")
    @classmethod
    def _names_and_values(cls, metrics: dict[str, float]) -> dict[str, float]:
        for name, value in metrics.items():
            if not valid_metric_name(name):
                raise ValueError(f"metric names are letters, digits, / and _: {name[:40]!r}")
            if not math.isfinite(value):
                raise ValueError(f"metric {name} is not a finite number")
        return metrics
