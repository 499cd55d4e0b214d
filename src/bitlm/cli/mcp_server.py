"""bitlm-mcp: a model's generate, evaluate and telemetry as Model Context Protocol tools.

Speaks MCP over stdio (the official ``mcp`` SDK's ``MCPServer``), so an agent host starts it as
a subprocess: ``bitlm-mcp ckpt_path=PATH``. Each tool takes text, never a path or code. Its
arguments are validated by the models ``bitlm-serve`` validates its bodies with
(``bitlm.serve.schemas``: generate takes ``POST /generate``'s fields), so the same bounds hold,
unknown arguments are refused, and each bad one is a tool error naming it and why; the same
size and time limits apply (``limits.*``), and generation is safety-gated unless
``safety.enabled=false``.
"""

from __future__ import annotations

import functools
import time
import typing
from typing import Any

from omegaconf import DictConfig
from pydantic import create_model

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import BitLMError, optional_dependencies
from bitlm.core.runtime import pick_device
from bitlm.evaluation.bpb import compressor_references, text_bpb
from bitlm.generation import generate_text, load_bit_model, text_telemetry
from bitlm.generation.engine import Engine
from bitlm.model import BitModel
from bitlm.serve.schemas import GenerateRequest, TextRequest
from bitlm.serve.settings import Settings, server_settings


def build_server(model: BitModel, settings: Settings):
    """The MCP server (``mcp``'s ``MCPServer``) with the three tools bound to ``model``."""
    with optional_dependencies("bitlm-mcp", "serve"):
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    limits = settings.limits
    engine = Engine(model, limits.max_concurrent)  # concurrent tool calls decode together

    def answered(function):
        """``function(request)``, refusing a request over ``limits``; a ``BitLMError`` reaches
        the client as the tool's error message (any other error is the SDK's generic one)."""

        @functools.wraps(function)
        def tool(request):
            try:
                request.check_limits(limits)
                return function(request)
            except BitLMError as err:
                raise ToolError(str(err)) from err

        return tool

    @answered
    def generate(request: GenerateRequest) -> dict[str, Any]:
        """Continue the prompt by up to max_new_bytes bytes (the options of bitlm-serve's
        POST /generate). Returns the text, its byte count, parity errors (always 0: every byte
        is a valid 9-bit frame) and, when the safety gate is on, the K/C/S telemetry the
        sample passed."""
        if request.stream:
            raise BitLMError("an MCP tool answers once: streaming is bitlm-serve's")
        return generate_text(
            model,
            request.prompt.encode(),
            request.max_new_bytes,
            request.generation_options(deadline=time.monotonic() + limits.timeout_s),
            safety=settings.safety,
            draw=engine.sample,
        )

    @answered
    def evaluate(request: TextRequest) -> dict[str, Any]:
        """Bits per byte of the text under the model (lower = better predicted), beside what
        standard compressors achieve on it."""
        data = request.text.encode()
        return {
            "bpb": text_bpb(model, data),
            "bytes": len(data),
            "references": compressor_references(data),
        }

    @answered
    def telemetry(request: TextRequest) -> dict[str, float]:
        """K (negentropy), C (LZ complexity) and S (symbiosis) of the model's predictions on
        the text, and the text's own K_data, C_data and exact LZ76 complexity C_lz76."""
        return text_telemetry(model, request.text.encode())

    return MCPServer(
        "bitlm",
        instructions="A bit-native language model: continue text (generate), score text in "
        "bits per byte (evaluate), and read its K/C/S telemetry on text (telemetry).",
        tools=[_tool(function) for function in (generate, evaluate, telemetry)],
    )


def _tool(function):
    """The SDK's ``Tool`` for ``function(request)`` whose arguments are the fields of
    ``request``'s model, validated by that model itself: the SDK would build its own argument
    model from the signature, which drops unknown arguments silently; this one is the request
    model (``extra="forbid"``, its bounds and validators) on the SDK's base."""
    from mcp.server.mcpserver.tools import Tool
    from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase

    class Whole(ArgModelBase):
        def model_dump_one_level(self) -> dict[str, Any]:
            return {"request": self}  # the function's keyword arguments: the request, whole

    request_model = typing.get_type_hints(function)["request"]
    arguments = create_model(f"{function.__name__}Arguments", __base__=(request_model, Whole))
    tool = Tool.from_function(function)
    tool.fn_metadata.arg_model = arguments
    tool.parameters = arguments.model_json_schema()
    return tool


def serve_mcp(cfg: DictConfig) -> None:
    if cfg.ckpt_path is None:
        raise BitLMError("bitlm-mcp needs a model: pass ckpt_path=PATH")
    model = load_bit_model(cfg.ckpt_path, pick_device(cfg.device))
    build_server(model, server_settings(cfg)).run("stdio")


main = hydra_app("mcp", serve_mcp, json_output=False)

if __name__ == "__main__":
    main()
