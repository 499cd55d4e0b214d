"""bitlm-mcp: a model's generate, evaluate and telemetry as Model Context Protocol tools.

Speaks MCP over stdio (the official ``mcp`` SDK's ``MCPServer``), so an agent host starts it as
a subprocess: ``bitlm-mcp ckpt_path=PATH``. Each tool takes text, never a path or code; the
same size and time limits as ``bitlm-serve`` apply (``limits.*``), and generation is
safety-gated unless ``safety.enabled=false``.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from omegaconf import DictConfig

from bitlm.cli.app import hydra_app, optional_dependencies, pick_device
from bitlm.cli.generate import bit_model
from bitlm.cli.serve import server_settings
from bitlm.errors import BitLMError
from bitlm.evaluate import compressor_references
from bitlm.inference import generate_text, text_bpb, text_telemetry
from bitlm.model import BitModel
from bitlm.serve.state import Settings


def build_server(model: BitModel, settings: Settings):
    """The MCP server (``mcp``'s ``MCPServer``) with the three tools bound to ``model``."""
    with optional_dependencies("bitlm-mcp", "serve"):
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    limits = settings.limits
    server = MCPServer(
        "bitlm",
        instructions="A bit-native language model: continue text (generate), score text in "
        "bits per byte (evaluate), and read its K/C/S telemetry on text (telemetry).",
    )

    def tool(function):
        """Register ``function`` as a tool whose ``BitLMError`` reaches the client as the
        tool's error message (any other error is the SDK's generic one)."""

        @functools.wraps(function)
        def answered(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except BitLMError as err:
                raise ToolError(str(err)) from err

        return server.tool()(answered)

    def checked(text: str, what: str) -> bytes:
        data = text.encode()
        if len(data) > limits.max_prompt_bytes:
            raise BitLMError(f"{what} is {len(data)} bytes; at most {limits.max_prompt_bytes}")
        return data

    @tool
    def generate(
        prompt: str, max_new_bytes: int = 64, temperature: float = 0.8, seed: int = 0
    ) -> dict[str, Any]:
        """Continue the prompt by up to max_new_bytes bytes. Returns the text, its byte count,
        parity errors (always 0: every byte is a valid 9-bit frame) and, when the safety gate
        is on, the K/C/S telemetry the sample passed."""
        if not 0 <= max_new_bytes <= limits.max_new_bytes:
            raise BitLMError(f"max_new_bytes must be in [0, {limits.max_new_bytes}]")
        if not 0 <= temperature <= 10:
            raise BitLMError("temperature must be in [0, 10]")
        return generate_text(
            model,
            checked(prompt, "the prompt"),
            max_new_bytes,
            seed=seed,
            temperature=temperature,
            safety=settings.safety,
            deadline=time.monotonic() + limits.timeout_s,
        )

    @tool
    def evaluate(text: str) -> dict[str, Any]:
        """Bits per byte of the text under the model (lower = better predicted), beside what
        standard compressors achieve on it."""
        data = checked(text, "the text")
        if not data:
            raise BitLMError("the text is empty")
        return {
            "bpb": text_bpb(model, data),
            "bytes": len(data),
            "references": compressor_references(data),
        }

    @tool
    def telemetry(text: str) -> dict[str, float]:
        """K (negentropy), C (LZ complexity) and S (symbiosis) of the model's predictions on
        the text, and the text's own K_data, C_data and exact LZ76 complexity C_lz76."""
        data = checked(text, "the text")
        if not data:
            raise BitLMError("the text is empty")
        return text_telemetry(model, data)

    return server


def serve_mcp(cfg: DictConfig) -> None:
    if cfg.ckpt_path is None:
        raise BitLMError("bitlm-mcp needs a model: pass ckpt_path=PATH")
    model = bit_model(cfg.ckpt_path, pick_device(cfg.device))
    build_server(model, server_settings(cfg)).run("stdio")


main = hydra_app("mcp", serve_mcp, json_output=False)

if __name__ == "__main__":
    main()
