"""What the server (and the ``bitlm-mcp`` tools) accept, as pydantic models: unknown fields,
wrong types, values out of range and text that is not valid Unicode are refused (422) before
any handler runs. Limits that depend on the server's settings (prompt size, output bytes) are
each request's ``check_limits``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions
from bitlm.telemetry.names import MAX_TELEMETRY_METRICS, valid_metric_name

if TYPE_CHECKING:
    from bitlm.serve.settings import Limits


def _encodable(value: Any) -> Any:
    """Refuse a string that has no UTF-8 encoding: JSON can carry a lone surrogate
    (``"\\ud800"``). Run before pydantic's own string checks, whose message for it (on a
    field with a length limit) says nothing a user can act on; other values go on to those."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"the text is not valid Unicode: it cannot be encoded as UTF-8 ({err.reason} "
                f"at position {err.start})"
            ) from None
    return value


Text = Annotated[str, BeforeValidator(_encodable)]
"""A string the model can read: one that has a UTF-8 encoding."""


class OverLimit(BitLMError):
    """A request its schema accepts but this server's ``Limits`` do not; ``status`` is the HTTP
    answer (413: too many bytes sent, 422: too many asked for)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(Request):
    prompt: Text = ""
    max_new_bytes: int = Field(64, ge=0)
    mode: Literal["causal", "diffusion"] | None = None
    temperature: float = Field(0.8, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**63)
    stop: Text | None = Field(None, max_length=256)
    suffix: Text = Field("", max_length=4096)
    diffusion_steps: int = Field(16, ge=1, le=1024)
    stream: bool = False

    def check_limits(self, limits: Limits) -> None:
        """Refuse (``OverLimit``) a prompt and suffix over ``max_prompt_bytes`` or more output
        than ``max_new_bytes``."""
        size = len(self.prompt.encode()) + len(self.suffix.encode())
        _check_size("prompt and suffix are", size, limits)
        if self.max_new_bytes > limits.max_new_bytes:
            raise OverLimit(f"max_new_bytes is at most {limits.max_new_bytes} on this server", 422)

    def generation_options(self, deadline: float) -> GenerationOptions:
        """The ``GenerationOptions`` this request asks for (its text as UTF-8 bytes; an empty
        stop is none), to be done by ``deadline`` (a ``time.monotonic()`` value)."""
        return GenerationOptions(
            seed=self.seed,
            temperature=self.temperature,
            mode=self.mode,
            top_p=self.top_p,
            stop=self.stop.encode() if self.stop else None,
            suffix=self.suffix.encode(),
            diffusion_steps=self.diffusion_steps,
            deadline=deadline,
        )


class CompletionRequest(Request):
    """``POST /v1/completions`` as the OpenAI API defines it, for the fields a bit model can
    honour: ``max_tokens`` counts bytes, ``stop`` is one string (or a list of one), each of the
    ``n`` choices of each prompt uses seed ``seed + index`` (``seed`` None: 0)."""

    model: str
    prompt: Text | list[Text] = Field(min_length=1, max_length=16)
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, lt=2**62)

    @field_validator("stop")
    @classmethod
    def _one_stop(cls, stop: str | list[str] | None) -> str | None:
        if isinstance(stop, list):
            if len(stop) > 1:
                raise ValueError("this server takes one stop string")
            stop = stop[0] if stop else None
        if stop is not None and len(stop.encode()) > 256:
            raise ValueError("the stop string is at most 256 bytes")
        return stop or None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def check_limits(self, limits: Limits) -> None:
        """``GenerateRequest.check_limits`` for every prompt; ``n`` times the prompts may not
        exceed what the server decodes and queues at once."""
        for prompt in self.prompts:
            _check_size("the prompt is", len(prompt.encode()), limits)
        if self.max_tokens > limits.max_new_bytes:
            raise OverLimit(f"max_tokens is at most {limits.max_new_bytes} on this server", 422)
        if self.n * len(self.prompts) > limits.max_concurrent + limits.max_queued:
            raise OverLimit("n × prompts is more than this server decodes and queues", 422)

    def generation_options(self, choice: int, deadline: float) -> GenerationOptions:
        """The options of choice ``choice`` (seed ``seed + choice``), done by ``deadline``."""
        return GenerationOptions(
            seed=(self.seed or 0) + choice,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop.encode() if self.stop else None,
            mode="causal",
            deadline=deadline,
        )


class TextRequest(Request):
    """A text to score (``bitlm-mcp``'s evaluate and telemetry tools)."""

    text: Text = Field(min_length=1)

    def check_limits(self, limits: Limits) -> None:
        """Refuse (``OverLimit``) a text over ``max_prompt_bytes``."""
        _check_size("the text is", len(self.text.encode()), limits)


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


def _check_size(what_is: str, size: int, limits: Limits) -> None:
    if size > limits.max_prompt_bytes:
        raise OverLimit(
            f"{what_is} {size} bytes; this server takes at most {limits.max_prompt_bytes}", 413
        )
