"""bitlm-serve: the inference and control server (``bitlm.serve``) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import optional_dependencies
from bitlm.core.runtime import pick_device
from bitlm.generation import load_bit_model
from bitlm.io import read_config
from bitlm.serve.settings import server_settings


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
    model = load_bit_model(cfg.ckpt_path, pick_device(cfg.device))
    source = Path(cfg.ckpt_path)
    metrics = read_config(source).get("metrics", {}) if source.is_dir() else {}
    return create_app(model, settings, str(cfg.ckpt_path), metrics)


main = hydra_app("serve", serve)

if __name__ == "__main__":
    main()
