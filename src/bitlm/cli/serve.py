"""bitlm-serve: the inference and control server (``bitlm.serve``) under uvicorn."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bitlm.app.hydra import hydra_app, optional_dependencies, pick_device
from bitlm.cli.generate import bit_model
from bitlm.core.errors import BitLMError
from bitlm.io import read_config
from bitlm.serve.state import Limits, Settings

TOKEN_VARIABLE = "BITLM_TOKEN"
ANY_ADDRESS = ("0.0.0.0", "::")  # host= values that listen on every interface


def serve(cfg: DictConfig) -> dict[str, Any]:
    """Load the model, build the app, serve until interrupted; report what was served."""
    with optional_dependencies("bitlm-serve", "serve"):
        import uvicorn
    app = build_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return app.state.server.status(authorized=True)  # the operator's own summary


def build_app(cfg: DictConfig):
    """The app ``bitlm-serve`` runs for ``cfg`` (configs/serve.yaml)."""
    with optional_dependencies("bitlm-serve", "serve"):
        from bitlm.serve.app import create_app
    settings = server_settings(cfg)
    if cfg.ckpt_path is None:
        return create_app(None, settings)
    model = bit_model(cfg.ckpt_path, pick_device(cfg.device))
    source = Path(cfg.ckpt_path)
    metrics = read_config(source).get("metrics", {}) if source.is_dir() else {}
    return create_app(model, settings, str(cfg.ckpt_path), metrics)


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


main = hydra_app("serve", serve)

if __name__ == "__main__":
    main()
