"""What the server is started with: the per-request ``Limits`` and the ``Settings`` around
them, and ``server_settings``, which reads both from a ``bitlm-serve`` (or ``bitlm-mcp``)
config and refuses a bad value in one line at startup."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bitlm.core.errors import BitLMError

# the names a browser on this machine sends as Host for a server on loopback
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_VARIABLE = "BITLM_TOKEN"
ANY_ADDRESS = ("0.0.0.0", "::")  # host= values that listen on every interface


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: ``max_prompt_bytes`` (prompt and suffix, UTF-8),
    ``max_new_bytes``, ``timeout_s`` (from arrival, queueing included; the generation stops
    itself), ``max_body_bytes`` (any request body), ``body_timeout_s`` (to receive the whole
    body: a client that stalls mid-body is answered 408 instead of holding the connection),
    ``max_concurrent`` generations decoded at once (the running batch of causal models; others
    join as sequences finish) and ``max_queued`` more waiting before the server answers 503."""

    max_prompt_bytes: int = 4096
    max_new_bytes: int = 1024
    timeout_s: float = 30.0
    max_body_bytes: int = 65536
    body_timeout_s: float = 10.0
    max_concurrent: int = 16
    max_queued: int = 64


@dataclass(frozen=True)
class Settings:
    """Everything ``create_app`` needs besides the model. ``token``: the bearer token mutating
    routes require (None: those routes are refused). ``safety``: ``safe_sample_with_retry``'s
    options, or None to serve ungated samples. ``save_dir``: where ``/save_checkpoint`` writes.
    ``model_name``: the id ``/v1/models`` lists and ``/v1/completions`` answers to.
    ``allowed_hosts``: the Host header values answered (``*.example.com`` patterns, ``*`` any);
    others get 400, so a page elsewhere cannot reach a loopback server by DNS rebinding."""

    token: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    limits: Limits = field(default_factory=Limits)
    safety: dict[str, Any] | None = field(default_factory=dict)
    save_dir: Path = Path("saved_models")
    model_name: str = "bitlm"
    history: int = 2000
    drift_threshold: float = 0.2
    drift_window: int = 10
    drift_metrics: tuple[str, ...] = ("telemetry/K", "telemetry/C", "telemetry/S", "train/loss")


def server_settings(cfg: DictConfig) -> Settings:
    """The ``Settings`` for ``cfg``; ``BitLMError`` (one line at startup) for a bad value."""
    try:
        limits = Limits(**OmegaConf.to_container(cfg.limits))
    except TypeError as err:
        raise BitLMError(f"limits: {err}") from err
    if min(limits.max_prompt_bytes, limits.max_body_bytes, limits.max_concurrent) < 1:
        raise BitLMError("limits.max_prompt_bytes, max_body_bytes, max_concurrent must be >= 1")
    if limits.timeout_s <= 0 or limits.max_new_bytes < 0 or limits.max_queued < 0:
        raise BitLMError("limits.timeout_s must be > 0, max_new_bytes and max_queued >= 0")
    if not limits.body_timeout_s > 0:
        raise BitLMError(
            f"limits.body_timeout_s must be > 0 (seconds), not {limits.body_timeout_s}"
        )
    safety = None
    if cfg.safety.enabled:
        safety = {k: v for k, v in OmegaConf.to_container(cfg.safety).items() if k != "enabled"}
    return Settings(
        token=os.environ.get(TOKEN_VARIABLE) or None,
        allowed_hosts=allowed_hosts(cfg.allowed_hosts, cfg.host),
        limits=limits,
        safety=safety,
        save_dir=Path(cfg.save_dir),
        model_name=cfg.model_name,
        history=cfg.history,
        drift_threshold=cfg.drift_threshold,
        drift_window=cfg.drift_window,
        drift_metrics=tuple(cfg.drift_metrics),
    )


def allowed_hosts(hosts: Any, host: str) -> tuple[str, ...]:
    """``hosts`` (names, ``*.example.com`` patterns or ``*``) and the address the server listens
    on, unless that is every address (then the names a client uses are unknown here)."""
    if not isinstance(hosts, ListConfig) or not all(isinstance(h, str) and h for h in hosts):
        raise BitLMError(
            f"allowed_hosts must be a list of host names, like [example.com] or [*], not {hosts}"
        )
    for pattern in hosts:
        if pattern != "*" and "*" in pattern and not re.fullmatch(r"\*\.[^*]+", pattern):
            raise BitLMError(f"allowed_hosts: {pattern!r}: a wildcard is * or *.example.com")
    listening = [] if host in ANY_ADDRESS else [f"[{host}]" if ":" in host else host]
    return tuple(dict.fromkeys([*hosts, *listening]))
